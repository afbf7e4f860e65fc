"""The compositional grid task of Russin et al. 2024: 5 colours x 5 animals -> (x, y) coordinates.

An episode is a colour permutation (colour -> x) and an animal permutation (animal -> y), 5!·5! = 14,400 of them,
plus a coin flip (p_flip_xy) that swaps the two coordinates. Nine study cells, laid out by the curriculum, are
shown in context with their answers; the other 16 cells are the test items. In the rotated (non-compositional)
variant the answer is (x + y, y - x + 4): each coordinate then depends on both words.

Curricula over grid cells (x, y), as upstream:
  blocked      one row (a colour with the 4 other animals), the intersection cell, then one column (an animal with
               the 4 other colours); row-first or column-first with p = 0.5. Block A = the first 5, block B = the
               last 4 (the finetuning blocks).
  interleaved  the same 9 cells, shuffled.
  aligned      the middle row and column: (x, 2) for x != 2, (2, 2), (2, y) for y != 2; row- or column-first.
  misaligned   the two diagonals: {(0,0),(1,1),(3,3),(4,4)}, (2, 2), {(0,4),(1,3),(3,1),(4,0)}; diagonal order random.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from iclscale.tasks import episodes

COLOURS = ("red", "green", "blue", "yellow", "pink")
ANIMALS = ("dog", "cat", "bird", "fish", "horse")
SIZE = 5
CURRICULA = ("blocked", "interleaved", "aligned", "misaligned")
WORDS = COLOURS + ANIMALS + tuple(str(d) for d in range(2 * SIZE - 1))   # coordinates 0..8 (rotated range)
TOKEN = {w: episodes.NUM_SPECIALS + i for i, w in enumerate(WORDS)}
NUM_EPISODES = math.factorial(SIZE) ** 2


def permutations(key: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Episode key in [0, 14400) -> (x of each colour, y of each animal)."""
  perms = list(itertools.permutations(range(SIZE)))
  return perms[key // len(perms)], perms[key % len(perms)]


def target(x: int, y: int, flip: bool, rotated: bool) -> tuple[int, int]:
  """The answer of cell (x, y): the axis flip first, then the 45° rotation (scaled by √2, shifted by (0, 4))."""
  if flip:
    x, y = y, x
  return (x + y, y - x + SIZE - 1) if rotated else (x, y)


def study_cells(curriculum: str, rng: np.random.Generator, centre: tuple[int, int] | None = None
                ) -> tuple[list[tuple[int, int]], list[int]]:
  """(the 9 study cells in context order, their finetuning block 0 = A / 1 = B). `centre` is the blocked /
  interleaved intersection cell (drawn from rng if None)."""
  if curriculum == "misaligned":
    diag, anti = [(0, 0), (1, 1), (3, 3), (4, 4)], [(0, 4), (1, 3), (3, 1), (4, 0)]
    first, second = (diag, anti) if rng.random() < 0.5 else (anti, diag)
    cells = [first[i] for i in rng.permutation(4)] + [(2, 2)] + [second[i] for i in rng.permutation(4)]
  else:
    centre = centre or (int(rng.integers(SIZE)), int(rng.integers(SIZE)))
    x0, y0 = (2, 2) if curriculum == "aligned" else centre
    row = [(x0, int(y)) for y in rng.permutation(SIZE) if y != y0]     # a colour with the 4 other animals
    col = [(int(x), y0) for x in rng.permutation(SIZE) if x != x0]     # an animal with the 4 other colours
    first, second = (row, col) if rng.random() < 0.5 else (col, row)
    cells = first + [(x0, y0)] + second
  blocks = [0] * 5 + [1] * 4
  if curriculum == "interleaved":
    order = rng.permutation(9)
    cells, blocks = [cells[i] for i in order], [blocks[i] for i in order]
  return cells, blocks


def make_episode(key: int, curriculum: str, rotated: bool, rng: np.random.Generator, flip_xy: float = 0.5,
                 layout_rng: np.random.Generator | None = None) -> episodes.Episode:
  """rng draws the episode's content (flip, blocked centre), layout_rng (default rng) its curriculum's order."""
  colour_x, animal_y = permutations(key)
  colour_of = {x: c for c, x in enumerate(colour_x)}
  animal_of = {y: a for a, y in enumerate(animal_y)}
  flip = bool(rng.random() < flip_xy)
  centre = int(rng.integers(SIZE)), int(rng.integers(SIZE))
  rng = layout_rng or rng

  def row(cell):
    x, y = cell
    item = (TOKEN[COLOURS[colour_of[x]]], TOKEN[ANIMALS[animal_of[y]]])
    return item, tuple(TOKEN[str(v)] for v in target(x, y, flip, rotated))

  cells, blocks = study_cells(curriculum, rng, centre)
  rest = [c for c in itertools.product(range(SIZE), range(SIZE)) if c not in set(cells)]
  test = [rest[i] for i in rng.permutation(len(rest))]
  return episodes.Episode(study=[row(c) + (b,) for c, b in zip(cells, blocks)], test=[row(c) for c in test])


DEFAULTS = dict(episodes.COMMON_DEFAULTS, name="russin_grid",
                flip_xy=0.5)   # probability that an episode swaps the two coordinates (colour -> y), upstream 0.5


def validate(cfg) -> None:
  episodes.validate(cfg, CURRICULA, NUM_EPISODES)
  episodes.config_lib.check_prob(cfg, "flip_xy", "task")


def input_shape(cfg) -> tuple[int, ...]:
  del cfg
  return (episodes.seq_len(num_study=9, answer_len=2),)


class GridTask(episodes.EpisodicTask):
  curricula = CURRICULA
  words = WORDS
  answer_len = 2
  num_episodes = NUM_EPISODES

  def episode(self, key, curriculum, rotated, rng, layout_rng):
    return make_episode(key, curriculum, rotated, rng, self.cfg.flip_xy, layout_rng)
