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
    encoder = encoders.build_encoder(cfg.encoder, cfg.width, dtype=jnp.dtype(cfg.dtype), **dict(cfg.encoder_kwargs))
  module = transformer.ICLTransformer(task.num_classes, cfg.width, cfg.num_layers, cfg.num_heads, cfg.mlp_ratio,
                                      cfg.pos_period, encoder, cfg.label_embed, cfg.label_init_std,
                                      cfg.label_bias)
  return contracts.Model(module, lambda key, batch: module.init(key, batch["x"], batch["ctx_labels"])["params"],
                         transformer.apply_fn(module))


REGISTRY: dict[str, contracts.ModelSpec] = {
    # Every model has model.dtype (models/precision.py); gemma3 declares it itself and casts inside its layers.
    "transformer": contracts.ModelSpec(dict(TRANSFORMER_DEFAULTS, **precision.DEFAULTS), validate_transformer,
                                       build_transformer),
    # The stylized gated model f = α·g + (1−α)·h of Chan et al. 2024, trained by their Algorithm 1.
    "gated": contracts.ModelSpec(dict(gated.DEFAULTS, **precision.DEFAULTS), gated.validate, gated.build,
                                 reads_task_seed=True),
    # A Llama-style token decoder trained from scratch (Russin et al. 2024's metalearning model).
    "decoder": contracts.ModelSpec(dict(decoder.DEFAULTS, **precision.DEFAULTS), decoder.validate, decoder.build),
    # Gemma 3 as a causal LM scored on answer tokens (pretrained weights loaded, not initialized).
    "gemma3": contracts.ModelSpec(gemma3_lm.DEFAULTS, gemma3_lm.validate, gemma3_lm.build),
}


SELF_CAST = ("gemma3",)  # models whose layers cast their float32 weights to model.dtype themselves


def reads_task_seed(name: str) -> bool:
  """Whether model `name` holds values of the task's seed once built (contracts.ModelSpec.reads_task_seed)."""
  return name in REGISTRY and REGISTRY[name].reads_task_seed


def resolve(cfg: ml_collections.ConfigDict, input_shape: tuple[int, ...]) -> ml_collections.FrozenConfigDict:
  config_lib.check("name" in cfg and cfg.name in REGISTRY, "model.name",
                   f"unknown model {cfg.get('name')!r} (known: {', '.join(sorted(REGISTRY))})")
  spec = REGISTRY[cfg.name]
  full = config_lib.with_defaults(cfg, dict(spec.defaults, **precision.DEFAULTS), "model")  # every model: a dtype
  config_lib.check_one_of(full, "dtype", "model", precision.DTYPES)
  spec.validate(full, input_shape)
  return full


def build(cfg: ml_collections.FrozenConfigDict, task: contracts.Task) -> contracts.Model:
  """Builds a model from a resolved config (with its compute dtype: models/precision.py)."""
  model = REGISTRY[cfg.name].build(cfg, task)
  model = dataclasses.replace(model, apply=precision.mixed(model.apply, cfg.dtype, cast_inputs=cfg.name not in SELF_CAST))
  return model
