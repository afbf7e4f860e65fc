"""Russin et al. 2024: metalearned ICL vs finetuned IWL on the grid and category tasks, and curriculum effects.

  python main.py --config=configs/russin2024.py:grid                  # metalearn the grid task (CPU scale)
  python main.py --config=configs/russin2024.py:grid,full             # the paper's scale (accelerator)
  python main.py --config=configs/russin2024.py:category,rotated      # category task, 45°-rotated boundary
  python main.py --config=configs/russin2024.py:grid,finetune --config.model.init_from=runs/russin2024_grid
        # IWL: finetune every held-out episode (a population, one member each) from the metalearned weights
        # ('' = IWL only, from scratch)
  python -m iclscale.studies.russin_study --task grid                # every condition + the results table

The arg is a comma list: the task (grid | category), then any of: a scale (tiny | cpu | full; default cpu),
`rotated`, `finetune`. The few-shot evaluator reports test-item accuracy on held-out episodes under every
curriculum (ICL); in finetune mode the evaluator follows each finetuned episode's study retention and test
accuracy (IWL).
"""
import ml_collections

from configs import common

# Per task and scale: model (layers, heads, width, ffn), metalearning (steps, batch, lr, train episodes, eval
# cadence), finetuning (steps per block, batch per episode, lr), held-out episodes (test) and finetuned ones.
# full = upstream's (jlrussin/icl-iwl-interplay, scripts/); cpu = the largest setting measured to finish in about an hour on a 2-core CPU
# (README); tiny = seconds, for tests.
SCALES = {
    ("grid", "full"): dict(layers=12, heads=8, width=64, ffn=128, steps=585_000, batch=256, lr=1e-3,
                           episodes=12_000, eval_every=1000, block_steps=1000, ft_batch=5, ft_lr=1e-4, test=10),
    ("grid", "cpu"): dict(layers=2, heads=8, width=64, ffn=128, steps=20_000, batch=32, lr=1e-3,
                          episodes=12_000, eval_every=1000, block_steps=250, ft_batch=5, ft_lr=3e-4, test=20,
                          copies=10),
    ("grid", "tiny"): dict(layers=1, heads=2, width=16, ffn=32, steps=20, batch=8, lr=1e-3,
                           episodes=64, eval_every=10, block_steps=5, ft_batch=2, ft_lr=1e-3, test=4),
    ("category", "full"): dict(layers=4, heads=8, width=64, ffn=128, steps=60_000, batch=256, lr=1e-4,
                               episodes=12_000, eval_every=1000, block_steps=1000, ft_batch=32, ft_lr=1e-5,
                               test=10, dims=200),
    ("category", "cpu"): dict(layers=2, heads=8, width=64, ffn=128, steps=3_000, batch=32, lr=1e-3,
                              episodes=12_000, eval_every=1000, block_steps=100, ft_batch=4, ft_lr=3e-4,
                              test=20, copies=10, dims=200),
    ("category", "tiny"): dict(layers=1, heads=2, width=16, ffn=32, steps=20, batch=8, lr=1e-3,
                               episodes=64, eval_every=10, block_steps=5, ft_batch=4, ft_lr=1e-3, test=4, dims=12),
}


# the arguments get_config accepts (configs/russin2024.py:<arg>): every task x scale x mode
ARGS = tuple(f"{t},{s}{m}" for t in ("grid", "category") for s in ("tiny", "cpu", "full")
             for m in ("", ",rotated", ",finetune", ",rotated,finetune"))

