"""Theory calculator for the stylized gated model: when does the gate leave the IC predictor for the IW one?

Chan et al. 2024's account: α follows whichever predictor has the lower loss. The IC predictor h has an error
floor set by the data (irrelevant contexts, label noise) but needs no training; the IW predictor g improves with
the number of times N_x its input region was seen, which for class c after N sequences is about N·w_c. So common
classes (C_H, large w_c) switch to IW early, rare ones (C_L) late, and ICL on them is transient.

Everything here is per class c (then averaged over a class group), for 0-1 error against clean targets, the loss
the gated config's gate compares (model.gate_loss='error'). Notation: K classes with weights w (stylized.Spec),
p = p_relevant, ε = label noise, σ = input noise, L = context length.

IW predictor (the tabular g of models/gated.py: one table row per nearest-prototype region):
  M[c, r] = P(region r | class c), the chance that x = μ_c + σz lands nearest to μ_r (Monte-Carlo over z with
  the task's prototypes; the identity when σ = 0).
  After n samples of its region, g's row predicts the majority of n labels, each the true class with probability
  1 − ε and the class c+1 otherwise, so the vote is between two labels:
    e_maj(n) = P(B > n/2) + ½·P(B = n/2),  B ~ Binomial(n, ε);   e_maj(0) = 1 − 1/K (an untrained row guesses).
  A query carried into another region is answered with that region's label, which is wrong:
    e_g(c, n) = 1 − M[c, c]·(1 − e_maj(n)).
  (Approximation: region c's table also receives the few queries of other classes carried into it; ignored.)
  Against N: e_g(c; N) = E_{n ~ Binomial(N, w_c)} e_g(c, n), exact over the Binomial.

IC predictor h (argmax of the similarity-weighted vote over context labels):
  L = 1: h answers the one context label. Before label noise it equals the query class q with probability
    a_q = p + (1 − p)·w_q²      (relevant; or irrelevant, the slot matched q and its one re-draw matched again)
  and equals q − 1 (which noise turns into q) with probability b_q = (1 − p)·w_{q−1}·(1 + w_q). So
    e_h(q) = 1 − [(1 − ε)·a_q + ε·b_q].
  L > 1: Monte-Carlo with the task's own sampler (r ~ Binomial(L, p), Gaussian inputs, label noise) and h's
  softmax(−‖x_j − x_q‖²/τ) vote: an exact expectation up to sampling error.

Switch point, in visits n of the class's region, converted to sequences by the expected count N = n / w_c:
  instant     first n with e_g(c, n) ≤ e_h(c): the switch of a gate that knew both expected losses.
  cumulative  first n with Σ_{k<n} e_g(c, k) ≤ n·e_h(c): where the cumulative losses cross, which is exactly
              where a Hedge or FTRL gate started at α = 1/2 crosses 1/2 (its α is a function of Σ(ℓ_g − ℓ_h)).
  No switch (inf) when g's floor 1 − M[c, c] stays above e_h: then ICL persists at every N (large σ).
The gate sees training targets, which carry label noise; comparing clean errors is exact for ε = 0 and shifts
both sides by about ε otherwise.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from iclscale.tasks import stylized

GROUPS = ("C_H", "C_L")
RULES = ("instant", "cumulative")


@dataclasses.dataclass(frozen=True)
class Setting:
  """The data parameters the predictions depend on (the fields of a stylized task config)."""
  num_high: int = 5
  num_low: int = 5
  p_high: float = 0.9
  p_relevant: float = 0.9
  input_noise: float = 0.2
  label_noise: float = 0.0
  context_len: int = 1
  dim: int = 64

  @classmethod
  def from_task(cls, cfg: Any) -> "Setting":
    return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})

  @property
  def num_classes(self) -> int:
    return self.num_high + self.num_low

  def spec(self) -> stylized.Spec:
    return stylized.Spec(self.num_high, self.num_low, self.p_high, self.input_noise, self.label_noise,
                         self.context_len)

  def weights(self) -> np.ndarray:
    return self.spec().class_weights()

  def group(self, name: str) -> np.ndarray:
    return np.arange(self.num_high) if name == "C_H" else np.arange(self.num_high, self.num_classes)


def majority_error(n: Any, eps: float, num_classes: int) -> np.ndarray:
  """e_maj(n): error of the majority of n labels, each wrong (the same wrong class) with probability eps."""
  n = np.asarray(n, np.int64)
  half = n // 2
  err = stats.binom.sf(half, n, eps) + np.where(n % 2 == 0, 0.5 * stats.binom.pmf(half, n, eps), 0.0)
  return np.where(n == 0, 1.0 - 1.0 / num_classes, err)


def confusion(s: Setting, prototypes_KxD: np.ndarray, num_samples: int = 20_000, seed: int = 0) -> np.ndarray:
  """M[c, r] = P(argmin_r' ‖μ_c + σz − μ_r'‖² = r), by Monte-Carlo over z ~ N(0, I)."""
  mu = np.asarray(prototypes_KxD, np.float64)
  K = mu.shape[0]
  if s.input_noise == 0:
    return np.eye(K)
  rng = np.random.default_rng(seed)
  out = np.zeros((K, K))
  sq = np.sum(mu**2, -1)
  for c in range(K):
    x = mu[c] + s.input_noise * rng.standard_normal((num_samples, mu.shape[1]))
    region = np.argmax(2 * x @ mu.T - sq, -1)
    out[c] = np.bincount(region, minlength=K) / num_samples
  return out


def iw_error_at_visits(s: Setting, n: Any, conf_KxK: np.ndarray) -> np.ndarray:
  """e_g(c, n) for every class c: [len(n), K]."""
  e_maj = majority_error(np.atleast_1d(n), s.label_noise, s.num_classes)
  return 1.0 - np.diag(conf_KxK)[None] * (1.0 - e_maj[:, None])


def iw_error(s: Setting, num_sequences: Any, conf_KxK: np.ndarray) -> np.ndarray:
  """e_g(c; N) = E_{n ~ Binomial(N, w_c)} e_g(c, n): [len(N), K]."""
  w = s.weights()
  out = np.zeros((len(np.atleast_1d(num_sequences)), s.num_classes))
  for i, N in enumerate(np.atleast_1d(num_sequences)):
    for c in range(s.num_classes):
      mean, sd = N * w[c], np.sqrt(N * w[c] * (1 - w[c]))
      n = np.arange(max(0, int(mean - 12 * sd) - 2), min(int(N), int(mean + 12 * sd) + 2) + 1)
      out[i, c] = np.sum(stats.binom.pmf(n, N, w[c]) * iw_error_at_visits(s, n, conf_KxK)[:, c])
  return out


def ic_error_closed_form(s: Setting, p_relevant: float | None = None) -> np.ndarray:
  """e_h(q) for L = 1 and every class q: [K]."""
  assert s.context_len == 1, "the closed form is for L = 1; use ic_error_mc"
  p = s.p_relevant if p_relevant is None else p_relevant
  w = s.weights()
  a = p + (1 - p) * w**2
  b = (1 - p) * np.roll(w, 1) * (1 + w)   # np.roll(w, 1)[q] = w[q - 1]
  return 1.0 - ((1 - s.label_noise) * a + s.label_noise * b)


def ic_error_mc(s: Setting, prototypes_KxD: Any, tau: float = 1.0, p_relevant: float | None = None,
                num_samples: int = 20_000, seed: int = 0) -> np.ndarray:
  """e_h(q) by Monte-Carlo through the task's sampler, queries uniform within each group: [K]."""
  p = s.p_relevant if p_relevant is None else p_relevant
  mu = jnp.asarray(prototypes_KxD, jnp.float32)
  errors, counts = np.zeros(s.num_classes), np.zeros(s.num_classes)
  for i, group in enumerate(("high", "low")):
    cell = stylized.cell(p, -1, group, flip=False, noisy_target=False)
    key = jax.random.fold_in(jax.random.key(seed), i)
    b = jax.jit(stylized.sample_batch, static_argnums=3)(key, mu, jnp.arange(num_samples, dtype=jnp.uint32),
                                                          s.spec(), cell)
    x, ctx, y = (np.asarray(b[k]) for k in ("x", "ctx_labels", "target"))
    d2 = np.sum((x[:, :-1] - x[:, -1:]) ** 2, -1)
    logits = -d2 / tau
    weight = np.exp(logits - logits.max(-1, keepdims=True))
    vote = np.zeros((num_samples, s.num_classes))
    np.add.at(vote, (np.arange(num_samples)[:, None], ctx), weight / weight.sum(-1, keepdims=True))
    wrong = np.argmax(vote, -1) != y
    errors += np.bincount(y, weights=wrong, minlength=s.num_classes)
    counts += np.bincount(y, minlength=s.num_classes)
  return errors / np.maximum(counts, 1)


