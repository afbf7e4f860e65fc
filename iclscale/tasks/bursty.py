"""Bursty few-shot sequences over an exemplar table (Chan et al. 2022's generator, Singh et al. 2023's setting).

Facts (Chan et al. 2022's generator as Singh et al. 2023 ran it: google-deepmind/emergent_in_context_learning,
datasets/data_generators.py): classes are split by a fixed permutation (numpy rng 1337) into rare, common and
holdout (holdout last, never trained on); each class has a fixed label = its position in that permuted order; the
training class weights are Zipf w ∝ 1/j^a with j running n..1 over the permuted training classes. A bursty
sequence (probability p_bursty) holds `shots` exemplars of each of `ways` classes drawn without replacement from
the weights, the query from one of them, and the remaining context slots iid; a non-bursty one is all iid. Context
items are shuffled; within a sequence a class's exemplars are distinct (upstream exemplars='all').

Everything is a pure function of (seed, index) on the device. One sampler serves training and every evaluation set:
what differs between them (pool, shots, support, relabeling) is a traced `cell`, so it compiles once.

Items come from a table in task.arrays, never a jit constant: Omniglot images stay uint8 [C, E, H, W] and are
converted to float with pixel noise on the device; token embeddings / synthetic vectors are float [C, E, D].
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
    name="bursty",
    dataset="synthetic",      # exemplar table: omniglot | token_embeddings | synthetic (random vectors, for tests)
    image_size=105,           # omniglot: 105 (native) or 28 px
    augment=False,            # omniglot: x8 classes by flip x rot90 (variants stay together in the split)
    token_classes=1600,       # token_embeddings: classes of the cached k-means table (datasets/token_embeddings.py)
    token_exemplars=10,       # token_embeddings: exemplars (member tokens) per class
    synthetic_classes=64,     # synthetic: number of classes
    synthetic_exemplars=8,    # synthetic: exemplars per class
    synthetic_dim=16,         # synthetic: vector dimension
    synthetic_spread=0.1,     # synthetic: exemplar = unit prototype + spread * N(0, I/dim) (within-class variation)
    table_seed=0,             # synthetic: the table is data, fixed by this seed and not by the run seed
    noise=0.0,                # σ of Gaussian noise added to every item on the device (pixels in [0, 1] for images)
    num_holdout=10,           # holdout classes (last of the permutation; ICL evaluation only). x8 when augmented
    num_common=10,            # common classes (before the holdout); the rest are rare. x8 when augmented
    zipf_exponent=0.0,        # a: training class weights ∝ 1/j^a, j = n..1 in permuted order (0 = uniform)
    p_bursty=0.9,             # probability that a training sequence is bursty (DeepMind default 0.9; icl-dynamics 1)
    bursty_shots=3,           # exemplars of each burst class in a bursty training sequence
    ways=2,                   # classes per burst (and per few-shot evaluation sequence)
    fewshot_shots=4,          # shots per class in the few-shot evaluation sets (ways * shots <= context_len)
    context_len=8,            # L: exemplar-label pairs before the query (8 -> 17 tokens)
    num_labels=0,             # 0: one fixed label per class (upstream 'ordered'); n > 0: label = permuted position mod
                              # n, so many classes share each label (a cheap CPU variant: the label read-out is
                              # learned from every sequence, while memorizing class -> label stays per class)
    exemplars="all",          # single: exemplar 0 only; all: every exemplar; separated: train on the first E-h,
                              # evaluate on the last h (held-out drawings of trained classes)
    heldout_exemplars=5,      # h of exemplars='separated'
)

DATASETS = ("omniglot", "token_embeddings", "synthetic")
PERMUTATION_SEED = 1337  # upstream's fixed class permutation: the holdout set is the same in every setting
_AUGMENT_GROUP = 8       # omniglot.NUM_VARIANTS; kept literal so importing the task does not import Pillow


def validate(cfg) -> None:
  w = "task"
  config_lib.check_one_of(cfg, "dataset", w, DATASETS)
  config_lib.check_one_of(cfg, "image_size", w, (105, 28))
  config_lib.check_one_of(cfg, "exemplars", w, ("single", "all", "separated"))
  for f in ("token_classes", "token_exemplars", "synthetic_classes", "synthetic_exemplars", "synthetic_dim",
            "num_holdout", "bursty_shots", "ways", "fewshot_shots", "context_len", "heldout_exemplars"):
    config_lib.check_positive(cfg, f, w)
  for f in ("synthetic_spread", "noise", "num_common", "zipf_exponent", "table_seed"):
    config_lib.check_positive(cfg, f, w, allow_zero=True)
  config_lib.check(cfg.num_labels == 0 or cfg.num_labels >= cfg.ways, "task.num_labels",
                   f"must be 0 (one per class) or at least ways={cfg.ways}, got {cfg.num_labels}")
  config_lib.check_prob(cfg, "p_bursty", w)
  config_lib.check(cfg.ways >= 2, "task.ways", f"a burst needs at least 2 classes, got {cfg.ways}")
  config_lib.check(cfg.ways * cfg.bursty_shots <= cfg.context_len, "task.bursty_shots",
                   f"ways*bursty_shots = {cfg.ways * cfg.bursty_shots} exceeds context_len {cfg.context_len}")
  config_lib.check(cfg.ways * cfg.fewshot_shots <= cfg.context_len, "task.fewshot_shots",
                   f"ways*fewshot_shots = {cfg.ways * cfg.fewshot_shots} exceeds context_len {cfg.context_len}")
  config_lib.check(cfg.num_holdout >= cfg.ways, "task.num_holdout",
                   f"the few-shot holdout set needs at least ways={cfg.ways} classes, got {cfg.num_holdout}")
  config_lib.check(not cfg.augment or cfg.dataset == "omniglot", "task.augment", "only the omniglot table augments")
  total, exemplars = table_size(cfg)
  group = _AUGMENT_GROUP if cfg.augment else 1
  train = total - group * (cfg.num_holdout + cfg.num_common)
  config_lib.check(train > cfg.context_len, "task.num_holdout",
                   f"only {train} rare classes remain of {total}; need more than context_len={cfg.context_len}")
  if cfg.exemplars == "separated":
    config_lib.check(cfg.heldout_exemplars < exemplars, "task.heldout_exemplars",
                     f"must be < the {exemplars} exemplars per class")


def table_size(cfg) -> tuple[int, int]:
  """(classes, exemplars per class) of the configured table, known without loading it."""
  if cfg.dataset == "omniglot":
    return 1623 * (_AUGMENT_GROUP if cfg.augment else 1), 20
  if cfg.dataset == "token_embeddings":
    return cfg.token_classes, cfg.token_exemplars
  return cfg.synthetic_classes, cfg.synthetic_exemplars


def input_shape(cfg) -> tuple[int, ...]:
  if cfg.dataset == "omniglot":
    return (cfg.image_size, cfg.image_size)
  if cfg.dataset == "token_embeddings":
    from iclscale.datasets import token_embeddings  # pylint: disable=g-import-not-at-top
    return (token_embeddings.EMBED_DIM,)
  return (cfg.synthetic_dim,)


def synthetic_table(num_classes: int, num_exemplars: int, dim: int, spread: float, seed: int) -> np.ndarray:
  """[C, E, D] float32: unit-norm class prototypes plus isotropic within-class variation."""
  rng = np.random.default_rng([seed, 0x5B7])
  mu_CxD = rng.standard_normal((num_classes, dim))
  mu_CxD /= np.linalg.norm(mu_CxD, axis=-1, keepdims=True)
  eps_CxExD = rng.standard_normal((num_classes, num_exemplars, dim)) / np.sqrt(dim)
  return (mu_CxD[:, None] + spread * eps_CxExD).astype(np.float32)


def load_table(cfg) -> np.ndarray:
  """The exemplar table on the host: uint8 [C, E, H, W] (255 = white) or float32 [C, E, D]."""
  if cfg.dataset == "omniglot":
    from iclscale.datasets import omniglot  # pylint: disable=g-import-not-at-top
    return omniglot.load_omniglot(image_size=cfg.image_size, augment=cfg.augment, dtype="uint8").images
  if cfg.dataset == "token_embeddings":
    from iclscale.datasets import token_embeddings  # pylint: disable=g-import-not-at-top
    return token_embeddings.load(cfg.token_classes, cfg.token_exemplars)
  return synthetic_table(cfg.synthetic_classes, cfg.synthetic_exemplars, cfg.synthetic_dim, cfg.synthetic_spread,
                         cfg.table_seed)


@dataclasses.dataclass(frozen=True)
class Split:
  """The class split. order[j] is the class with label j: rare labels first, then common, then holdout."""
  order: np.ndarray       # [C] class ids in permuted order
  num_rare: int
  num_common: int
  num_holdout: int

  @property
  def num_train(self) -> int:
    return self.num_rare + self.num_common

  def label_of(self, num_labels: int = 0) -> np.ndarray:
    """[C] fixed label of each class id (upstream labeling 'ordered'), modulo num_labels when > 0."""
    out = np.empty_like(self.order)
    out[self.order] = np.arange(len(self.order))
    return out % num_labels if num_labels else out

  def train_log_weights(self, exponent: float) -> np.ndarray:
    """[C] log Zipf weights by class id: 1/j^a with j = n..1 over training labels, -inf on the holdout."""
    n = self.num_train
    logw_N = -exponent * np.log(np.arange(n, 0, -1, dtype=np.float64))
    logw_N -= np.logaddexp.reduce(logw_N)
    out = np.full(len(self.order), -np.inf)
    out[self.order[:n]] = logw_N
    return out.astype(np.float32)

  def holdout_log_weights(self) -> np.ndarray:
    out = np.full(len(self.order), -np.inf, np.float32)
    out[self.order[self.num_train:]] = -np.log(self.num_holdout)
    return out


def make_split(num_classes: int, num_common: int, num_holdout: int, group: int = 1) -> Split:
  """Permute blocks of `group` adjacent classes (augmentations of one character) with rng 1337, then split."""
  blocks = np.random.default_rng(PERMUTATION_SEED).permutation(num_classes // group)
  order = (blocks[:, None] * group + np.arange(group)[None]).reshape(-1).astype(np.int32)
  nc, nh = num_common * group, num_holdout * group
  return Split(order, num_classes - nc - nh, nc, nh)


# Per-set parameters (traced), so training and every evaluation set share one compiled sampler.
POOLS = {"train": 0, "holdout": 1}
RELABEL = {"fixed": 0, "ways": 1, "flip": 2}  # true labels; burst classes -> 0..ways-1; burst labels swapped


def cell(p_bursty: float, shots: int, pool: str = "train", no_support: bool = False, relabel: str = "fixed",
         copy_label: bool = False, heldout_exemplars: bool = False) -> dict[str, jax.Array]:
  """no_support: the query class never appears in the context (IWL); copy_label: the query's true label is put on
  one random (wrong) context item (CIWL); heldout_exemplars: items use the held-out exemplars of their class."""
  return dict(p_bursty=jnp.float32(p_bursty), shots=jnp.int32(shots), pool=jnp.int32(POOLS[pool]),
              no_support=jnp.bool_(no_support), relabel=jnp.int32(RELABEL[relabel]),
              copy_label=jnp.bool_(copy_label), heldout=jnp.bool_(heldout_exemplars))


@dataclasses.dataclass(frozen=True)
class Spec:
  context_len: int
  ways: int
  noise: float
  exemplar_ranges: tuple[tuple[int, int], tuple[int, int]]  # (start, count) of the train and held-out exemplars


def exemplar_ranges(mode: str, num_exemplars: int, num_heldout: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Contiguous exemplar ranges, as omniglot.exemplar_indices: single -> 0 (held-out E-1), all -> 0..E-1."""
  if mode == "single":
    return (0, 1), (num_exemplars - 1, 1)
  if mode == "all":
    return (0, num_exemplars), (0, num_exemplars)
  return (0, num_exemplars - num_heldout), (num_exemplars - num_heldout, num_heldout)