def get_config(arg: str = "grid") -> ml_collections.ConfigDict:
  words = [w for w in (arg or "grid").split(",") if w]
  task, rest = words[0], set(words[1:])
  if task not in ("grid", "category"):
    raise ValueError(f"the first word must be grid or category, got {task!r}")
  unknown = rest - {"tiny", "cpu", "full", "rotated", "finetune"}
  if unknown:
    raise ValueError(f"unknown words {sorted(unknown)}: use tiny|cpu|full, rotated, finetune")
  scale = next((w for w in ("tiny", "full") if w in rest), "cpu")
  s = SCALES[(task, scale)]
  finetune = "finetune" in rest

  c = common.base()                     # seed, data, mesh, checkpoint and report blocks

  c.task = ml_collections.ConfigDict()
  c.task.name = f"russin_{task}"        # iclscale/tasks/grid.py | category.py (shared: tasks/episodes.py)
  c.task.rotated = "rotated" in rest    # rule-like (False) or 45°-rotated (True) answers
  c.task.curriculum = "blocked"         # context curriculum of metalearning (upstream's main ICL+IWL models: blocked)
  c.task.num_train_episodes = s["episodes"]   # metalearning episodes (upstream 12,000)
  # held-out episodes: few-shot evaluation; finetune: one population member each (held-out keys are the last of
  # the seed's shuffle, so finetuning fewer episodes finetunes a subset of the evaluated ones)
  c.task.num_test_episodes = s.get("copies", s["test"]) if finetune else s["test"]
  c.task.episode = 0                    # finetune: the held-out episode trained (the population varies it)
  c.task.mode = "finetune" if finetune else "metalearn"
  c.task.finetune_schedule = "blocked"  # finetune: blocked A, B, A, B or interleaved
  c.task.steps_per_block = s["block_steps"]   # finetune: steps per block (upstream 1000)
  if task == "grid":
    c.task.flip_xy = 0.5                # p(colour -> y, animal -> x) per episode
  else:
    c.task.num_dims = s["dims"]         # feature dimensions, 8 values each (upstream 200)

  c.model = ml_collections.ConfigDict()
  c.model.name = "decoder"              # iclscale/models/decoder.py: Llama-style, RMSNorm + RoPE + SwiGLU
  c.model.num_layers = s["layers"]      # upstream: grid 12, category 4
  c.model.num_heads = s["heads"]        # upstream 8
  c.model.width = s["width"]            # upstream 64
  c.model.ffn_dim = s["ffn"]            # upstream 128
  c.model.rope_base = 10_000.0          # Llama's RoPE base
  c.model.init_from = ""                # finetune: the metalearned run's workdir; '' = IWL only (fresh weights)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"                 # upstream Adam, constant learning rate
  c.optim.lr = s["ft_lr"] if finetune else s["lr"]   # upstream grid 1e-3 / 1e-4 (finetune); category 1e-4 / 1e-5
  c.optim.schedule = "constant"
  c.optim.grad_clip = 0.0               # none, as upstream

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 4 * s["block_steps"] if finetune else s["steps"]   # finetune: 4 blocks (A, B, A, B)
  c.train.batch_size = s["ft_batch"] if finetune else s["batch"]   # sequences per step (per finetuned episode)
  c.train.steps_per_dispatch = 5 if finetune or scale == "tiny" else 50   # K steps per jitted scan
  c.train.log_every = s["block_steps"] if finetune else s["eval_every"]   # train-metric cadence
  c.train.eval_at_start = finetune      # finetune: step 0 = few-shot accuracy before any IWL (the ICL measure)

  c.mesh.num_devices = 1 if finetune else 0   # finetuned models are tiny and their batch rows few: one device

  c.checkpoint.every = 0 if finetune else 5 * s["eval_every"]   # finetune runs are short: the last step suffices
  c.checkpoint.keep = 2                 # latest checkpoints kept (plus milestones)
  c.checkpoint.per_decade = 0 if finetune else 1   # log-spaced milestone checkpoints per decade

  # finetune: evaluate at every block boundary (and every 20 steps at full scale, as upstream)
  c.eval_every = (20 if scale == "full" else max(5, s["block_steps"] // 5)) if finetune else s["eval_every"]
  c.evals = ml_collections.ConfigDict()
  c.evals.heldout = dict(type="episode_accuracy", sets="episodes" if finetune else "fewshot",
                         batch_size=250)   # held-out episodes: test-item (ICL) and study-item accuracy
  c.report_every_secs = 60.0            # steps/s and ETA
  if finetune:  # every held-out episode finetuned side by side, one population member each (iclscale/population.py)
    c.population = dict(product=dict(task=dict(episode=tuple(range(c.task.num_test_episodes)))), zip={})
  return common.complete(c)