def ic_error(s: Setting, prototypes_KxD: Any = None, tau: float = 1.0, p_relevant: float | None = None,
             num_samples: int = 20_000, seed: int = 0) -> np.ndarray:
  """e_h per class: the closed form for L = 1, Monte-Carlo otherwise."""
  if s.context_len == 1:
    return ic_error_closed_form(s, p_relevant)
  return ic_error_mc(s, prototypes_KxD, tau, p_relevant, num_samples, seed)


def switch_visits(e_g_n: np.ndarray, e_h: float, rule: str) -> float:
  """The visit count n at which the gate switches to g (see the module docstring), or inf.

  e_g_n[k] is g's error after k visits, k = 0..n_max; beyond n_max it is taken as constant at e_g_n[-1].
  """
  if rule == "instant":
    hit = np.nonzero(e_g_n <= e_h)[0]
    return float(hit[0]) if hit.size else float("inf")
  n = np.arange(1, len(e_g_n) + 1)
  cum = np.cumsum(e_g_n)                    # cum[n-1] = Σ_{k<n} e_g(k)
  hit = np.nonzero(cum <= n * e_h)[0]
  if hit.size:
    return float(n[hit[0]])
  last, n_max = e_g_n[-1], len(e_g_n)
  if last >= e_h:
    return float("inf")
  return float(np.ceil((cum[-1] - n_max * last) / (e_h - last)))


