"""The category-learning task of Russin et al. 2024: two feature dimensions x 8 values, two labels.

An episode is an ordered pair of distinct feature dimensions (d1, d2) out of num_dims·(num_dims - 1); its 64
items are the two-token strings `symbol_d1_x symbol_d2_y` (token order drawn once per episode). The two label
tokens are drawn in random order (a, b).
  rule-like  one dimension is relevant (drawn per episode): label a if its value < 3.5, else b. The boundary is
             orthogonal to a feature axis.
  rotated    (x, y) -> (x', y') = (x - y + 7, x + y), 45° rotated and scaled by √2, integers in 0..14 around 7; the
             relevant rotated coordinate decides, so the boundary is the diagonal x = y or the anti-diagonal
             x + y = 7 and no single feature predicts the label. Items on a boundary go to the side of the other
             rotated coordinate (x' = 7: high iff y' < 7; y' = 7: high iff x' >= 7), which splits 32/32.
The 4 quadrant categories (the two sides of both coordinates) hold 16 items each, rotated or not.
Study = 8 items of every quadrant (32, shown in context); test = the other 32.
  blocked      grouped by quadrant, quadrants in random order (two quadrants share a label, so label runs need
               not be contiguous);
  interleaved  shuffled.
Finetuning blocks group the study items by label (upstream's train0 / train1), not by quadrant.
"""
from __future__ import annotations

import numpy as np

from iclscale.tasks import episodes

NUM_VALUES = 8
MID = (NUM_VALUES - 1) / 2          # 3.5
ROT_MID = NUM_VALUES - 1            # 7: the middle of the rotated range 0..14
CURRICULA = ("blocked", "interleaved")
PER_QUADRANT = 8


def words(num_dims: int) -> tuple[str, ...]:
  return ("label_0", "label_1") + tuple(f"symbol_{d}_{v}" for d in range(num_dims) for v in range(NUM_VALUES))


def dims(key: int, num_dims: int) -> tuple[int, int]:
  """Episode key in [0, num_dims·(num_dims - 1)) -> an ordered pair of distinct dimensions."""
  d1, r = divmod(key, num_dims - 1)
  return d1, r + (r >= d1)


def sides(x: int, y: int, rotated: bool) -> tuple[int, int]:
  """Which side (0 low, 1 high) of the middle each (rotated) coordinate lies on."""
  if not rotated:
    return int(x > MID), int(y > MID)
  xr, yr = x - y + ROT_MID, x + y
  # Opposite tie-breaks on the two boundaries keep all four quadrants at 16 (the same one would give 20/12/12/20).
  return int(xr > ROT_MID or (xr == ROT_MID and yr < ROT_MID)), int(yr > ROT_MID or (yr == ROT_MID and xr >= ROT_MID))


def make_episode(key: int, curriculum: str, rotated: bool, rng: np.random.Generator, num_dims: int,
                 layout_rng: np.random.Generator | None = None) -> episodes.Episode:
  """rng draws the content (token order, labels, relevant dimension, study items), layout_rng (default rng) the
  curriculum's order, so one episode under two curricula differs only in order."""
  d1, d2 = dims(key, num_dims)
  swap = bool(rng.random() < 0.5)
  labels = rng.permutation(2)       # (a, b): the label of the low and of the high side
  relevant = int(rng.integers(2))
  symbol = lambda d, v: episodes.NUM_SPECIALS + 2 + d * NUM_VALUES + v

  quadrants: list[list[tuple]] = [[] for _ in range(4)]
  for x in range(NUM_VALUES):
    for y in range(NUM_VALUES):
      side = sides(x, y, rotated)
      label = int(labels[side[relevant]])
      item = (symbol(d1, x), symbol(d2, y))
      quadrants[2 * side[0] + side[1]].append((item[::-1] if swap else item, (episodes.NUM_SPECIALS + label,), label))
  study_by_q, test = [], []
  for q in quadrants:
    chosen = rng.permutation(len(q))
    study_by_q.append([q[i] for i in chosen[:PER_QUADRANT]])
    test += [q[i][:2] for i in chosen[PER_QUADRANT:]]
  rng = layout_rng or rng
  study_by_q = [[q[i] for i in rng.permutation(len(q))] for q in study_by_q]
  study = [row for qi in rng.permutation(4) for row in study_by_q[qi]]
  if curriculum == "interleaved":
    study = [study[i] for i in rng.permutation(len(study))]
  return episodes.Episode(study=study, test=[test[i] for i in rng.permutation(len(test))])


DEFAULTS = dict(episodes.COMMON_DEFAULTS, name="russin_category",
                num_dims=200)   # feature dimensions (8 values each); episodes = ordered pairs of them (upstream 200)


def validate(cfg) -> None:
  episodes.config_lib.check(isinstance(cfg.num_dims, int) and cfg.num_dims >= 2, "task.num_dims",
                            f"must be an int >= 2, got {cfg.num_dims!r}")
  episodes.validate(cfg, CURRICULA, cfg.num_dims * (cfg.num_dims - 1))


def input_shape(cfg) -> tuple[int, ...]:
  del cfg
  return (episodes.seq_len(num_study=32, answer_len=1),)


class CategoryTask(episodes.EpisodicTask):
  curricula = CURRICULA
  answer_len = 1

  def __init__(self, cfg, seed: int):
    self.words = words(cfg.num_dims)
    self.num_episodes = cfg.num_dims * (cfg.num_dims - 1)
    super().__init__(cfg, seed)

  def episode(self, key, curriculum, rotated, rng, layout_rng):
    return make_episode(key, curriculum, rotated, rng, self.cfg.num_dims, layout_rng)
