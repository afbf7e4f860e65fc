"""Singh et al. 2023 (transient ICL): bursty Omniglot sequences, a jointly trained ResNet, the 12-layer model.

Chan et al. 2022's generator and DeepMind defaults (google-deepmind/emergent_in_context_learning, datasets/data_generators.py): 1623 classes (1603 rare, 10 common,
10 holdout by the fixed permutation), all 20 exemplars, p_bursty 0.9, 3 shots x 2 ways, 8 context pairs; ICL =
few-shot holdout (2-way 4-shot, relabeled 0/1), IWL = no support. Adam with DeepMind's linear warmup + 1/sqrt decay.

  python main.py --config=configs/singh2023_omniglot.py:full     # 5e7 steps at 105 px (accelerator; ~weeks on one GPU)
  python main.py --config=configs/singh2023_omniglot.py:small    # 2e5 steps at 28 px (one accelerator, hours)
  python main.py --config=configs/singh2023_omniglot.py:local    # 2K steps at 28 px, 2-layer: a CPU smoke run
  python main.py --config=configs/singh2023_omniglot.py:tiny     # seconds, for tests
"""
import ml_collections

from configs import common
from configs import stylized_12layer


ARGS = ("tiny", "local", "small", "full")   # the arguments get_config accepts (configs/X.py:<arg>)

def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  scale = common.pick_scale(arg, ARGS, "small")
  pick = lambda **v: v[scale]  # noqa: E731  one value per scale
  c = common.base()                     # seed, data, mesh, checkpoint and report blocks

  c.task = ml_collections.ConfigDict()
  c.task.name = "bursty"                # iclscale/tasks/bursty.py
  c.task.dataset = "omniglot"           # data/omniglot: 1623 characters x 20 drawers, uint8 on the device
  c.task.image_size = pick(tiny=28, local=28, small=28, full=105)   # 105 native; 28 bilinear (16x cheaper)
  c.task.augment = False                # x8 flip/rotation classes (images_augmented.py) when True
  c.task.noise = 0.0                    # DeepMind noise_scale = 0
  c.task.num_holdout = 10               # n_holdout (last of the rng-1337 permutation)
  c.task.num_common = 10                # n_common; the remaining 1603 are rare
  c.task.zipf_exponent = 0.0            # uniform class weights (DeepMind default)
  c.task.p_bursty = 0.9                 # DeepMind default; icl-dynamics uses 1.0
  c.task.bursty_shots = 3               # 3 exemplars of each burst class
  c.task.ways = 2                       # 2 burst classes
  c.task.fewshot_shots = 4              # 2-way 4-shot ICL evaluation
  c.task.context_len = 8                # 8 pairs + query = 17 tokens
  c.task.exemplars = "all"              # images_all_exemplars.py

  c.model = stylized_12layer.model_config()   # 12 layers, 8 heads, d 64, GELU MLP 256, sinusoidal period 30
  c.model.encoder = "resnet"            # DeepMind's bottleneck ResNet-V1 (16, 32, 32, 64), trained jointly
  c.model.encoder_kwargs = dict(norm="none")  # stateless: no BatchNorm statistics to thread through the scan
  if scale in ("tiny", "local"):
    c.model.num_layers = 2              # the DeepMind debug size: 2 layers
    c.model.num_heads = 2               # and 2 heads

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"                 # Adam, no weight decay (DeepMind)
  c.optim.lr = 3e-4                     # max_lr
  c.optim.schedule = "warmup_rsqrt"     # lr * min(t/4000, sqrt(4000/t))
  c.optim.warmup_steps = 4000           # DeepMind warmup
  c.optim.l2 = 0.0                      # the L2 sweep sets this (l2_form='norm' is the icl-dynamics penalty)
  c.optim.l2_form = "norm"              # per-tensor non-squared norm, as upstream's only L2

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = pick(tiny=20, local=2000, small=200_000, full=50_000_000)   # optimizer steps
  c.train.batch_size = 32               # 4 x 8 upstream
  c.train.steps_per_dispatch = pick(tiny=10, local=50, small=100, full=100)       # K steps per jitted scan
  c.train.log_every = pick(tiny=10, local=500, small=1000, full=10_000)           # train-metric cadence

  c.mesh.num_devices = 1 if scale in ("tiny", "local") else 0   # 0 = all devices

  c.checkpoint.every = pick(tiny=10, local=1000, small=20_000, full=500_000)      # interval checkpoints
  c.checkpoint.keep = 2                 # interval checkpoints kept (milestones are always kept)

  c.eval_every = pick(tiny=10, local=500, small=5000, full=250_000)   # ICL/IWL sweeps (plus every milestone)
  c.evals = ml_collections.ConfigDict()
  c.evals.icl_iwl = dict(               # few-shot holdout (ICL), no support (IWL), CIWL, flip, training-like
      type="icl_iwl", sets="icl_iwl",
      num_examples=pick(tiny=16, local=256, small=1024, full=2048),
      batch_size=pick(tiny=16, local=128, small=256, full=256))   # images: memory bound per forward pass
  c.report_every_secs = 60.0            # steps/s and ETA (CLU ReportProgress)
  return common.complete(c)
