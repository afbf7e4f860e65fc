"""The 12-layer, 8-head, 64-d transformer (Singh et al. 2023's size) on the stylized data with L = 8.

Seventeen tokens per sequence as in the bursty Omniglot setting, so its cost per step is that of the transience
study's model (~2 GFLOP/step at batch 32). Later studies reuse `model_config()`.

  python main.py --config=configs/stylized_12layer.py            # quick: 5K steps on CPU
  python main.py --config=configs/stylized_12layer.py:tiny
"""
import ml_collections

from configs import chan2024_synthetic
from configs import common


def model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "transformer"      # iclscale/models/transformer.py
  m.num_layers = 12           # Singh et al. 2023: 12 layers
  m.num_heads = 8             # 8 heads of 8 dims
  m.width = 64                # d_model 64
  m.mlp_ratio = 4             # GELU MLP 256
  m.pos_period = 30.0         # sinusoidal positions, period base 30 (DeepMind's max_time)
  m.encoder = "identity"      # items enter the stream as they are (the stylized inputs are 64-d)
  return m


ARGS = ("tiny", "quick")   # the arguments get_config accepts (configs/X.py:<arg>)

def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
  scale = common.pick_scale(arg, ARGS, "quick")
  c = chan2024_synthetic.get_config("tiny" if scale == "tiny" else "quick")
  c.model = model_config()
  c.task.context_len = 8                  # 8 context pairs + query = 17 tokens
  c.task.dataset_size = 0                 # infinite data: every step reads fresh sequences
  c.train.num_steps = {"tiny": 50, "quick": 5000}[scale]          # optimizer steps
  c.train.steps_per_dispatch = {"tiny": 10, "quick": 50}[scale]   # K steps per jitted scan
  c.train.log_every = {"tiny": 50, "quick": 500}[scale]           # train-metric cadence
  c.checkpoint.every = {"tiny": 50, "quick": 1000}[scale]         # interval checkpoints
  c.eval_every = {"tiny": 50, "quick": 1000}[scale]               # evaluator sweeps
  return common.complete(c)
