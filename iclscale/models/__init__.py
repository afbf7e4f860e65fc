"""Model registry: config name -> contracts.ModelSpec (the Model contract is written in iclscale/contracts.py)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from iclscale import config as config_lib
from iclscale import contracts
from iclscale.models import decoder
from iclscale.models import gated
from iclscale.models import gemma3_lm
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
    # Context labels: a Dense layer on one-hot labels as in Chan et al. 2024's code (chanb/simple_icl, iclr_2025,
    # src/models.py output_tokenizer), i.e. kernel lecun_normal (real std 1/sqrt(classes)) plus a trainable bias.
    label_embed="dense_lecun",  # kernel init: dense_lecun (upstream) | truncnorm (flax truncated_normal) | normal
    label_init_std=0.0,  # kernel std (truncnorm: before truncation, real std ~0.88x); 0 = 1/sqrt(classes)
    label_bias=True,     # trainable bias on the label embedding, zeros at init (upstream's Dense has one)
)


def validate_transformer(cfg, input_shape: tuple[int, ...]) -> None:
  for f in ("num_layers", "num_heads", "width"):
    config_lib.check_positive(cfg, f, "model")
  config_lib.check_positive(cfg, "mlp_ratio", "model", allow_zero=True)
  config_lib.check(cfg.width % cfg.num_heads == 0, "model.num_heads",
                   f"width {cfg.width} is not divisible by num_heads {cfg.num_heads}")
  config_lib.check(cfg.width % 2 == 0, "model.width", "must be even for sinusoidal positions")
  config_lib.check_one_of(cfg, "label_embed", "model", tuple(transformer.LABEL_INITS))
  config_lib.check_positive(cfg, "label_init_std", "model", allow_zero=True)
  config_lib.check(isinstance(cfg.label_bias, bool), "model.label_bias", f"must be true or false, got {cfg.label_bias!r}")
  if cfg.encoder == "identity":
    config_lib.check(tuple(input_shape) == (cfg.width,), "model.encoder",
                     f"identity encoder needs inputs of width {cfg.width}, the task gives {tuple(input_shape)}")


def build_transformer(cfg, task):
  encoder = None
  if cfg.encoder != "identity":
    from iclscale.models import encoders  # pylint: disable=g-import-not-at-top
    encoder = encoders.build_encoder(cfg.encoder, cfg.width, **dict(cfg.encoder_kwargs))
  module = transformer.ICLTransformer(task.num_classes, cfg.width, cfg.num_layers, cfg.num_heads, cfg.mlp_ratio,
                                      cfg.pos_period, encoder, cfg.label_embed, cfg.label_init_std,
                                      cfg.label_bias)
  return contracts.Model(module, lambda key, batch: module.init(key, batch["x"], batch["ctx_labels"])["params"],
                         transformer.apply_fn(module))


REGISTRY: dict[str, contracts.ModelSpec] = {
    "transformer": contracts.ModelSpec(TRANSFORMER_DEFAULTS, validate_transformer, build_transformer),
    # The stylized gated model f = α·g + (1−α)·h of Chan et al. 2024, trained by their Algorithm 1.
    "gated": contracts.ModelSpec(gated.DEFAULTS, gated.validate, gated.build),
    # A Llama-style token decoder trained from scratch (Russin et al. 2024's metalearning model).
    "decoder": contracts.ModelSpec(decoder.DEFAULTS, decoder.validate, decoder.build),
    # Gemma 3 as a causal LM scored on answer tokens (pretrained weights loaded, not initialized).
    "gemma3": contracts.ModelSpec(gemma3_lm.DEFAULTS, gemma3_lm.validate, gemma3_lm.build),
}


def resolve(cfg: ml_collections.ConfigDict, input_shape: tuple[int, ...]) -> ml_collections.FrozenConfigDict:
  config_lib.check("name" in cfg and cfg.name in REGISTRY, "model.name",
                   f"unknown model {cfg.get('name')!r} (known: {', '.join(sorted(REGISTRY))})")
  spec = REGISTRY[cfg.name]
  full = config_lib.with_defaults(cfg, spec.defaults, "model")
  spec.validate(full, input_shape)
  return full


def with_copies(model: contracts.Model, n: int) -> contracts.Model:
  """n independent copies of a model trained side by side: parameters stacked on a leading axis, init, apply and
  loss vmapped over it (a batch is [n, ...]). The loss is the sum of the copies' own mean losses, so each copy's
  gradient is its own; with an elementwise optimizer (Adam; no global-norm clipping, which train.resolve
  refuses) each copy follows exactly the trajectory it would follow alone. `load` / `init_from` keep describing
  one copy: the loop starts every copy from them."""

  def loss(outputs, batch):
    loss_n, metrics_n = jax.vmap(model.loss)(outputs, batch)
    return loss_n.sum(), jax.tree.map(jnp.mean, metrics_n)

  return dataclasses.replace(model, init=lambda key, batch: jax.vmap(model.init)(jax.random.split(key, n), batch),
                             apply=jax.vmap(model.apply), loss=loss, copies=n)


def build(cfg: ml_collections.FrozenConfigDict, task: contracts.Task, copies: int = 1) -> contracts.Model:
  """Builds a model from a resolved config: `copies` vmapped copies when the task trains several
  (tasks.num_copies of its config)."""
  model = REGISTRY[cfg.name].build(cfg, task)
  return with_copies(model, copies) if copies > 1 else model
