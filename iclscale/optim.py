"""Optimizer chains (optax), learning-rate schedules, and weight penalties scoped by parameter group.

Three regularizers are kept apart on purpose (Singh et al. 2023 upstream used the third):
  weight_decay   decoupled decay inside AdamW (optax.adamw with a mask),
  l2_form=squared  0.5 * l2 * sum ||W||^2 added to the loss (gradient l2 * W, coupled through Adam),
  l2_form=norm     l2 * sum_tensors ||W||_F, the non-squared per-tensor norm of the icl-dynamics code.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

from iclscale import config as config_lib
from iclscale import learners

DEFAULTS = dict(
    name="adam",            # adam or adamw (decoupled weight decay)
    lr=3e-4,                # peak learning rate
    schedule="constant",    # constant | warmup_rsqrt (lr*min(t/w, sqrt(w/t)), DeepMind's) | warmup_cosine
    warmup_steps=0,         # w of the warmup schedules
    b1=0.9,                 # Adam beta1
    b2=0.999,               # Adam beta2
    eps=1e-8,               # Adam epsilon
    grad_clip=0.0,          # clip gradients to this global norm; 0 = no clipping
    weight_decay=0.0,       # AdamW decoupled decay rate (name=adamw)
    decay_scope="all",      # which parameters decay: all | mlp | attn | encoder | embed | a regex on the path
    l2=0.0,                 # strength of the loss penalty below; 0 = off
    l2_form="squared",      # squared (0.5*l2*sum W^2) or norm (l2*sum of per-tensor Frobenius norms)
    l2_scope="all",         # which parameters the penalty sees (same choices as decay_scope)
    frozen="",              # parameters that never update (same choices; "" = none), e.g. fixed embeddings
    learners={},            # name=bilevel: {group regex: dict(type=ogd|hedge|ftrl, lr=..., ...)} (learners.py)
)

# name -> build(cfg, params, lr_schedule) -> GradientTransformation.
BUILDERS = {
    "adam": lambda cfg, params, lr: optax.adam(lr, cfg.b1, cfg.b2, cfg.eps),
    "adamw": lambda cfg, params, lr: optax.adamw(lr, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay,
                                                 mask=scope_mask(params, cfg.decay_scope)),
    # The no-regret learners of Chan et al. 2024's Algorithm 1, one per parameter group (learners.py).
    "bilevel": learners.build,
}

# name -> validate(cfg) for builders with fields of their own.
VALIDATORS = {"bilevel": learners.validate}

# Named parameter groups, as regexes over "/"-joined parameter paths of the project's models.
SCOPES = {
    "all": r".*",
    "mlp": r"(^|/)mlp/",
    "attn": r"(^|/)attn/",
    "encoder": r"^encoder/",
    "embed": r"(^|/)(label_embed|embed)/",
}


def validate(cfg) -> None:
  config_lib.check_one_of(cfg, "name", "optim", tuple(BUILDERS))
  if cfg.name in VALIDATORS:
    VALIDATORS[cfg.name](cfg)
  config_lib.check_one_of(cfg, "schedule", "optim", ("constant", "warmup_rsqrt", "warmup_cosine"))
  config_lib.check_one_of(cfg, "l2_form", "optim", ("squared", "norm"))
  config_lib.check_positive(cfg, "lr", "optim")
  for f in ("grad_clip", "weight_decay", "l2", "warmup_steps"):
    config_lib.check_positive(cfg, f, "optim", allow_zero=True)
  config_lib.check(cfg.schedule == "constant" or cfg.warmup_steps > 0, "optim.warmup_steps",
                   f"schedule {cfg.schedule} needs warmup_steps > 0")
  config_lib.check(cfg.weight_decay == 0 or cfg.name == "adamw", "optim.weight_decay",
                   "decoupled weight decay needs optim.name='adamw' (use optim.l2 for a loss penalty with adam)")
  for f in ("decay_scope", "l2_scope", "frozen"):
    try:
      re.compile(SCOPES.get(cfg[f], cfg[f]))
    except re.error as e:
      raise config_lib.ConfigError(f"config.optim.{f}: not a scope name or regex ({e})") from None


def path_name(path: tuple) -> str:
  """A parameter's path as "/"-joined names (e.g. "block_0/attn/query/kernel"), which the scopes match."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def scope_mask(params: Any, scope: str) -> Any:
  """A bool pytree: True for the parameters whose path matches the scope."""
  if not scope:
    return jax.tree.map(lambda _: False, params)
  pattern = re.compile(SCOPES.get(scope, scope))
  return jax.tree_util.tree_map_with_path(lambda p, _: bool(pattern.search(path_name(p))), params)


def schedule(cfg, num_steps: int) -> optax.Schedule:
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.lr)
  w = float(cfg.warmup_steps)
  if cfg.schedule == "warmup_rsqrt":
    return lambda t: cfg.lr * jnp.minimum(t / w, jnp.sqrt(w / jnp.maximum(t, 1.0)))
  return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, int(w), max(num_steps, int(w) + 1))


def build(cfg, params: Any, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  lr = schedule(cfg, num_steps)
  tx = optax.chain(BUILDERS[cfg.name](cfg, params, lr))
  if cfg.grad_clip > 0:
    # Clipping is stateless: applied before the chain but kept out of the state tree, so the optimizer state
    # has one structure with or without it and a run may be resumed with clipping added (after a non-finite loss).
    clip, inner = optax.clip_by_global_norm(cfg.grad_clip), tx
    tx = optax.GradientTransformation(
        inner.init, lambda updates, state, params=None: inner.update(clip.update(updates, None)[0], state, params))
  if cfg.frozen:
    frozen = scope_mask(params, cfg.frozen)
    labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, lr


def penalty(cfg, params: Any, l2: jax.Array | None = None) -> jax.Array:
  """The loss-side weight penalty of strength cfg.l2, or `l2` when given (a population member's own, traced);
  0 when cfg.l2 == 0 and no `l2` is given."""
  if l2 is None and cfg.l2 == 0:
    return jnp.zeros(())
  strength = cfg.l2 if l2 is None else l2
  mask = scope_mask(params, cfg.l2_scope)
  leaves = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
  if cfg.l2_form == "squared":
    return 0.5 * strength * sum(jnp.sum(jnp.square(p)) for p in leaves)
  # sqrt is not differentiable at 0: guard the all-zero tensor so its gradient is 0, not NaN.
  def safe_norm(p):
    sq = jnp.sum(jnp.square(p))
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  return strength * sum(safe_norm(p) for p in leaves)

