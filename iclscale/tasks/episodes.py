"""Episodic few-shot tasks as token sequences (Russin et al. 2024): metalearning samples and finetuning copies.

One sample (every sample of a task has the same length, so nothing is padded):
  <|endoftext|> item_1 : answer_1 <sep> ... item_S : answer_S <sep> query : <mask> [<mask>]
The logits at the <mask> positions are trained to emit the answer tokens (upstream's masked objective read by a
causal decoder); accuracy is an exact match of all answer tokens (losses.answer_ce).

Episodes are keyed: a key in [0, num_episodes) is the episode's content (grid permutations, category dimension
pair). The seed shuffles the keys once; the first num_train_episodes are the metalearning corpus and the last
num_test_episodes are held out, never metalearned. An episode's content (grid flip, category labels, relevant
dimension, study items) is drawn from default_rng([seed, key]) and its curriculum's order from
default_rng([seed, key, curriculum, rotated]): every sequence is a pure function of (seed, index), and a held-out
episode has the same content under every curriculum (paired comparisons).

Modes:
  metalearn  sample i = training episode i // Q, query i % Q, Q = study + test items (mixed, as upstream).
  finetune   one model trained on held-out episode `episode`'s study items with the whole study context in the
             prompt: blocked (block A, B, A, B, ... of steps_per_block steps each) or interleaved (all study items
             at every step). A population over task.episode finetunes every held-out episode in one program
             (iclscale/population.py), one member per episode, as upstream finetunes one model per episode.
"""
from __future__ import annotations

import abc
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from iclscale import config as config_lib

PAD, BOS, COLON, SEP, MASK = range(5)
SPECIALS = ("<pad>", "<|endoftext|>", ":", "<sep>", "<mask>")
NUM_SPECIALS = len(SPECIALS)
ITEM_LEN = 2                      # every item is two tokens (colour animal; symbol symbol)
ROTATIONS = ("rule", "rotated")
# Finetuning draws study items with index % count; a dataset size divisible by every count 1..16 and 32 keeps
# the draw exactly uniform.
FINETUNE_INDICES = 1_441_440

COMMON_DEFAULTS = dict(
    rotated=False,                 # answers rule-like (False) or rotated 45° (True, non-compositional)
    curriculum="blocked",          # context curriculum of the metalearning episodes and of the finetuned ones
    num_train_episodes=12_000,     # metalearning corpus in episodes (upstream 12,000)
    num_test_episodes=10,          # held-out episodes: few-shot evaluation, and one finetuned copy each
    mode="metalearn",              # metalearn | finetune (see the module docstring)
    finetune_schedule="blocked",   # finetune: blocked (A, B, A, B, ...) or interleaved (all study items)
    steps_per_block=1000,          # finetune: steps per block (upstream 4 blocks x 1000 steps)
    episode=0,                     # finetune: which held-out episode (0 .. num_test_episodes-1) is trained
)
# Population members may vary the held-out episode they finetune (and the seed: both reach only `arrays`).
MEMBER_FIELDS = ("episode",)


class Episode(NamedTuple):
  study: list   # (item tokens, answer tokens, finetuning block 0 = A / 1 = B), in context order
  test: list    # (item tokens, answer tokens)


def seq_len(num_study: int, answer_len: int) -> int:
  return 1 + num_study * (ITEM_LEN + answer_len + 2) + ITEM_LEN + 1 + answer_len


def validate(cfg, curricula: tuple[str, ...], num_episodes: int) -> None:
  config_lib.check(isinstance(cfg.rotated, bool), "task.rotated", f"must be a bool, got {cfg.rotated!r}")
  config_lib.check_one_of(cfg, "curriculum", "task", curricula)
  config_lib.check_one_of(cfg, "mode", "task", ("metalearn", "finetune"))
  config_lib.check_one_of(cfg, "finetune_schedule", "task", ("blocked", "interleaved"))
  for f in ("num_train_episodes", "num_test_episodes", "steps_per_block"):
    config_lib.check_positive(cfg, f, "task")
  config_lib.check(cfg.num_train_episodes + cfg.num_test_episodes <= num_episodes, "task.num_train_episodes",
                   f"train + test episodes exceed the {num_episodes} distinct episodes of the task")
  config_lib.check(isinstance(cfg.episode, int) and 0 <= cfg.episode < cfg.num_test_episodes, "task.episode",
                   f"must be a held-out episode index in [0, {cfg.num_test_episodes}), got {cfg.episode!r}")


def context_tokens(ep: Episode) -> list[int]:
  return [BOS] + [t for item, answer, _ in ep.study for t in (*item, COLON, *answer, SEP)]


def query_rows(ep: Episode) -> dict[str, np.ndarray]:
  """The episode's queries, study items (in context order) then test items; block -1 marks a test item."""
  rows = [(item, answer, block) for item, answer, block in ep.study] + [(i, a, -1) for i, a in ep.test]
  return dict(items=np.array([r[0] for r in rows], np.int32), answers=np.array([r[1] for r in rows], np.int32),
              block=np.array([r[2] for r in rows], np.int32))


def stack(eps: list[Episode]) -> dict[str, np.ndarray]:
  """Episodes -> ctx [E, Tc], items [E, Q, 2], answers [E, Q, N], block [E, Q]."""
  per = [dict(ctx=np.array(context_tokens(ep), np.int32), **query_rows(ep)) for ep in eps]
  return {k: np.stack([p[k] for p in per]) for k in per[0]}


