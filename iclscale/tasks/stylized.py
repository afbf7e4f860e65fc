"""The stylized ICL/IWL distribution of Chan et al. 2024 (`iclr_2025` semantics), as a pure function of (seed, index).

Facts (Chan et al. 2024 §2, and their code: chanb/simple_icl, branch iclr_2025, src/datasets/synthetic.py):
K = |C_H| + |C_L| classes with unit-norm Gaussian prototypes; the query class is drawn from w (p_high spread over
C_H, the rest over C_L); the L context labels are iid from w; r ~ Binomial(L, p_relevant) slots hold the query
class (existing matches count); with r = 0 every slot equal to the query class is re-drawn once; inputs are
prototype + σ·noise; OOBD shifts every label cyclically inside its frequency group; label noise moves a label to
(y+1) mod K.

Two upstream behaviours are options rather than defaults (the README lists every difference):
- relevance_overwrite: when more slots match by chance than r, upstream's replacement count r - matches is
  negative and, used as a slice bound, overwrites all but that many non-matching slots (L >= 4 only); we clamp
  the count at 0 unless relevance_overwrite='upstream'.
- eval_sampling: upstream builds sequence i from a generator seeded by i alone and evaluates on indices drawn
  from [0, 5 x num_examples), so evaluation sequences repeat training ones (all of them once N >= 5000). By
  default each evaluation set has its own random stream; eval_sampling='upstream' draws the evaluation sets from
  the training stream at such indices instead.
Evaluation targets are noise-free by default, so error measures the predictor rather than the label-noise floor
(eval_target_noise=True applies label noise to them as upstream does).
"""
from __future__ import annotations

import dataclasses
import functools
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from iclscale import config as config_lib
from iclscale import pipeline

DEFAULTS = dict(
    name="stylized",
    num_high=5,          # |C_H|: common classes, ids 0..num_high-1
    num_low=5,           # |C_L|: rare classes, the next num_low ids
    p_high=0.9,          # total probability mass of C_H under w
    p_relevant=0.9,      # per-slot probability that a context slot holds the query class (Binomial relevance)
    num_relevant=-1,     # >= 0 fixes r instead of drawing it (the fixed-r sweep); -1 draws r ~ Binomial(L, p)
    input_noise=0.2,     # σ of the Gaussian input noise around each prototype
    label_noise=0.0,     # ε: probability that a label becomes (y+1) mod K
    context_len=1,       # L: context pairs before the query
    dim=64,              # d: input dimension (equals the model width with the identity input encoder)
    dataset_size=1024,   # N distinct training sequences, sampled uniformly with replacement; 0 = infinite
    relevance_overwrite="clamp",  # matches > r: clamp the overwrite count at 0 | upstream (its negative slice)
    eval_sampling="fresh",        # fresh: own stream per eval set | upstream: training stream, indices < 5 x size
    eval_target_noise=False,      # apply label noise to evaluation targets too (upstream does)
)


# The fields a population's members may vary (contracts.TaskSpec.member_fields): each is a traced value of `cell`
# or an index bound, never a shape, so one compiled step serves every member.
MEMBER_FIELDS = ("dataset_size", "p_relevant", "num_relevant", "p_high", "input_noise", "label_noise")


@dataclasses.dataclass(frozen=True)
class Spec:
  """The static shape of the distribution; the values (probabilities, noise) live in `cell`, traced."""
  num_high: int
  num_low: int
  context_len: int
  upstream_overwrite: bool = False   # relevance_overwrite == "upstream"

  @property
  def num_classes(self) -> int:
    return self.num_high + self.num_low


CONDITIONING = {"none": 0, "high": 1, "low": 2}  # query ~ w; uniform on C_H; uniform on C_L


def class_weights(num_high: int, num_low: int, p_high: float) -> np.ndarray:
  return np.concatenate([np.full(num_high, p_high / num_high), np.full(num_low, (1.0 - p_high) / num_low)])


def cell(cfg, p_relevant: float, num_relevant: int = -1, conditioning: str = "none", flip: bool = False,
         noisy_target: bool = True) -> dict[str, jax.Array]:
  """The parameters of one set (or of training) as arrays, so every evaluation cell and every population member
  shares one compiled sampler: the task config's class weights and noise levels, and the set's relevance.

  num_relevant >= 0 fixes r; flip is the OOBD relabeling; noisy_target applies label noise to the query target
  (training does, evaluation does not).
  """
  logw_K = jnp.log(jnp.asarray(class_weights(cfg.num_high, cfg.num_low, cfg.p_high), jnp.float32))
  return dict(p_relevant=jnp.float32(p_relevant), num_relevant=jnp.int32(num_relevant),
              conditioning=jnp.int32(CONDITIONING[conditioning]), flip=jnp.bool_(flip),
              noisy_target=jnp.bool_(noisy_target), logw=logw_K,
              input_noise=jnp.float32(cfg.input_noise), label_noise=jnp.float32(cfg.label_noise))


