"""Singh et al. 2023 §4.3: bursty sequences over token-embedding classes with the 12-layer model.

The icl-dynamics LLaMa runs (aadityasingh/icl-dynamics, llama_sweep_example.py): 1600 classes x 10 exemplars (k-means clusters of an
embedding table; here Gemma 3 270M's, see iclscale/datasets/token_embeddings.py), every sequence bursty (3 + 3 of two
classes + 2 iid), a linear input projection 640 -> 64 with bias, Adam at a constant 3e-4, batch 32, 2e6 steps.
ICL = 2-way 4-shot on holdout classes relabeled 0/1; IWL = no support.

  python -m iclscale.datasets.token_embeddings --classes 1600 --exemplars 10    # once: builds the cached table
  python main.py --config=configs/singh2023_tokens.py:full      # 2e6 steps (accelerator)
  python main.py --config=configs/singh2023_tokens.py:local     # 2e4 steps on CPU
  python main.py --config=configs/singh2023_tokens.py:tiny      # seconds (synthetic 640-d table, for tests)
"""
import ml_collections

from configs import common
from configs import stylized_12layer


ARGS = ("tiny", "local", "full")   # the arguments get_config accepts (configs/X.py:<arg>)

def get_config(arg: str = "full") -> ml_collections.ConfigDict:
  scale = common.pick_scale(arg, ARGS, "full")
  pick = lambda **v: v[scale]  # noqa: E731  one value per scale
  c = common.base()                     # seed, data, mesh, checkpoint and report blocks

  c.task = ml_collections.ConfigDict()
  c.task.name = "bursty"                # iclscale/tasks/bursty.py
  c.task.dataset = "synthetic" if scale == "tiny" else "token_embeddings"   # tiny: no cached table needed
  c.task.token_classes = 1600           # k-means classes (upstream variant 1600 x 10)
  c.task.token_exemplars = 10           # member tokens per class
  c.task.synthetic_classes = 64         # tiny only: a random table stands in
  c.task.synthetic_dim = 640            # tiny only: Gemma's width, so the encoder is the same shape
  c.task.noise = 0.0                    # none in the released sweep
  c.task.num_holdout = 10               # holdout classes for the ICL evaluation
  c.task.num_common = 0                 # no common/rare split (uniform weights)
  c.task.zipf_exponent = 0.0            # uniform (icl-dynamics default zipf_alpha 0)
  c.task.p_bursty = 1.0                 # every sequence bursty (mixing_coeffs 1.0)
  c.task.bursty_shots = 3               # pt_burstiness 3
  c.task.ways = 2                       # the query class + one distractor class
  c.task.fewshot_shots = 4              # fsl_train-style 2-way 4-shot evaluation
  c.task.context_len = 8                # train_context_len 8
  c.task.exemplars = "all"              # every exemplar in training (exemplar_split 20 0 0 upstream)

  c.model = stylized_12layer.model_config()   # 12 layers, 8 heads, d 64, GELU MLP 256, sinusoidal period 30
  c.model.encoder = "linear"            # 640 -> 64 projection with bias
  if scale == "tiny":
    c.model.num_layers = 2              # tests: 2 layers suffice
    c.model.num_heads = 2

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"                 # Adam
  c.optim.lr = 3e-4                     # constant
  c.optim.schedule = "constant"         # no warmup (icl-dynamics)
  c.optim.l2 = 0.0                      # the L2 sweep sets this
  c.optim.l2_form = "norm"              # icl-dynamics' per-tensor non-squared norm

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = pick(tiny=20, local=20_000, full=2_000_000)   # optimizer steps (train_iters / 32)
  c.train.batch_size = 32               # all icl-dynamics experiments
  c.train.steps_per_dispatch = pick(tiny=10, local=100, full=100)   # K steps per jitted scan
  c.train.log_every = pick(tiny=10, local=1000, full=3100)          # train-metric cadence

  c.mesh.num_devices = 1 if scale != "full" else 0   # 0 = all devices

  c.checkpoint.every = pick(tiny=10, local=5000, full=100_000)      # interval checkpoints
  c.checkpoint.keep = 2                 # interval checkpoints kept (milestones are always kept)

  c.eval_every = pick(tiny=10, local=1000, full=3100)   # upstream: every 1e5 sequences = 3.1K steps
  c.evals = ml_collections.ConfigDict()
  c.evals.icl_iwl = dict(               # few-shot holdout (ICL), no support (IWL), CIWL, flip, training-like
      type="icl_iwl", sets="icl_iwl",
      num_examples=pick(tiny=16, local=1024, full=1024),   # upstream eval_iters 1000, rounded to divide by 8 devices
      batch_size=pick(tiny=16, local=512, full=512))
  c.report_every_secs = 60.0            # steps/s and ETA (CLU ReportProgress)
  return common.complete(c)