def sequences(ctx_xTc, items_xI, answers_xN) -> dict:
  """Samples (any leading dims) in the model's batch format: tokens, answer_pos, answer_tok, answer_mask."""
  lead, n = answers_xN.shape[:-1], answers_xN.shape[-1]
  tail = jnp.broadcast_to(jnp.array([COLON] + [MASK] * n, jnp.int32), lead + (1 + n,))
  tokens = jnp.concatenate([jnp.broadcast_to(ctx_xTc, lead + ctx_xTc.shape[-1:]), items_xI, tail], -1)
  pos_N = tokens.shape[-1] - n + jnp.arange(n, dtype=jnp.int32)
  return dict(tokens=tokens, answer_pos=jnp.broadcast_to(pos_N, lead + (n,)), answer_tok=answers_xN,
              answer_mask=jnp.ones(lead + (n,), bool))


class EpisodicTask(abc.ABC):
  """The task protocol of tasks/__init__.py over episodes; subclasses give curricula, words, answer_len,
  num_episodes and episode(key, curriculum, rotated, rng)."""
  curricula: tuple[str, ...]
  words: tuple[str, ...]
  answer_len: int
  num_episodes: int

  def __init__(self, cfg, seed: int):
    self.cfg, self.seed = cfg, seed
    self.vocab = SPECIALS + tuple(self.words)
    self.vocab_size = self.num_classes = len(self.vocab)
    keys = np.random.default_rng([seed, 0xE915]).permutation(self.num_episodes)
    self.train_keys = keys[:cfg.num_train_episodes]
    self.test_keys = keys[len(keys) - cfg.num_test_episodes:]
    if cfg.mode == "metalearn":
      self.arrays = {k: jnp.asarray(v) for k, v in self.episodes(self.train_keys, cfg.curriculum, cfg.rotated).items()}
      self.queries = self.arrays["items"].shape[1]
      self.dataset_size = len(self.train_keys) * self.queries
    else:
      held = self.episodes(self.test_keys[cfg.episode:cfg.episode + 1], cfg.curriculum, cfg.rotated)
      held = {k: v[0] for k, v in held.items()}   # the one finetuned episode
      S = int((held["block"] >= 0).sum())         # study items come first in the row list
      phases = [held["block"][:S] == 0, held["block"][:S] == 1, held["block"][:S] >= 0]  # A, B, all
      # phase_items[p, :count] = the study items trained on in phase p (argsort puts them first)
      self.arrays = dict(ctx=jnp.asarray(held["ctx"]), items=jnp.asarray(held["items"][:S]),
                         answers=jnp.asarray(held["answers"][:S]),
                         phase_items=jnp.asarray(np.stack([np.argsort(~m, kind="stable") for m in phases])),
                         phase_count=jnp.asarray(np.array([m.sum() for m in phases])))
      self.dataset_size = FINETUNE_INDICES

  @abc.abstractmethod
  def episode(self, key: int, curriculum: str, rotated: bool, rng: np.random.Generator,
              layout_rng: np.random.Generator) -> Episode:
    """The episode of `key`: content drawn from rng, the curriculum's order from layout_rng."""

  def episodes(self, keys, curriculum: str, rotated: bool) -> dict[str, np.ndarray]:
    tags = (self.curricula.index(curriculum), int(rotated))
    return stack([self.episode(int(k), curriculum, rotated, np.random.default_rng([self.seed, int(k)]),
                               np.random.default_rng([self.seed, int(k), *tags])) for k in keys])

  def batch(self, arrays: dict, indices_B, step) -> dict:
    """Metalearning: sample i of the corpus. Finetuning: index i -> study item i mod count of the phase `step` is
    in (blocked: A for steps_per_block steps, then B, ...; interleaved: all study items)."""
    idx = indices_B.astype(jnp.int32)
    if self.cfg.mode == "metalearn":
      e, q = idx // self.queries, idx % self.queries
      return sequences(arrays["ctx"][e], arrays["items"][e, q], arrays["answers"][e, q])
    phase = 2 if self.cfg.finetune_schedule == "interleaved" else (step // self.cfg.steps_per_block) % 2
    s_B = arrays["phase_items"][phase][idx % arrays["phase_count"][phase]]
    return sequences(arrays["ctx"][None], arrays["items"][s_B], arrays["answers"][s_B])

  def eval_sets(self, kind: str, num_examples: int) -> dict[str, dict]:
    """fewshot: {rotation/curriculum: every query of every held-out episode}, rows flattened [E·Q];
    episodes (finetune mode): {"finetuned": every query of the finetuned episode} [Q].
    Each set also carries `block` (-1 test, 0 study block A, 1 study block B). num_examples is ignored."""
    del num_examples
    if kind == "episodes":
      rows = self.query_set(self.cfg.curriculum, self.cfg.rotated, flat=False)
      return {"finetuned": {k: v[self.cfg.episode] for k, v in rows.items()}}
    if kind != "fewshot":
      raise ValueError(f"{self.cfg.name} has no eval set kind {kind!r} (known: fewshot, episodes)")
    return {f"{r}/{c}": self.query_set(c, r == "rotated", flat=True) for r in ROTATIONS for c in self.curricula}

  def query_set(self, curriculum: str, rotated: bool, flat: bool) -> dict:
    held = self.episodes(self.test_keys, curriculum, rotated)
    out = sequences(jnp.asarray(held["ctx"])[:, None], held["items"], held["answers"])
    out = {k: np.asarray(v) for k, v in out.items()}
    out["block"] = held["block"]
    if flat:
      out = {k: v.reshape((-1,) + v.shape[2:]) for k, v in out.items()}
    return out