def validate(cfg) -> None:
  w = "task"
  for f in ("num_high", "num_low", "context_len", "dim"):
    config_lib.check_positive(cfg, f, w)
  for f in ("p_high", "p_relevant", "label_noise"):
    config_lib.check_prob(cfg, f, w)
  config_lib.check(0.0 < cfg.p_high < 1.0, "task.p_high", f"must lie strictly between 0 and 1, got {cfg.p_high}")
  config_lib.check(cfg.p_high / cfg.num_high >= (1 - cfg.p_high) / cfg.num_low, "task.p_high",
                   "a common class must be at least as likely as a rare one: p_high/|C_H| >= (1-p_high)/|C_L|")
  config_lib.check_positive(cfg, "input_noise", w, allow_zero=True)
  config_lib.check(-1 <= cfg.num_relevant <= cfg.context_len, "task.num_relevant",
                   f"must be -1 (Binomial) or in [0, context_len={cfg.context_len}], got {cfg.num_relevant}")
  config_lib.check(cfg.dataset_size == 0 or cfg.dataset_size >= cfg.num_high + cfg.num_low, "task.dataset_size",
                   f"must be 0 (infinite) or at least the number of classes, got {cfg.dataset_size}")
  config_lib.check_one_of(cfg, "relevance_overwrite", w, ("clamp", "upstream"))
  config_lib.check_one_of(cfg, "eval_sampling", w, ("fresh", "upstream"))
  config_lib.check(isinstance(cfg.eval_target_noise, bool), "task.eval_target_noise",
                   f"must be true or false, got {cfg.eval_target_noise!r}")


def input_shape(cfg) -> tuple[int, ...]:
  return (cfg.dim,)


def prototypes(key: jax.Array, num_classes: int, dim: int) -> jax.Array:
  mu_KxD = jax.random.normal(key, (num_classes, dim))
  return mu_KxD / jnp.linalg.norm(mu_KxD, axis=-1, keepdims=True)


def flip_labels(y: jax.Array, num_high: int, num_low: int) -> jax.Array:
  """OOBD relabeling: a cyclic shift inside each frequency group, so no trained class->label map survives."""
  return jnp.where(y < num_high, (y + 1) % num_high, num_high + (y - num_high + 1) % num_low)


def sample_sequence(key: jax.Array, mu_KxD: jax.Array, spec: Spec, c: dict) -> dict[str, jax.Array]:
  L, K, nH, nL = spec.context_len, spec.num_classes, spec.num_high, spec.num_low
  logw_K = c["logw"]
  k_q, k_u, k_ctx, k_rel, k_pick, k_redraw, k_x, k_noise = jax.random.split(key, 8)

  u = jax.random.uniform(k_u)
  y_q = jnp.select([c["conditioning"] == 1, c["conditioning"] == 2],
                   [jnp.floor(u * nH), nH + jnp.floor(u * nL)],
                   jax.random.categorical(k_q, logw_K)).astype(jnp.int32)
  ctx_L = jax.random.categorical(k_ctx, logw_K, shape=(L,))

  r = jnp.where(c["num_relevant"] >= 0, c["num_relevant"],
                jnp.sum(jax.random.uniform(k_rel, (L,)) < c["p_relevant"]))
  match_L = ctx_L == y_q
  need = r - jnp.sum(match_L)
  if spec.upstream_overwrite:  # a negative count n as a slice bound keeps all but |n| of the L - matches slots
    need = jnp.where(need >= 0, need, L - jnp.sum(match_L) + need)
  need = jnp.maximum(need, 0)
  # Overwrite `need` non-matching slots chosen uniformly at random: rank random scores, matches ranked last.
  score_L = jnp.where(match_L, jnp.inf, jax.random.uniform(k_pick, (L,)))
  rank_L = jnp.argsort(jnp.argsort(score_L))
  relevant_L = jnp.where((rank_L < need) & ~match_L, y_q, ctx_L)
  irrelevant_L = jnp.where(match_L, jax.random.categorical(k_redraw, logw_K, shape=(L,)), ctx_L)
  ctx_L = jnp.where(r > 0, relevant_L, irrelevant_L)

  y_S = jnp.concatenate([ctx_L, y_q[None]])                      # S = L + 1 items, query last
  x_SxD = mu_KxD[y_S] + c["input_noise"] * jax.random.normal(k_x, (L + 1, mu_KxD.shape[-1]))
  has_query = jnp.any(ctx_L == y_q)
  y_S = jnp.where(c["flip"], flip_labels(y_S, nH, nL), y_S)
  noisy_S = jax.random.uniform(k_noise, (L + 1,)) < c["label_noise"]
  noisy_S = noisy_S.at[-1].set(noisy_S[-1] & c["noisy_target"])
  y_S = jnp.where(noisy_S, (y_S + 1) % K, y_S)
  return dict(x=x_SxD, ctx_labels=y_S[:-1], target=y_S[-1], context_has_query=has_query)


