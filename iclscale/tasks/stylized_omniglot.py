"""Chan et al. 2024's stylized distribution over Omniglot (upstream chanb/simple_icl, src/datasets/omniglot.py): images instead of prototypes.

Class k (of |C_H| + |C_L| <= 1623) is Omniglot character k in the table's order (global id k + 1; Chan et al. used
torchvision's folder order, so their class k is usually another character) and its input is one fixed drawing
(exemplar `exemplar`, upstream exemplar='single') scaled to [0, 1] plus Gaussian pixel noise σ = input_noise. Every
sequence rule, the IBD/OOBD x relevance x class-group grid and the streams are tasks/stylized.py's: its sampler adds
σ-noise to a per-class vector, which here is the flattened image, so this module only swaps the item table.
"""
from __future__ import annotations

import jax
import numpy as np

from iclscale import config as config_lib
from iclscale.tasks import stylized

DEFAULTS = dict(
    stylized.DEFAULTS,
    name="stylized_omniglot",
    num_high=20,          # |C_H|: common characters, ids 0..19
    num_low=1603,         # |C_L|: rare characters, the rest of Omniglot
    p_relevant=0.9,       # per-slot probability that a context slot holds the query class
    input_noise=0.1,      # σ of the Gaussian pixel noise (upstream default 0.1; swept over 0, 0.1, 1)
    context_len=2,        # L = 2 (also 4 upstream)
    dataset_size=10_000,  # N distinct training sequences (upstream 1e4, 1e5, 1e6); 0 = infinite
    image_size=28,        # 28 (bilinear) or 105 px (native)
    exemplar=0,           # which drawer's image is the class's fixed input
)
del DEFAULTS["dim"]  # the item is an image: its size is image_size


def validate(cfg) -> None:
  config_lib.check_one_of(cfg, "image_size", "task", (28, 105))
  config_lib.check(0 <= cfg.exemplar < 20, "task.exemplar", f"must be a drawer index 0..19, got {cfg.exemplar}")
  config_lib.check(cfg.num_high + cfg.num_low <= 1623, "task.num_low",
                   f"|C_H| + |C_L| = {cfg.num_high + cfg.num_low} exceeds Omniglot's 1623 characters")
  stylized.validate(_with_dim(cfg))


def _with_dim(cfg):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(cfg, dim=cfg.image_size**2))


def input_shape(cfg) -> tuple[int, ...]:
  return (cfg.image_size, cfg.image_size)


class StylizedOmniglotTask(stylized.StylizedTask):
  """stylized.StylizedTask with flattened Omniglot images as the class vectors; items reshaped to [H, W]."""

  def __init__(self, cfg, seed: int, images: np.ndarray | None = None):
    super().__init__(_with_dim(cfg), seed)
    if images is None:
      from iclscale.datasets import omniglot  # pylint: disable=g-import-not-at-top
      images = omniglot.load_omniglot(image_size=cfg.image_size, dtype="uint8").images
    chosen_KxHxW = images[:self.num_classes, cfg.exemplar]
    self.image_shape = chosen_KxHxW.shape[1:]
    # float [K, H*W] in [0, 1] (71 MB at 105 px): the stylized sampler adds σ-noise to these rows.
    self.arrays["prototypes"] = chosen_KxHxW.reshape(self.num_classes, -1).astype(np.float32) / 255.0

  def _as_images(self, batch: dict) -> dict:
    return dict(batch, x=batch["x"].reshape(batch["x"].shape[:-1] + self.image_shape))

  def batch(self, arrays: dict, indices_B: jax.Array, step: jax.Array) -> dict:
    return self._as_images(super().batch(arrays, indices_B, step))

  def eval_sets(self, kind: str, num_examples: int) -> dict:
    return {n: self._as_images(s) for n, s in super().eval_sets(kind, num_examples).items()}
