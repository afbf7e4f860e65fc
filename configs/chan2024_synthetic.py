"""Chan et al. 2024, stylized ICL/IWL data with the two-layer, one-head, 64-d transformer.

  python main.py --config=configs/chan2024_synthetic.py           # quick scale (default of main.py)
  python main.py --config=configs/chan2024_synthetic.py:full      # the paper's 100K steps, N=2^10
  python main.py --config=configs/chan2024_synthetic.py:tiny      # seconds, for tests and smoke runs
"""
import ml_collections

from configs import common


ARGS = ("tiny", "quick", "full")   # the arguments get_config accepts (configs/X.py:<arg>)

def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  scale = common.pick_scale(arg, ARGS, "quick")
  c = common.base()                     # seed, data, mesh, checkpoint and report blocks

  c.task = ml_collections.ConfigDict()
  c.task.name = "stylized"              # the Chan et al. 2024 distribution (iclscale/tasks/stylized.py)
  c.task.num_high = 5                   # |C_H| common classes
  c.task.num_low = 5                    # |C_L| rare classes
  c.task.p_high = 0.9                   # probability mass of the common classes
  c.task.p_relevant = 0.9               # per-slot relevance probability (0 = IW predictor, 1 = IC predictor)
  c.task.num_relevant = -1              # -1: r ~ Binomial(L, p_relevant); >= 0 fixes r
  c.task.input_noise = 0.2              # σ around the unit-norm prototypes
  c.task.label_noise = 0.0              # ε: a label becomes (y+1) mod K with this probability
  c.task.context_len = 1                # L context pairs
  c.task.dim = 64                       # input dimension d (= model width: frozen identity tokenizer)
  c.task.dataset_size = 2**10           # N distinct training sequences (0 = infinite)

  c.model = ml_collections.ConfigDict()
  c.model.name = "transformer"          # iclscale/models/transformer.py
  c.model.num_layers = 2                # two decoder blocks
  c.model.num_heads = 1                 # one head
  c.model.width = 64                    # d_model
  c.model.mlp_ratio = 4                 # MLP 256, GELU
  c.model.pos_period = 30.0             # sinusoidal positions with period base 30
  c.model.encoder = "identity"          # the input tokenizer is a frozen identity: raw x enters the stream
  c.model.label_embed = "dense_lecun"   # labels: Dense on one-hots, lecun_normal kernel (upstream); truncnorm|normal
  c.model.label_init_std = 0.0          # label kernel std; 0 = 1/sqrt(classes), lecun_normal's
  c.model.label_bias = True             # trainable label bias, as upstream's Dense

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"                 # Adam, optax defaults, no decay, no clipping (as upstream)
  c.optim.lr = 3e-4                     # constant learning rate
  c.optim.schedule = "constant"         # no warmup for the synthetic study

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = {"tiny": 200, "quick": 20_000, "full": 100_000}[scale]   # optimizer steps
  c.train.batch_size = 32               # sequences per step
  c.train.steps_per_dispatch = {"tiny": 10, "quick": 50, "full": 50}[scale]    # K steps per jitted scan
  c.train.log_every = {"tiny": 50, "quick": 1000, "full": 1000}[scale]         # train-metric cadence

  c.mesh.num_devices = 1 if scale != "full" else 0   # a 2-layer model is fastest on one device; 0 = all

  c.checkpoint.every = {"tiny": 100, "quick": 5000, "full": 10_000}[scale]   # interval checkpoints

  c.eval_every = {"tiny": 100, "quick": 2500, "full": 5000}[scale]   # evaluator sweeps (plus every milestone)
  c.evals = ml_collections.ConfigDict()
  c.evals.grid = dict(                  # IBD/OOBD x {default, relevant, irrelevant} x {all, C_H, C_L}
      type="query_classification", sets="grid",
      num_examples={"tiny": 128, "quick": 1000, "full": 1000}[scale],
      batch_size={"tiny": 128, "quick": 1000, "full": 1000}[scale])
  return common.complete(c)