def predict(s: Setting, prototypes_KxD: Any, num_sequences: Any = (), tau: float = 1.0, max_visits: int = 4096,
            num_samples: int = 20_000, seed: int = 0) -> dict:
  """Per group: predicted switch N for each rule, h's error, g's error floor, and g/h error curves against N.

  Returns {group: dict(switch={rule: N*}, ic_error=e_h, iw_floor=lim e_g, weight=w_c,
                        curve=dict(N=..., iw_error=..., ic_error=...))}.
  """
  conf = confusion(s, prototypes_KxD, num_samples, seed)
  e_h = ic_error(s, prototypes_KxD, tau, None, num_samples, seed)
  e_g_n = iw_error_at_visits(s, np.arange(max_visits + 1), conf)
  N = np.asarray(num_sequences, np.int64)
  e_g_N = iw_error(s, N, conf) if N.size else np.zeros((0, s.num_classes))
  w = s.weights()
  out = {}
  for name in GROUPS:
    ids = s.group(name)
    g_n, h = e_g_n[:, ids].mean(-1), float(e_h[ids].mean())
    w_c = float(w[ids].mean())  # equal within a group
    out[name] = dict(
        switch={rule: switch_visits(g_n, h, rule) / w_c for rule in RULES},
        ic_error=h, iw_floor=float(g_n[-1]), weight=w_c,
        curve=dict(N=N, iw_error=e_g_N[:, ids].mean(-1), ic_error=np.full(N.shape, h)))
  return out
