"""Model registry: config name -> Model(module, init(key, batch) -> params, apply(params, batch) -> outputs)."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from iclscale import config as config_lib
from iclscale.models import precision
from iclscale.models import transformer

TRANSFORMER_DEFAULTS = dict(
    name="transformer",
    num_layers=2,        # decoder blocks
    num_heads=1,         # attention heads per block
    width=64,            # residual stream width d_model
    mlp_ratio=4,         # MLP hidden = mlp_ratio * width; 0 = attention-only
    pos_period=30.0,     # base of the sinusoidal positions (30 as upstream, not 1e4)
    encoder="identity",  # item encoder: identity (frozen, inputs must be `width`-d), linear, resnet
    encoder_kwargs={},   # extra arguments of the encoder (e.g. ResNet norm)
    label_init_std=0.0,  # label-embedding init std; 0 = 1/sqrt(classes) (Chan 2024's Dense on one-hots); DeepMind 0.02
)


class Model(NamedTuple):
  module: Any
  init: Callable    # (key, batch) -> params
  apply: Callable   # (params, batch) -> outputs the task's loss reads (query logits for ICL tasks)
  loss: Callable | None = None  # (outputs, batch) -> (loss, metrics); None = the task's loss or query CE
  load: Callable | None = None  # () -> params (host arrays) of a pretrained model; None = jit-initialize with init
  param_specs: Callable | None = None  # (abstract params, mesh) -> PartitionSpec tree; None = the fsdp rule


def validate_transformer(cfg, input_shape: tuple[int, ...]) -> None:
  for f in ("num_layers", "num_heads", "width"):
    config_lib.check_positive(cfg, f, "model")
  config_lib.check_positive(cfg, "mlp_ratio", "model", allow_zero=True)
  config_lib.check(cfg.width % cfg.num_heads == 0, "model.num_heads",
                   f"width {cfg.width} is not divisible by num_heads {cfg.num_heads}")
  config_lib.check(cfg.width % 2 == 0, "model.width", "must be even for sinusoidal positions")
  if cfg.encoder == "identity":
    config_lib.check(tuple(input_shape) == (cfg.width,), "model.encoder",
                     f"identity encoder needs inputs of width {cfg.width}, the task gives {tuple(input_shape)}")


def build_transformer(cfg, task):
  encoder = None
  if cfg.encoder != "identity":
    from iclscale.models import encoders  # pylint: disable=g-import-not-at-top
    encoder = encoders.build_encoder(cfg.encoder, cfg.width, dtype=jnp.dtype(cfg.dtype), **dict(cfg.encoder_kwargs))
  module = transformer.ICLTransformer(task.num_classes, cfg.width, cfg.num_layers, cfg.num_heads, cfg.mlp_ratio,
                                      cfg.pos_period, encoder, cfg.label_init_std)
  return Model(module, lambda key, batch: module.init(key, batch["x"], batch["ctx_labels"])["params"],
               transformer.apply_fn(module))


# name -> (defaults, validate(cfg, input_shape), build(cfg, task) -> Model)
REGISTRY: dict[str, tuple[dict, Callable, Callable]] = {
    "transformer": (TRANSFORMER_DEFAULTS, validate_transformer, build_transformer),
}

# The stylized gated model f = α·g + (1−α)·h of Chan et al. 2024 (also registers the 'gated_heads' evaluator).
from iclscale.models import gated  # pylint: disable=g-import-not-at-top,wrong-import-position  # noqa: E402
REGISTRY["gated"] = (gated.DEFAULTS, gated.validate, gated.build)

# A Llama-style token decoder trained from scratch (Russin et al. 2024's metalearning model).
from iclscale.models import decoder  # pylint: disable=g-import-not-at-top,wrong-import-position  # noqa: E402
REGISTRY["decoder"] = (decoder.DEFAULTS, decoder.validate, decoder.build)

# Gemma 3 as a causal LM scored on answer tokens (pretrained weights loaded, not initialized).
from iclscale.models import gemma3_lm  # pylint: disable=g-import-not-at-top,wrong-import-position  # noqa: E402
REGISTRY["gemma3"] = (gemma3_lm.DEFAULTS, gemma3_lm.validate, gemma3_lm.build)


def resolve(cfg: ml_collections.ConfigDict, input_shape: tuple[int, ...]) -> ml_collections.FrozenConfigDict:
  config_lib.check("name" in cfg and cfg.name in REGISTRY, "model.name",
                   f"unknown model {cfg.get('name')!r} (known: {', '.join(sorted(REGISTRY))})")
  defaults, validate, _ = REGISTRY[cfg.name]
  full = config_lib.with_defaults(cfg, dict(defaults, **precision.DEFAULTS), "model")  # every model has a dtype
  config_lib.check_one_of(full, "dtype", "model", precision.DTYPES)
  validate(full, input_shape)
  return full


def with_copies(model: Model, n: int) -> Model:
  """n independent copies of a model trained side by side: parameters stacked on a leading axis, init, apply and
  loss vmapped over it (a batch is [n, ...]). The loss is the sum of the copies' own mean losses, so each copy's
  gradient is its own; with an elementwise optimizer (Adam; no global-norm clipping, which train.resolve
  refuses) each copy follows exactly the trajectory it would follow alone."""
  if model.loss is None:
    raise ValueError("model copies need a model with its own loss")

  def loss(outputs, batch):
    loss_n, metrics_n = jax.vmap(model.loss)(outputs, batch)
    return loss_n.sum(), jax.tree.map(jnp.mean, metrics_n)

  def load():  # every copy starts from the same pretrained parameters
    return jax.tree.map(lambda x: np.broadcast_to(x, (n,) + x.shape).copy(), model.load())

  return Model(model.module, lambda key, batch: jax.vmap(model.init)(jax.random.split(key, n), batch),
               jax.vmap(model.apply), loss, load if model.load else None)


def build(cfg: ml_collections.FrozenConfigDict, task: Any) -> Model:
  """Builds a model from a resolved config: n vmapped copies if the task trains n (task.num_copies)."""
  model = REGISTRY[cfg.name][2](cfg, task)
  own = "dtype" in REGISTRY[cfg.name][0]  # models declaring their own dtype (gemma3) cast inside their layers
  model = model._replace(apply=precision.mixed(model.apply, cfg.dtype, cast_inputs=not own))  # f32 by default
  n = getattr(task, "num_copies", 1)
  return with_copies(model, n) if n > 1 else model
