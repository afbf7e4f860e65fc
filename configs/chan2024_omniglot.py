"""Chan et al. 2024's Omniglot variant: the stylized distribution with one fixed Omniglot image per class.

|C_H| = 20 common and |C_L| = 1603 rare characters, one image per class plus pixel noise σ, L = 2, the 2-layer
transformer with a jointly trained ResNet tokenizer, warmup + inverse-sqrt learning rate (upstream chanb/simple_icl, cc_utils/templates/omniglot-*.json).

  python main.py --config=configs/chan2024_omniglot.py            # N = 1e4, 100K steps (accelerator scale)
  python main.py --config=configs/chan2024_omniglot.py:tiny       # seconds, for smoke tests
"""
import ml_collections

from configs import chan2024_synthetic
from configs import common


ARGS = ("tiny", "full")   # the arguments get_config accepts (configs/X.py:<arg>)

def get_config(arg: str = "full") -> ml_collections.ConfigDict:
  scale = common.pick_scale(arg, ARGS, "full")
  tiny = scale == "tiny"
  c = chan2024_synthetic.get_config("tiny" if tiny else "full")
  c.task = ml_collections.ConfigDict()
  c.task.name = "stylized_omniglot"     # iclscale/tasks/stylized_omniglot.py
  c.task.num_high = 20                  # |C_H| common characters
  c.task.num_low = 1603                 # |C_L| rare characters: the rest of Omniglot
  c.task.p_high = 0.9                   # mass of the common characters
  c.task.p_relevant = 0.9               # per-slot relevance (0 = IW predictor, 1 = IC predictor)
  c.task.num_relevant = -1              # r ~ Binomial(L, p_relevant)
  c.task.input_noise = 0.1              # σ of the pixel noise (upstream sweeps 0, 0.1, 1)
  c.task.label_noise = 0.0              # ε
  c.task.context_len = 2                # L = 2
  c.task.dataset_size = 10_000          # N (upstream 1e4, 1e5, 1e6)
  c.task.image_size = 28 if tiny else 105   # 105 px as upstream; 28 px (bilinear) for quick runs
  c.task.exemplar = 0                   # the drawer whose image stands for its class
  c.model.encoder = "resnet"            # DeepMind-style ResNet (2,2,2,2 blocks, 16/32/32/64 channels), no norm
  c.model.encoder_kwargs = {}           # defaults of iclscale/models/encoders.py
  c.optim.schedule = "warmup_rsqrt"     # linear warmup to 3e-4, then ∝ step^-1/2
  c.optim.warmup_steps = 4000           # warmup length (DeepMind schedule)
  c.train.steps_per_dispatch = 10       # K steps per scan (a ResNet step is slow; keep dispatches short)
  c.train.num_steps = 100 if tiny else 100_000   # upstream 100K
  c.train.log_every = 50 if tiny else 1000       # train-metric cadence
  c.checkpoint.every = 100 if tiny else 2500     # upstream saved every 2500 steps
  c.eval_every = 100 if tiny else 5000           # IBD/OOBD grid sweeps (plus milestones)
  c.evals.grid = dict(type="query_classification", sets="grid",
                      num_examples=64 if tiny else 1000, batch_size=64 if tiny else 200)
  return common.complete(c)
