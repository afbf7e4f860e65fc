"""No-regret online learners as optax GradientTransformations, and the 'bilevel' optimizer of Algorithm 1.

Chan et al. 2024's Algorithm 1 updates g, h and the gate α each with its own no-regret learner. Here a learner
is an optax transformation that reads the gradient of the current round's loss and returns the update to the
parameters (`params` is required: the learners are projections/closed forms, not additive steps).

Step sizes are η_t = lr/√t. With `per_coordinate=True` (default) t counts the rounds in which a coordinate got a
non-zero gradient, so each row of a tabular parameter (one region of input space) runs its own online problem
with its own clock: the O(√T) regret bound then holds per region with T = that region's visits. On dense
parameters every coordinate moves every round and t is the global round.

  ogd    projected online gradient descent: x_{t+1} = Π(x_t − η_t·g_t)                 regret ≤ D²√T/η + ηG²√T
  ftrl   follow the regularized leader, linearized losses, L2 regulariser around x_1:
         x_{t+1} = argmin_x <Σ_{s≤t} g_s, x> + ‖x − x_1‖²/(2η_t) = Π(x_1 − η_t Σ g)     (lazy projection)
  hedge  exponentiated gradient (FTRL with the entropy): weights ∝ x_1·exp(−η_t Σ g).   regret ≤ O(√(T log n))
         experts='pair': every scalar a ∈ (0, 1) is the weight of expert A against B, and its gradient is
         ℓ_A − ℓ_B (the derivative of the linear loss a·ℓ_A + (1−a)·ℓ_B): a = sigmoid(logit(a_1) − η_t Σ g).
         experts='last': the last axis of the parameter is a probability vector over experts.

Π projects onto a box [lo, hi] (per coordinate) or a ball of `radius` over the last axis (each row of a table,
each vector of a dense layer). For FTRL with a ball the Euclidean projection is the exact argmin only when a
row's coordinates share one η_t, as the rows of a table do.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from iclscale import config as config_lib

# Every learner's fields, with defaults; a learner entry in optim.learners may set any of them.
LEARNER_DEFAULTS = dict(
    type="ogd",            # ogd | ftrl | hedge
    lr=1.0,                # η of the step size η/√t
    project="none",        # ogd/ftrl: none | box | ball
    lo=0.0,                # box lower bound
    hi=1.0,                # box upper bound
    radius=1.0,            # ball radius over the last axis
    experts="pair",        # hedge: pair (each scalar is a 2-expert weight) | last (the last axis is a simplex)
    per_coordinate=True,   # t counts each coordinate's rounds with a non-zero gradient (else the global round)
)
TYPES = ("ogd", "ftrl", "hedge")
# Parameter groups of the gated model (models/gated.py); an optim.learners key is one of these or a regex.
GROUPS = {"g": r"^g/", "h": r"^h/", "alpha": r"^alpha/"}
_EPS = 1e-6


class CountState(NamedTuple):
  count: Any                 # per-coordinate rounds so far (float32, same tree as params)


class LazyState(NamedTuple):
  count: Any
  anchor: Any                # x_1, the point the regulariser is centred on
  grad_sum: Any              # Σ_{s≤t} g_s


def _advance(count: jax.Array, grad: jax.Array, per_coordinate: bool, row_axis: bool = False) -> jax.Array:
  """The clock t after this round: +1 where the gradient is non-zero (or everywhere, for a global clock)."""
  if not per_coordinate:
    return count + 1.0
  active = grad != 0
  if row_axis:  # a simplex row is one decision: its coordinates share a clock
    active = jnp.broadcast_to(jnp.any(active, axis=-1, keepdims=True), grad.shape)
  return count + active.astype(count.dtype)


def _rate(lr: float, count: jax.Array) -> jax.Array:
  return lr / jnp.sqrt(jnp.maximum(count, 1.0))


def project(x: jax.Array, kind: str, lo: float, hi: float, radius: float) -> jax.Array:
  if kind == "box":
    return jnp.clip(x, lo, hi)
  if kind == "ball":
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True) if x.ndim else jnp.abs(x)
    return x * jnp.minimum(1.0, radius / jnp.maximum(norm, 1e-12))
  return x


def _need_params(params: Any, name: str) -> None:
  if params is None:
    raise ValueError(f"the {name} learner needs the current parameters (pass params to update)")


def ogd(lr: float, project_kind: str = "none", lo: float = 0.0, hi: float = 1.0, radius: float = 1.0,
        per_coordinate: bool = True) -> optax.GradientTransformation:
  """Projected online gradient descent with η_t = lr/√t (Zinkevich 2003)."""
  def init(params):
    return CountState(jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params))

  def update(grads, state, params=None):
    _need_params(params, "ogd")
    count = jax.tree.map(lambda c, g: _advance(c, g, per_coordinate), state.count, grads)
    new = jax.tree.map(lambda p, g, c: project(p - _rate(lr, c) * g, project_kind, lo, hi, radius),
                       params, grads, count)
    return jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new, params), CountState(count)
  return optax.GradientTransformation(init, update)


def _lazy(name: str, closed_form, row_axis: bool, per_coordinate: bool) -> optax.GradientTransformation:
  """FTRL-style learners: the iterate is a closed form of (x_1, Σ g, η_t), never a sum of steps."""
  def init(params):
    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
    return LazyState(zeros, jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params), zeros)

  def update(grads, state, params=None):
    _need_params(params, name)
    count = jax.tree.map(lambda c, g: _advance(c, g, per_coordinate, row_axis), state.count, grads)
    grad_sum = jax.tree.map(lambda s, g: s + g, state.grad_sum, grads)
    new = jax.tree.map(closed_form, state.anchor, grad_sum, count)
    updates = jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new, params)
    return updates, LazyState(count, state.anchor, grad_sum)
  return optax.GradientTransformation(init, update)


def ftrl(lr: float, project_kind: str = "none", lo: float = 0.0, hi: float = 1.0, radius: float = 1.0,
         per_coordinate: bool = True) -> optax.GradientTransformation:
  """FTRL on linearized losses with regulariser ‖x − x_1‖²/(2η_t), η_t = lr/√t: x = Π(x_1 − η_t Σ g)."""
  return _lazy("ftrl", lambda a, s, c: project(a - _rate(lr, c) * s, project_kind, lo, hi, radius),
               False, per_coordinate)


def hedge(lr: float, experts: str = "pair", per_coordinate: bool = True) -> optax.GradientTransformation:
  """Hedge / exponentiated gradient with η_t = lr/√t on cumulative (linear) losses, started at x_1."""
  if experts == "pair":
    def closed_form(a, s, c):
      a = jnp.clip(a, _EPS, 1 - _EPS)
      return jax.nn.sigmoid(jnp.log(a) - jnp.log1p(-a) - _rate(lr, c) * s)
  else:
    def closed_form(a, s, c):
      return jax.nn.softmax(jnp.log(jnp.clip(a, _EPS, None)) - _rate(lr, c) * s, axis=-1)
  return _lazy("hedge", closed_form, experts == "last", per_coordinate)


def make(spec) -> optax.GradientTransformation:
  """A learner from one optim.learners entry (a dict with LEARNER_DEFAULTS' fields)."""
  s = dict(LEARNER_DEFAULTS, **dict(spec))
  if s["type"] == "hedge":
    return hedge(s["lr"], s["experts"], s["per_coordinate"])
  fn = ogd if s["type"] == "ogd" else ftrl
  return fn(s["lr"], s["project"], s["lo"], s["hi"], s["radius"], s["per_coordinate"])


def validate(cfg) -> None:
  """optim.name='bilevel': every learner entry is well formed; the η/√t rates replace optim.schedule."""
  config_lib.check(len(cfg.learners) > 0, "optim.learners",
                   f"name=bilevel needs learners, e.g. {{'g': dict(type='ogd', lr=1.0)}} (groups: {', '.join(GROUPS)})")
  config_lib.check(cfg.schedule == "constant", "optim.schedule",
                   "the bilevel learners use their own lr/sqrt(t) rates; keep schedule='constant'")
  for key, spec in cfg.learners.items():
    where = f"optim.learners.{key}"
    try:
      re.compile(GROUPS.get(key, key))
    except re.error as e:
      raise config_lib.ConfigError(f"config.{where}: not a group name ({', '.join(GROUPS)}) or regex ({e})") from None
    config_lib.check(hasattr(spec, "keys"), where, f"must be a dict of learner fields, got {spec!r}")
    full = config_lib.with_defaults(spec, LEARNER_DEFAULTS, where)
    config_lib.check_one_of(full, "type", where, TYPES)
    config_lib.check_one_of(full, "project", where, ("none", "box", "ball"))
    config_lib.check_one_of(full, "experts", where, ("pair", "last"))
    config_lib.check_positive(full, "lr", where)
    config_lib.check_positive(full, "radius", where)
    config_lib.check(full.lo < full.hi, f"{where}.lo", f"box needs lo < hi, got [{full.lo}, {full.hi}]")


def build(cfg, params: Any, lr_schedule: optax.Schedule) -> optax.GradientTransformation:
  """optax.multi_transform over the parameter groups: each parameter must match exactly one learner entry."""
  del lr_schedule  # each learner runs its own lr/sqrt(t)
  keys = list(cfg.learners)
  patterns = [re.compile(GROUPS.get(k, k)) for k in keys]

  def label(path, _):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    hits = [k for k, p in zip(keys, patterns) if p.search(name)]
    config_lib.check(len(hits) == 1, "optim.learners",
                     f"parameter {name} matches {hits or 'no entry'}; each parameter needs exactly one learner")
    return hits[0]
  labels = jax.tree_util.tree_map_with_path(label, params)
  return optax.multi_transform({k: make(cfg.learners[k]) for k in keys}, labels)

