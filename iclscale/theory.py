"""Theory calculator for the stylized gated model: when does the gate leave the IC predictor for the IW one?

Chan et al. 2024's account: α follows whichever predictor has the lower loss. The IC predictor h has an error
floor set by the data (irrelevant contexts, label noise) but needs no training; the IW predictor g improves with
the number of times N_x its input region was seen, about N·w_c after N sequences. So common classes (C_H) switch
to IW early, rare ones (C_L) late, and ICL on them is transient. The loss is the 0-1 error, the bounded loss the
gated config's gate compares (model.gate_loss='error').

Notation: K classes with weights w (stylized.Spec), p = p_relevant, ε = label noise (a label becomes y+1 mod K),
σ = input noise, L = context length. The tabular g and α of models/gated.py live on regions: the region of a
query is its nearest prototype.

Regions.  M[c, r] = P(region r | class c) for x = μ_c + σz (Monte-Carlo over z with the task's prototypes; the
  identity when σ = 0). Region r is visited at rate π_r = Σ_c w_c·M[c, r]; its queries are class c with
  probability ρ_r(c) = w_c·M[c, r]/π_r and carry training labels q_r(y) = Σ_c ρ_r(c)·P(y | c), where
  P(c | c) = 1 − ε and P(c+1 | c) = ε.

IW predictor g.  After n visits, row r predicts the plurality ŷ of n labels drawn from q_r (ties uniformly; n = 0
  guesses uniformly). Closed form when q_r has at most two labels (σ = 0, or a pure region): the wrong label wins
  with probability e_maj(n) = P(B > n/2) + ½·P(B = n/2), B ~ Binomial(n, q_minor); Monte-Carlo over multinomial
  counts otherwise. Then
    training error of row r (what the gate sees)   e_g(r, n) = 1 − Σ_y P(ŷ = y)·q_r(y),
    clean error on class c (what evaluation sees)  e_g(c; N) = Σ_r M[c, r]·E_{n ~ Binomial(N, π_r)} P(ŷ_r(n) ≠ c).
  For large n, e_g(r, ∞) = 1 − max_y q_r(y): at large σ, regions are impure and g has a floor it cannot learn
  away; rare classes' regions are the most impure, because common classes spill into them.

IC predictor h (argmax of the similarity-weighted vote over context labels).
  L = 1: h answers the one context label u, whose clean value is the query class q with probability
    a_q = p + (1 − p)·w_q²       (relevant; or irrelevant, matched q and its one re-draw matched again)
  and v ≠ q with probability (1 − p)·w_v·(1 + w_q). Against a clean target (evaluation) and a noisy one (training):
    e_h(q)       = 1 − [(1 − ε)·a_q + ε·P(u = q−1)]
    e_h_train(q) = 1 − [((1 − ε)² + ε²)·a_q + ε(1 − ε)·(P(u = q−1) + P(u = q+1))].
  Region r's h error is Σ_c ρ_r(c)·e_h_train(c).
  L > 1: Monte-Carlo through the task's own sampler (r ~ Binomial(L, p), Gaussian inputs, label noise) and h's
  softmax(−‖x_j − x_q‖²/τ) vote: an exact expectation up to sampling error.

Switch point of region r, in visits n, converted to sequences by N = n/π_r (≈ n/w_c: "expected N_x = N·w_c").
With G(n) = Σ_{k<n} (ℓ_g(k) − ℓ_h(k)) the cumulative loss gap (ℓ_g(k) ~ Bernoulli(e_g(r, k)), ℓ_h(k) ~
Bernoulli(e_h(r)), taken independent):
  instant     first n with e_g(r, n) ≤ e_h(r): the switch of a gate that knew both expected losses.
  cumulative  first n with E G(n) ≤ 0: the expected cumulative losses cross.
  median      first n with P(G(n) < 0) + ½·P(G(n) = 0) ≥ ½. A Hedge or FTRL gate started at α = 1/2 has
              α > 1/2 exactly when G < 0 (its α is a function of G), so this is where the gate's α exceeds 1/2
              in half of the runs, whatever its learning rate. With few visits G is a small skewed count, and
              this comes later than the mean rule (e.g. ε = σ = 0: G(n) = 1 − Binomial(n, e_h), n = 17 vs 10).
              Computed exactly by convolution up to max_visits, by the mean rule beyond.
  inf when g's floor stays above h's error: ICL then persists at every N. A group switches at the N where half of
  its queries (weighted by M) fall in regions that have switched.
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
RULES = ("instant", "cumulative", "median")


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
    return stylized.Spec(self.num_high, self.num_low, self.context_len)

  def weights(self) -> np.ndarray:
    return stylized.class_weights(self.num_high, self.num_low, self.p_high)

  def group(self, name: str) -> np.ndarray:
    return np.arange(self.num_high) if name == "C_H" else np.arange(self.num_high, self.num_classes)

  def label_noise_matrix(self) -> np.ndarray:
    """P[c, y]: the training label y of a class-c query."""
    K, eps = self.num_classes, self.label_noise
    return (1 - eps) * np.eye(K) + eps * np.roll(np.eye(K), 1, axis=1)


def majority_error(n: Any, eps: float, num_classes: int) -> np.ndarray:
  """e_maj(n): the probability that the majority of n labels, each the minor label with probability eps (else
  the major one), is not the major label; ties are broken uniformly and n = 0 guesses among num_classes."""
  n = np.asarray(n, np.int64)
  half = n // 2
  err = stats.binom.sf(half, n, eps) + np.where(n % 2 == 0, 0.5 * stats.binom.pmf(half, n, eps), 0.0)
  return np.where(n == 0, 1.0 - 1.0 / num_classes, err)


def vote_distribution(q_K: np.ndarray, ns: Any, num_samples: int = 2000, seed: int = 0,
                      force_mc: bool = False) -> np.ndarray:
  """P[i, y] = P(the plurality of ns[i] draws from q is y), ties broken uniformly; uniform for n = 0.

  Closed form (e_maj) when q has at most two labels; otherwise Monte-Carlo over multinomial counts, for the n
  where the plurality is still in doubt (beyond n = 16·(q1 + q2)/(q1 − q2)², four standard deviations of the
  top-two count difference, it is the top label).
  """
  q_K = np.asarray(q_K, np.float64) / np.sum(q_K)
  K = q_K.size
  ns = np.atleast_1d(np.asarray(ns, np.int64))
  out = np.zeros((ns.size, K))
  order = np.argsort(-q_K)
  q1, q2 = q_K[order[0]], q_K[order[1]]
  if np.sum(q_K > 1e-12) <= 2 and not force_mc:
    e = majority_error(ns, q2, K) if q2 > 1e-12 else np.zeros(ns.size)
    out[:, order[0]] = 1.0 - e
    out[:, order[1]] += np.where(ns > 0, e, 0.0)
  else:
    doubt = ns <= 16 * (q1 + q2) / max(q1 - q2, 1e-12) ** 2
    out[~doubt, order[0]] = 1.0
    mc = np.nonzero(doubt & (ns > 0))[0]
    if mc.size:
      counts = np.random.default_rng(seed).multinomial(ns[mc, None], q_K, size=(mc.size, num_samples))
      top = counts == counts.max(-1, keepdims=True)
      out[mc] = (top / top.sum(-1, keepdims=True)).mean(1)  # a tie splits its vote uniformly
  out[ns == 0] = 1.0 / K
  return out


def confusion(s: Setting, prototypes_KxD: Any, num_samples: int = 200_000, seed: int = 0) -> np.ndarray:
  """M[c, r] = P(argmin_r' ‖μ_c + σz − μ_r'‖² = r), by Monte-Carlo over z ~ N(0, I).

  The region depends on z only through u = (<z, μ_r>)_r ~ N(0, μμᵀ), so u is drawn directly (K dimensions, not
  d). Many samples, because rare-class regions are polluted by common classes at rates M[c, r]·w_c/w_r: at
  σ = 0.2 an M of ~1e-4 matters. (The pairwise half-space formula Φ(−‖μ_c − μ_r‖/2σ) is no substitute: the
  competitors' events are strongly correlated, and it overstates M[c, r] by ~50% at σ = 0.4.)
  """
  mu = np.asarray(prototypes_KxD, np.float64)
  K = mu.shape[0]
  if s.input_noise == 0:
    return np.eye(K)
  gram = mu @ mu.T
  chol = np.linalg.cholesky(gram + 1e-12 * np.eye(K))
  rng = np.random.default_rng(seed)
  out = np.zeros((K, K))
  chunk = 100_000
  for c in range(K):
    for start in range(0, num_samples, chunk):
      u = rng.standard_normal((min(chunk, num_samples - start), K), np.float32) @ chol.T.astype(np.float32)
      score = (2 * gram[c] - np.diag(gram)).astype(np.float32) + 2 * s.input_noise * u   # 2<x, μ_r> − ‖μ_r‖²
      out[c] += np.bincount(np.argmax(score, -1), minlength=K)
  return out / num_samples


def region_mix(s: Setting, conf_KxK: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(π_r, ρ_r(c) [R, K], q_r(y) [R, K]): visit rates, class mix and training-label distribution per region."""
  joint_KxR = s.weights()[:, None] * conf_KxK
  pi_R = joint_KxR.sum(0)
  rho_RxK = (joint_KxR / np.maximum(pi_R, 1e-300)).T
  return pi_R, rho_RxK, rho_RxK @ s.label_noise_matrix()


def context_label_distribution(s: Setting, p_relevant: float | None = None) -> np.ndarray:
  """U[q, v] = P(the clean label of the single context item is v | query class q), L = 1."""
  p = s.p_relevant if p_relevant is None else p_relevant
  w = s.weights()
  u = (1 - p) * w[None, :] * (1 + w[:, None])
  np.fill_diagonal(u, p + (1 - p) * w**2)
  return u


def ic_error_closed_form(s: Setting, p_relevant: float | None = None, target: str = "clean") -> np.ndarray:
  """e_h(q) for L = 1 and every class q [K], against clean targets or noisy training targets."""
  assert s.context_len == 1, "the closed form is for L = 1; use ic_error_mc"
  u, eps, K = context_label_distribution(s, p_relevant), s.label_noise, s.num_classes
  q = np.arange(K)
  a, before, after = u[q, q], u[q, (q - 1) % K], u[q, (q + 1) % K]
  if target == "clean":
    return 1.0 - ((1 - eps) * a + eps * before)
  return 1.0 - (((1 - eps) ** 2 + eps**2) * a + eps * (1 - eps) * (before + after))


def ic_error_mc(s: Setting, prototypes_KxD: Any, tau: float = 1.0, p_relevant: float | None = None,
                target: str = "clean", num_samples: int = 20_000, seed: int = 0) -> np.ndarray:
  """e_h(q) [K] by Monte-Carlo through the task's sampler, queries uniform within each group."""
  p = s.p_relevant if p_relevant is None else p_relevant
  mu = jnp.asarray(prototypes_KxD, jnp.float32)
  errors, counts = np.zeros(s.num_classes), np.zeros(s.num_classes)
  rng = np.random.default_rng(seed)
  for i, group in enumerate(("high", "low")):
    # Clean targets from the sampler (errors are tallied by the query's class); training-target noise added here.
    cell = stylized.cell(s, p, -1, group, flip=False, noisy_target=False)
    key = jax.random.fold_in(jax.random.key(seed), i)
    b = jax.jit(stylized.sample_batch, static_argnums=3)(key, mu, jnp.arange(num_samples, dtype=jnp.uint32),
                                                          s.spec(), cell)
    x, ctx, y = (np.asarray(b[k]) for k in ("x", "ctx_labels", "target"))
    logits = -np.sum((x[:, :-1] - x[:, -1:]) ** 2, -1) / tau
    weight = np.exp(logits - logits.max(-1, keepdims=True))
    vote = np.zeros((num_samples, s.num_classes))
    np.add.at(vote, (np.arange(num_samples)[:, None], ctx), weight / weight.sum(-1, keepdims=True))
    noisy = rng.random(num_samples) < (s.label_noise if target == "train" else 0.0)
    wrong = np.argmax(vote, -1) != np.where(noisy, (y + 1) % s.num_classes, y)
    errors += np.bincount(y, weights=wrong, minlength=s.num_classes)
    counts += np.bincount(y, minlength=s.num_classes)
  return errors / np.maximum(counts, 1)


def ic_error(s: Setting, prototypes_KxD: Any = None, tau: float = 1.0, p_relevant: float | None = None,
             target: str = "clean", num_samples: int = 20_000, seed: int = 0) -> np.ndarray:
  """e_h per class: the closed form for L = 1, Monte-Carlo otherwise."""
  if s.context_len == 1:
    return ic_error_closed_form(s, p_relevant, target)
  return ic_error_mc(s, prototypes_KxD, tau, p_relevant, target, num_samples, seed)


def visit_grid(max_visits: int) -> np.ndarray:
  """Every n up to 64, then geometric: vote distributions change fast at small n and slowly after."""
  return np.unique(np.concatenate([np.arange(65), np.geomspace(64, max_visits, 48).astype(np.int64)]))


def switch_visits(e_g_n: np.ndarray, e_h: float, rule: str) -> float:
  """The visit count at which region's gate switches to g (module docstring), or inf.

  e_g_n[k] is g's error after k visits, k = 0..n_max; beyond n_max it is taken as constant at e_g_n[-1].
  """
  if rule == "instant":
    hit = np.nonzero(e_g_n <= e_h)[0]
    return float(hit[0]) if hit.size else float("inf")
  n_max = len(e_g_n)
  if rule == "median":
    hit = _median_crossing(e_g_n, e_h)
    if hit is not None:
      return float(hit)
  else:
    n = np.arange(1, n_max + 1)
    hit = np.nonzero(np.cumsum(e_g_n) - n * e_h <= 0)[0]
    if hit.size:
      return float(n[hit[0]])
  mean_gap, last = np.sum(e_g_n) - n_max * e_h, e_g_n[-1]
  if last >= e_h:
    return float("inf")
  return float(n_max + np.ceil(mean_gap / (e_h - last) - 1e-9))  # E G(n_max + m) = mean_gap − m·(e_h − last) ≤ 0


def _median_crossing(e_g_n: np.ndarray, e_h: float) -> int | None:
  """First n with P(G(n) < 0) + ½P(G(n) = 0) ≥ ½, by convolving the per-visit gap distributions."""
  n_max = len(e_g_n)
  center = n_max + 1                 # pmf[center + g] = P(G = g); one cell of padding on each side
  pmf = np.zeros(2 * n_max + 3)
  pmf[center] = 1.0
  for k, e_g in enumerate(e_g_n):
    up, down = e_g * (1 - e_h), (1 - e_g) * e_h    # the gap of visit k is +1, −1 or 0
    a, b = center - k - 1, center + k + 2          # G(k + 1) lies in [−k − 1, k + 1]
    pmf[a:b] = (1 - up - down) * pmf[a:b] + up * pmf[a - 1:b - 1] + down * pmf[a + 1:b + 1]
    if pmf[:center].sum() + 0.5 * pmf[center] >= 0.5:
      return k + 1
  return None


def group_switch(n_star_R: np.ndarray, conf_KxK: np.ndarray, ids: np.ndarray) -> float:
  """The smallest N at which half of the group's queries land in regions already switched (inf if never)."""
  share_R = conf_KxK[ids].mean(0)          # where the group's queries land
  for n in np.sort(n_star_R[np.isfinite(n_star_R)]):
    if share_R[n_star_R <= n].sum() >= 0.5:
      return float(n)
  return float("inf")


def predict(s: Setting, prototypes_KxD: Any, num_sequences: Any = (), tau: float = 1.0, max_visits: int = 4096,
            num_samples: int = 20_000, confusion_samples: int = 300_000, seed: int = 0) -> dict:
  """Per group: the predicted switch N for each rule, and clean g/h errors (floors and curves against N).

  Returns {group: dict(switch={rule: N*}, region_switch={rule: N* of each of the group's regions},
                        ic_error=e_h, iw_floor=e_g(∞), weight=w_c, curve=dict(N=..., iw_error=..., ic_error=...))},
  errors averaged over the group's classes.
  """
  K = s.num_classes
  conf = confusion(s, prototypes_KxD, confusion_samples, seed)
  pi_R, rho_RxK, q_RxK = region_mix(s, conf)
  e_h_clean = ic_error(s, prototypes_KxD, tau, None, "clean", num_samples, seed)
  e_h_region = rho_RxK @ ic_error(s, prototypes_KxD, tau, None, "train", num_samples, seed)
  grid = visit_grid(max_visits)
  all_n = np.arange(max_visits + 1)
  # vote[r][n, y]: row r's prediction distribution after n visits, on every integer n (interpolated on the grid)
  vote = [np.stack([np.interp(all_n, grid, v) for v in vote_distribution(q_RxK[r], grid, seed=seed + r).T], -1)
          for r in range(K)]
  e_g_region = np.stack([1.0 - vote[r] @ q_RxK[r] for r in range(K)])          # [R, n]
  ns = np.atleast_1d(np.asarray(num_sequences, np.int64))
  e_g_clean = np.zeros((ns.size, K))
  for i, N in enumerate(ns):
    for r in range(K):
      n = np.arange(0, min(int(N), max_visits) + 1)
      pmf = stats.binom.pmf(n, N, pi_R[r])
      pmf[-1] += max(0.0, 1.0 - pmf.sum())  # mass beyond max_visits: the vote has converged there
      wrong_K = 1.0 - pmf @ vote[r][: n.size]  # P(ŷ_r ≠ c) for every class c
      e_g_clean[i] += conf[:, r] * wrong_K
  floor_K = 1.0 - np.sum(conf * np.stack([v[-1] for v in vote], 1), 1)   # Σ_r M[c, r]·P(ŷ_r(∞) = c)
  n_star = {rule: np.array([switch_visits(e_g_region[r], e_h_region[r], rule) / pi_R[r] for r in range(K)])
            for rule in RULES}
  w = s.weights()
  out = {}
  for name in GROUPS:
    ids = s.group(name)
    h = float(e_h_clean[ids].mean())
    out[name] = dict(switch={rule: group_switch(n_star[rule], conf, ids) for rule in RULES},
                     region_switch={rule: n_star[rule][ids] for rule in RULES},
                     ic_error=h, iw_floor=float(floor_K[ids].mean()), weight=float(w[ids].mean()),
                     curve=dict(N=ns, iw_error=e_g_clean[:, ids].mean(-1), ic_error=np.full(ns.shape, h)))
  return out