def draw(u: jax.Array, cdf_C: jax.Array, excluded: jax.Array | None = None, w_C: jax.Array | None = None):
  """Inverse-CDF class draws for uniforms u [...]; classes in `excluded` [X] get zero mass (renormalized).

  One uniform per draw instead of a Gumbel per class: with thousands of classes the Gumbel/categorical draw
  dominated the step on CPU. side='right' never returns a zero-mass class (its CDF interval is empty).
  """
  if excluded is not None:
    idx_C = jnp.arange(cdf_C.shape[0])
    cdf_C = cdf_C - jnp.sum(jnp.where(idx_C[None] >= excluded[:, None], w_C[excluded][:, None], 0.0), 0)
  total = cdf_C[-1]
  t = jnp.minimum(u * total, jnp.nextafter(total, 0.0))
  return jnp.searchsorted(cdf_C, t, side="right").astype(jnp.int32)


def sample_sequence(key: jax.Array, arrays: dict, spec: Spec, c: dict) -> dict[str, jax.Array]:
  L, W = spec.context_len, spec.ways
  k_burst, k_bursty, k_q, k_ctx, k_way, k_perm, k_rel, k_copy, k_ex, k_noise = jax.random.split(key, 10)
  holdout = c["pool"] == 1
  w_C = jnp.where(holdout, arrays["holdout_w"], arrays["train_w"])
  cdf_C = jnp.where(holdout, arrays["holdout_cdf"], arrays["train_cdf"])

  # Burst classes: `ways` distinct classes drawn from the weights without replacement (sequential renormalized
  # draws). Unlike upstream's fewshot_holdout (get_fewshot_seq in datasets/data_generators.py draws with
  # replace=True) the few-shot classes are always distinct.
  u_burst_W = jax.random.uniform(k_burst, (W,))
  burst = [draw(u_burst_W[0], cdf_C)]
  for i in range(1, W):
    burst.append(draw(u_burst_W[i], cdf_C, jnp.stack(burst), w_C))
  burst_W = jnp.stack(burst)
  bursty = jax.random.uniform(k_bursty) < c["p_bursty"]
  way = jax.random.randint(k_way, (), 0, W)
  y_q = jnp.where(bursty, burst_W[way], draw(jax.random.uniform(k_q), cdf_C))
  # iid slots; with no_support the query class is excluded (renormalized), as upstream's get_no_support_seq.
  u_L = jax.random.uniform(k_ctx, (L,))
  iid_L = jnp.where(c["no_support"], draw(u_L, cdf_C, y_q[None], w_C), draw(u_L, cdf_C))
  slot_L = jnp.arange(L)
  burst_L = jnp.where(slot_L < W * c["shots"], burst_W[jnp.minimum(slot_L // c["shots"], W - 1)], iid_L)
  ctx_L = jax.random.permutation(k_perm, jnp.where(bursty, burst_L, iid_L))
  class_S = jnp.concatenate([ctx_L, y_q[None]]).astype(jnp.int32)

  # Labels: fixed per class, or per-sequence relabeling of the burst classes.
  label_S = arrays["label_of"][class_S]
  in_burst_SxW = class_S[:, None] == burst_W[None]
  way_S = jnp.argmax(in_burst_SxW, -1)
  is_burst_S = jnp.any(in_burst_SxW, -1)
  ways_labels_W = jax.random.permutation(k_rel, W)
  flip_labels_W = arrays["label_of"][jnp.roll(burst_W, -1)]
  relabeled_S = jnp.where(c["relabel"] == 1, ways_labels_W[way_S], flip_labels_W[way_S])
  label_S = jnp.where((c["relabel"] > 0) & is_burst_S, relabeled_S, label_S)
  copy_slot = jax.random.randint(k_copy, (), 0, L)
  label_S = jnp.where(c["copy_label"] & (jnp.arange(L + 1) == copy_slot), label_S[-1], label_S)

  # Exemplars: distinct within a class in one sequence: the k-th occurrence of a class takes exemplar
  # (offset + k) mod count, the offset drawn at the class's first occurrence.
  (tr_start, tr_count), (ho_start, ho_count) = spec.exemplar_ranges
  start, count = jnp.where(c["heldout"], ho_start, tr_start), jnp.where(c["heldout"], ho_count, tr_count)
  same_SxS = class_S[:, None] == class_S[None]
  rank_S = jnp.sum(jnp.tril(same_SxS, -1), -1)
  first_S = jnp.argmax(same_SxS, -1)
  offset_S = jax.random.randint(k_ex, (L + 1,), 0, count)[first_S]
  exemplar_S = start + (offset_S + rank_S) % count
  item_Sx = arrays["table"][class_S, exemplar_S]
  if item_Sx.dtype == jnp.uint8:
    item_Sx = item_Sx.astype(jnp.float32) / 255.0   # omniglot.to_float: white = 1
  if spec.noise:
    item_Sx = item_Sx + spec.noise * jax.random.normal(k_noise, item_Sx.shape)
  return dict(x=item_Sx, ctx_labels=label_S[:-1], target=label_S[-1], item_class=class_S)


def sample_batch(key: jax.Array, arrays: dict, indices_B: jax.Array, spec: Spec, c: dict) -> dict:
  keys_B = pipeline.index_keys(key, indices_B)  # [B] or [B, 2] (hi, lo): see iclscale/pipeline.py
  return jax.vmap(sample_sequence, (0, None, None, None))(keys_B, arrays, spec, c)


def stream_key(seed: int, name: str) -> jax.Array:
  """An independent random stream per named set (as tasks/stylized.py)."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


# The ICL/IWL evaluation sets: name -> (cell arguments, closed set). Closed-set accuracy restricts the argmax to the
# labels present in the context ('context': {0, 1} for the relabeled few-shot sets, the two swapped labels for flip)
# or to the training label range ('train').
EVAL_SETS = {
    "fewshot_holdout": (dict(shots="fewshot", pool="holdout", relabel="ways", p_bursty=1.0), "context"),  # ICL
    "fewshot_train": (dict(shots="fewshot", pool="train", relabel="ways", p_bursty=1.0), "context"),  # ICL vs IWL
    "no_support": (dict(shots="fewshot", pool="train", no_support=True, p_bursty=0.0), "train"),      # IWL
    "ciwl": (dict(shots="fewshot", pool="train", no_support=True, copy_label=True, p_bursty=0.0), "train"),
    "flip": (dict(shots="fewshot", pool="train", relabel="flip", p_bursty=1.0), "context"),
    "train_like": (dict(shots="bursty", pool="train", p_bursty=1.0), "train"),  # bursty training sequences
}


# The fields population members may vary (contracts.TaskSpec.member_fields): the training cell and the class weights
# are arrays, and the seed reaches only the training and evaluation keys (the table has its own table_seed).
MEMBER_FIELDS = ("p_bursty", "zipf_exponent")


@functools.lru_cache(maxsize=1)
def _shared_table(key: tuple) -> np.ndarray:
  """The last table loaded, by its defining fields: a population's members (and a study's runs in one process)
  share one host copy instead of loading a 2.9 GB Omniglot table per member."""
  return load_table(ml_collections.ConfigDict(dict(key)))


def table_key(cfg) -> tuple:
  fields = ("dataset", "image_size", "augment", "token_classes", "token_exemplars", "synthetic_classes",
            "synthetic_exemplars", "synthetic_dim", "synthetic_spread", "table_seed")
  return tuple((f, cfg[f]) for f in fields if f in cfg)


class BurstyTask:
  """Bursty training sequences and the ICL (few-shot holdout) / IWL (no support) / CIWL / flip evaluation sets."""

  def __init__(self, cfg: ml_collections.ConfigDict, seed: int, table: np.ndarray | None = None):
    self.cfg = cfg
    self.seed = seed
    table = _shared_table(table_key(cfg)) if table is None else table
    num_classes, num_exemplars = table.shape[:2]
    self.split = make_split(num_classes, cfg.num_common, cfg.num_holdout, _AUGMENT_GROUP if cfg.augment else 1)
    self.num_classes = cfg.num_labels or num_classes  # the model's output size
    self.dataset_size = None  # an infinite stream: step t reads fresh sequences
    self.spec = Spec(cfg.context_len, cfg.ways, float(cfg.noise),
                     exemplar_ranges(cfg.exemplars, num_exemplars, cfg.heldout_exemplars))
    train_w = np.exp(self.split.train_log_weights(cfg.zipf_exponent))
    holdout_w = np.exp(self.split.holdout_log_weights())
    self.arrays = dict(table=table, label_of=self.split.label_of(cfg.num_labels),
                       train_w=train_w, train_cdf=np.cumsum(train_w, dtype=np.float32),
                       holdout_w=holdout_w, holdout_cdf=np.cumsum(holdout_w, dtype=np.float32),
                       train_key=jax.random.key_data(stream_key(seed, "train")),
                       train_cell=cell(cfg.p_bursty, cfg.bursty_shots))

  def batch(self, arrays: dict, indices_B: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    """Training sequences `indices_B`: a pure function of (seed, index), run on the device (any step)."""
    del step
    key = jax.random.wrap_key_data(arrays["train_key"])
    return sample_batch(key, arrays, indices_B, self.spec, arrays["train_cell"])

  def eval_cell(self, name: str) -> dict[str, jax.Array]:
    kwargs = dict(EVAL_SETS[name][0])
    kwargs["shots"] = self.cfg.fewshot_shots if kwargs["shots"] == "fewshot" else self.cfg.bursty_shots
    return cell(heldout_exemplars=self.cfg.exemplars == "separated", **kwargs)

  def eval_sets(self, kind: str, num_examples: int) -> dict[str, dict[str, jax.Array]]:
    """Every ICL/IWL set from its own stream (never the training one), built in one compiled call.

    Each set carries `closed_context` [N] (closed set = labels in the context) and `closed_hi` [N] (else the
    labels 0..closed_hi-1) for closed-set accuracy.
    """
    if kind != "icl_iwl":
      raise ValueError(f"bursty task has no eval set kind {kind!r} (known: icl_iwl)")
    names = list(EVAL_SETS)
    cells = jax.tree.map(lambda *xs: jnp.stack(xs), *[self.eval_cell(n) for n in names])
    keys = jnp.stack([jax.random.key_data(stream_key(self.seed, "eval/" + n)) for n in names])
    stacked = build_sets(keys, cells, self.arrays, jnp.arange(num_examples, dtype=jnp.uint32), self.spec)
    out = {}
    for i, n in enumerate(names):
      s = jax.tree.map(lambda x, i=i: x[i], stacked)
      s["closed_context"] = jnp.full((num_examples,), EVAL_SETS[n][1] == "context")
      s["closed_hi"] = jnp.full((num_examples,), min(self.split.num_train, self.num_classes), jnp.int32)
      out[n] = s
    return out


@functools.partial(jax.jit, static_argnums=4)
def build_sets(keys_SxK, cells, arrays: dict, indices_N, spec: Spec) -> dict:
  """Sets [S, N, ...]: compiled once per spec and shape, shared by every run and population member of a process."""
  return jax.vmap(lambda k, c: sample_batch(jax.random.wrap_key_data(k), arrays, indices_N, spec, c))(keys_SxK,
                                                                                                    cells)
