"""The stylized gated model of Chan et al. 2024: f(x̃) = α(x̃)·g(x̃) + (1 − α(x̃))·h(x̃).

  g  in-weight predictor of the query alone. 'table': a logit table [R, K] read at the query's region, where the
     region of x_q is its nearest prototype, argmin_r ‖x_q − μ_r‖² over the task's R = K class prototypes
     (task.arrays['prototypes']; with unit-norm prototypes this is argmax similarity, the Bayes classifier
     under equal priors). A region is thus "the class the query looks like"; noise that carries x_q across a
     boundary is an error g cannot learn away. 'mlp': [hidden..., K] ReLU on x_q, as upstream.
  h  in-context predictor: h = Σ_j softmax_j(−‖x_j − x_q‖²/τ)·onehot(y_j), with τ = exp(log_tau) learnable
     (one exponential, unlike upstream's ICPredictor in chanb/simple_icl src/models.py, which
     divides by exp(exp(log_temp))). Clipped at prob_floor before every log.
  α  the probability of using g. 'table': one α ∈ [0, 1] per query region, stored as the probability itself so
     the gate's loss m_t(α) = α·(ℓ_g − ℓ_h) is linear in the parameter (online convex optimisation; learners
     project onto [0, 1]). 'mlp': sigmoid of [hidden..., 1] ReLU on the flattened context + query, as upstream.

mode='bilevel' trains Algorithm 1 through the generic loop with one loss whose gradients split by group:
  total = ℓ(g) + ℓ(h) + α·stop_gradient(ℓ'(g) − ℓ'(h))
g's parameters see only ∇ℓ(g), h's only ∇ℓ(h), α's only ∇α·(ℓ'(g) − ℓ'(h)) = ∇m_t; each group then takes a step
of its own no-regret learner (optim.name='bilevel', learners.py). ℓ is the log-loss; ℓ' (gate_loss) is the
log-loss or the 0-1 error, the bounded loss the theory compares (theory.py). Reported loss/accuracy are f's.
mode='end_to_end' is upstream's variant: the log-loss of f, by any optimizer (Adam upstream).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iclscale import config as config_lib
from iclscale import contracts

DEFAULTS = dict(
    name="gated",
    mode="bilevel",      # bilevel: Algorithm 1's split losses | end_to_end: log-loss of f (upstream, Adam)
    g="table",           # IW predictor: table (logits per query region) | mlp (on the query)
    alpha="table",       # gate: table (α per query region, in [0, 1]) | mlp (sigmoid, on context + query)
    hidden=(64, 64),     # hidden widths of the mlp options (upstream: [64, 64])
    init_tau=1.0,        # initial temperature τ of h's softmax over −‖x_j − x_q‖²/τ
    alpha_init=0.5,      # initial α of the table gate (no preference between g and h)
    gate_loss="log",     # the per-example loss whose difference trains α: log | error (0-1)
    prob_floor=1e-7,     # h and f are clipped at this before a log (h is exactly 0 off the context labels)
)
MODES = ("bilevel", "end_to_end")


def regions(x_BxD: jax.Array, prototypes_RxD: jax.Array) -> jax.Array:
  """Index of the nearest prototype: argmin_r ‖x − μ_r‖² = argmax_r 2<x, μ_r> − ‖μ_r‖²."""
  score_BxR = 2.0 * x_BxD @ prototypes_RxD.T - jnp.sum(jnp.square(prototypes_RxD), -1)
  return jnp.argmax(score_BxR, -1)


class MLP(nn.Module):
  features: Sequence[int]

  @nn.compact
  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    for i, f in enumerate(self.features):
      x_BxD = nn.Dense(f, name=f"dense_{i}")(x_BxD)
      if i < len(self.features) - 1:
        x_BxD = nn.relu(x_BxD)
    return x_BxD


class InContext(nn.Module):
  """h: a similarity-weighted average of the context labels' one-hots."""
  num_classes: int
  init_tau: float

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, ctx_labels_BxL: jax.Array) -> jax.Array:
    log_tau = self.param("log_tau", nn.initializers.constant(np.log(self.init_tau)), ())
    d2_BxL = jnp.sum(jnp.square(x_BxSxD[:, :-1] - x_BxSxD[:, -1:]), -1)
    w_BxL = jax.nn.softmax(-d2_BxL / jnp.exp(log_tau), axis=-1)
    return jnp.einsum("bl,blk->bk", w_BxL, jax.nn.one_hot(ctx_labels_BxL, self.num_classes))


class InWeight(nn.Module):
  """g: logits of the query alone, from its region's row of a table or from an MLP."""
  num_classes: int
  kind: str
  hidden: Sequence[int]

  @nn.compact
  def __call__(self, query_BxD: jax.Array, region_B: jax.Array, num_regions: int) -> jax.Array:
    if self.kind == "table":
      return self.param("table", nn.initializers.zeros, (num_regions, self.num_classes))[region_B]
    return MLP(tuple(self.hidden) + (self.num_classes,), name="mlp")(query_BxD)


class Gate(nn.Module):
  """α: the probability of using g, per query region (the value itself) or from an MLP on the whole sequence."""
  kind: str
  hidden: Sequence[int]
  alpha_init: float

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, region_B: jax.Array, num_regions: int) -> jax.Array:
    if self.kind == "table":
      alpha_B = self.param("table", nn.initializers.constant(self.alpha_init), (num_regions,))[region_B]
      # The learners keep α in [0, 1]; the clip only bounds it under other optimizers, and passes the gradient
      # straight through so that m_t's gradient is exactly ℓ'_g − ℓ'_h even at α = 0 or 1.
      return alpha_B + jax.lax.stop_gradient(jnp.clip(alpha_B, 0.0, 1.0) - alpha_B)
    flat_BxF = x_BxSxD.reshape(x_BxSxD.shape[0], -1)
    return jax.nn.sigmoid(MLP(tuple(self.hidden) + (1,), name="mlp")(flat_BxF)[:, 0])