def sample_batch(key: jax.Array, mu_KxD: jax.Array, indices_B: jax.Array, spec: Spec, c: dict) -> dict:
  keys_B = pipeline.index_keys(key, indices_B)  # [B] or [B, 2] (hi, lo): see iclscale/pipeline.py
  return jax.vmap(sample_sequence, (0, None, None, None))(keys_B, mu_KxD, spec, c)


def stream_key(seed: int, name: str) -> jax.Array:
  """An independent random stream per named set, stable across runs and Python versions."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


GRID_FLIPS = {"ibd": False, "oobd": True}
GRID_RELEVANCE = ("default", "relevant", "irrelevant")
GRID_GROUPS = {"all": "none", "C_H": "high", "C_L": "low"}


class StylizedTask:
  """Training sequences for step data and the IBD/OOBD × relevance × class-group evaluation grid."""

  def __init__(self, cfg: ml_collections.ConfigDict, seed: int):
    self.cfg = cfg
    self.seed = seed
    self.spec = Spec(cfg.num_high, cfg.num_low, cfg.context_len, cfg.relevance_overwrite == "upstream")
    self.num_classes = self.spec.num_classes
    self.dataset_size = cfg.dataset_size or None
    # Prototypes depend on the seed only, so training and every evaluation set share them.
    self.arrays = dict(prototypes=prototypes(stream_key(seed, "prototypes"), self.num_classes, cfg.dim),
                       train_key=jax.random.key_data(stream_key(seed, "train")),
                       train_cell=cell(cfg, cfg.p_relevant, cfg.num_relevant))

  def batch(self, arrays: dict, indices_B: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    """Training sequences `indices_B`: a pure function of (seed, index), run on the device (any step)."""
    del step
    key = jax.random.wrap_key_data(arrays["train_key"])
    return sample_batch(key, arrays["prototypes"], indices_B, self.spec, arrays["train_cell"])

  def grid_cell(self, flip: str, relevance: str, group: str) -> dict[str, jax.Array]:
    p, r = self.cfg.p_relevant, self.cfg.num_relevant
    if relevance != "default":  # the baselines override r: every slot relevant, or none
      p, r = (1.0 if relevance == "relevant" else 0.0), -1
    return cell(self.cfg, p, r, GRID_GROUPS[group], GRID_FLIPS[flip], noisy_target=self.cfg.eval_target_noise)

  def eval_indices(self, num_examples: int) -> jax.Array:
    """Sequence indices of every evaluation set: 0..n-1 of its own stream, or (eval_sampling='upstream') n draws
    with replacement from [0, 5n) of the training stream, the same draws for every set as upstream's
    experiments/evaluation.py (dataset_size = 5 x num_eval_samples, one index stream per seed)."""
    if self.cfg.eval_sampling == "fresh":
      return jnp.arange(num_examples, dtype=jnp.uint32)
    return jax.random.randint(stream_key(self.seed, "eval/indices"), (num_examples,), 0, 5 * num_examples
                              ).astype(jnp.uint32)

  def eval_sets(self, kind: str, num_examples: int) -> dict[str, dict[str, jax.Array]]:
    """The 18 IBD/OOBD grid sets, built in one compiled call; each from its own stream (never the training one)
    unless eval_sampling='upstream'."""
    if kind != "grid":
      raise ValueError(f"stylized task has no eval set kind {kind!r} (known: grid)")
    names = [f"{f}/{r}/{g}" for f in GRID_FLIPS for r in GRID_RELEVANCE for g in GRID_GROUPS]
    cells = jax.tree.map(lambda *xs: jnp.stack(xs), *[self.grid_cell(*n.split("/")) for n in names])
    if self.cfg.eval_sampling == "fresh":
      keys = jnp.stack([jax.random.key_data(stream_key(self.seed, "eval/" + n)) for n in names])
    else:
      keys = jnp.stack([self.arrays["train_key"]] * len(names))
    stacked = build_sets(keys, cells, self.arrays["prototypes"], self.eval_indices(num_examples), self.spec)
    return {n: jax.tree.map(lambda x, i=i: x[i], stacked) for i, n in enumerate(names)}


@functools.partial(jax.jit, static_argnums=4)
def build_sets(keys_SxK, cells, mu_KxD, indices_N, spec: Spec) -> dict:
  """Sets [S, N, ...] from stacked keys and cells: compiled once per spec and shape, so every run and every
  population member in a process shares the program (the sampler's sort-based slot choice is slow to compile)."""
  return jax.vmap(lambda k, c: sample_batch(jax.random.wrap_key_data(k), mu_KxD, indices_N, spec, c))(keys_SxK,
                                                                                                     cells)