class GatedModel(nn.Module):
  """Parameters come in three groups, g/, h/ and alpha/, one per learner of Algorithm 1."""
  num_classes: int
  g_kind: str = "table"
  alpha_kind: str = "table"
  hidden: Sequence[int] = (64, 64)
  init_tau: float = 1.0
  alpha_init: float = 0.5

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array, ctx_labels_BxL: jax.Array, prototypes_RxD: jax.Array | None) -> dict:
    if prototypes_RxD is None:  # only the mlp options, which need no regions
      R, region_B = 1, jnp.zeros(x_BxSxD.shape[:1], jnp.int32)
    else:
      R, region_B = prototypes_RxD.shape[0], regions(x_BxSxD[:, -1], prototypes_RxD)
    g_logits_BxK = InWeight(self.num_classes, self.g_kind, self.hidden, name="g")(x_BxSxD[:, -1], region_B, R)
    h_BxK = InContext(self.num_classes, self.init_tau, name="h")(x_BxSxD, ctx_labels_BxL)
    alpha_B = Gate(self.alpha_kind, self.hidden, self.alpha_init, name="alpha")(x_BxSxD, region_B, R)
    log_g_BxK = jax.nn.log_softmax(g_logits_BxK)
    g_BxK = jnp.exp(log_g_BxK)
    f_BxK = alpha_B[:, None] * g_BxK + (1.0 - alpha_B[:, None]) * h_BxK
    return dict(g=g_BxK, h=h_BxK, f=f_BxK, alpha=alpha_B, log_g=log_g_BxK)


def pick(p_BxK: jax.Array, y_B: jax.Array) -> jax.Array:
  return jnp.take_along_axis(p_BxK, y_B[:, None], -1)[:, 0]


def head_losses(out: dict, y_B: jax.Array, floor: float) -> dict[str, jax.Array]:
  """Per-example log-losses and 0-1 errors of g, h and f."""
  return dict(
      g=-pick(out["log_g"], y_B), h=-jnp.log(jnp.maximum(pick(out["h"], y_B), floor)),
      f=-jnp.log(jnp.maximum(pick(out["f"], y_B), floor)),
      g_err=(jnp.argmax(out["g"], -1) != y_B).astype(jnp.float32),
      h_err=(jnp.argmax(out["h"], -1) != y_B).astype(jnp.float32),
      f_err=(jnp.argmax(out["f"], -1) != y_B).astype(jnp.float32))


def make_loss(cfg):
  """(outputs, batch) -> (objective, metrics): Algorithm 1's split objective, or f's log-loss end to end."""
  def loss(out: dict, batch: dict) -> tuple[jax.Array, dict]:
    per = head_losses(out, batch["target"], cfg.prob_floor)
    if cfg.mode == "bilevel":
      gap_B = per["g_err"] - per["h_err"] if cfg.gate_loss == "error" else per["g"] - per["h"]
      # m_t(α) = α·(ℓ'_g − ℓ'_h): the gap is a constant to α, and α is not an input of ℓ_g or ℓ_h.
      objective = jnp.mean(per["g"] + per["h"] + out["alpha"] * jax.lax.stop_gradient(gap_B))
    else:
      objective = jnp.mean(per["f"])
    metrics = dict(loss=per["f"].mean(), accuracy=(1.0 - per["f_err"]).mean(), alpha=out["alpha"].mean(),
                   g_loss=per["g"].mean(), h_loss=per["h"].mean())
    return objective, metrics
  return loss


def validate(cfg, input_shape: tuple[int, ...]) -> None:
  del input_shape
  config_lib.check_one_of(cfg, "mode", "model", MODES)
  config_lib.check_one_of(cfg, "g", "model", ("table", "mlp"))
  config_lib.check_one_of(cfg, "alpha", "model", ("table", "mlp"))
  config_lib.check_one_of(cfg, "gate_loss", "model", ("log", "error"))
  config_lib.check(len(cfg.hidden) > 0 and all(isinstance(h, int) and h > 0 for h in cfg.hidden), "model.hidden",
                   f"must be a non-empty list of positive widths, got {cfg.hidden!r}")
  config_lib.check_positive(cfg, "init_tau", "model")
  config_lib.check_prob(cfg, "alpha_init", "model")
  config_lib.check(0.0 < cfg.prob_floor < 1.0, "model.prob_floor", f"must lie in (0, 1), got {cfg.prob_floor}")


def build(cfg, task: contracts.Task) -> contracts.Model:
  arrays = task.arrays
  uses_regions = "table" in (cfg.g, cfg.alpha)
  config_lib.check(not uses_regions or "prototypes" in arrays, "model.g",
                   "the table options index regions by the task's prototypes (task.arrays['prototypes']); "
                   "this task has none: use g='mlp' and alpha='mlp'")
  prototypes_RxD = arrays.get("prototypes")
  module = GatedModel(task.num_classes, cfg.g, cfg.alpha, tuple(cfg.hidden), cfg.init_tau, cfg.alpha_init)

  def init(key, batch):
    return module.init(key, batch["x"], batch["ctx_labels"], prototypes_RxD)["params"]

  def apply(params, batch):
    return module.apply({"params": params}, batch["x"], batch["ctx_labels"], prototypes_RxD)
  return contracts.Model(module, init, apply, make_loss(cfg))
