"""The Russin et al. 2024 grid task against its definition: targets, permutations, curricula, episodes, flips."""
import itertools

import numpy as np
import pytest

from iclscale.tasks import episodes
from iclscale.tasks import grid

CELLS = list(itertools.product(range(5), range(5)))
VOCAB = episodes.SPECIALS + grid.WORDS


def test_target_flips_before_the_rotation():
  assert grid.target(1, 3, flip=False, rotated=False) == (1, 3)
  assert grid.target(1, 3, flip=True, rotated=False) == (3, 1)
  assert grid.target(1, 3, flip=False, rotated=True) == (4, 6)
  assert grid.target(1, 3, flip=True, rotated=True) == (4, 2)    # (3, 1) rotated
  assert grid.target(0, 4, flip=False, rotated=True) == (4, 8)
  assert grid.target(4, 0, flip=False, rotated=True) == (4, 0)
  for flip in (False, True):
    rot = [grid.target(x, y, flip, rotated=True) for x, y in CELLS]
    assert len(set(rot)) == 25
    values = {v for t in rot for v in t}
    assert min(values) == 0 and max(values) == 8


def test_rotation_is_45_degrees_scaled_by_sqrt2():
  p = np.array(CELLS, float)
  t = np.array([grid.target(x, y, False, True) for x, y in CELLS], float)
  i, j = np.triu_indices(25, 1)
  np.testing.assert_allclose(np.linalg.norm(t[i] - t[j], axis=1), np.sqrt(2) * np.linalg.norm(p[i] - p[j], axis=1))
  # a proper rotation (orientation kept) by 45°: the x axis goes to (1, -1) / √2 direction
  d = t[CELLS.index((1, 0))] - t[CELLS.index((0, 0))]
  np.testing.assert_allclose(d, [1, -1])
  cross = lambda a, b: a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
  np.testing.assert_array_equal(np.sign(cross(p[i] - p[0], p[j] - p[0])), np.sign(cross(t[i] - t[0], t[j] - t[0])))


def test_permutations_enumerate_all_14400_pairs():
  pairs = [grid.permutations(k) for k in range(grid.NUM_EPISODES)]
  assert grid.NUM_EPISODES == 14400 and len(set(pairs)) == 14400
  assert all(sorted(cx) == list(range(5)) and sorted(ay) == list(range(5)) for cx, ay in pairs)


def _cross(cells):
  """The centre (x0, y0) of 9 distinct cells that form a full row + full column, else None."""
  if len(set(cells)) != 9:
    return None
  for x0, y0 in CELLS:
    if all(x == x0 or y == y0 for x, y in cells):
      return x0, y0
  return None


def _line_axis(cells):
  """0 if all cells share x, 1 if all share y, None otherwise."""
  xs, ys = {c[0] for c in cells}, {c[1] for c in cells}
  return 0 if len(xs) == 1 else 1 if len(ys) == 1 else None


def test_blocked_and_aligned_are_a_line_then_the_intersection_then_the_crossing_line():
  for curriculum in ("blocked", "aligned"):
    first_axes, centres = [], set()
    for s in range(400):
      cells, blocks = grid.study_cells(curriculum, np.random.default_rng(s))
      assert blocks == [0] * 5 + [1] * 4
      centre = _cross(cells)
      assert centre is not None and cells[4] == centre
      a = _line_axis(cells[:5])
      assert a is not None and _line_axis(cells[4:]) == 1 - a     # full line, then the crossing line
      assert len({c[1 - a] for c in cells[:5]}) == 5                # the whole row / column
      first_axes.append(a)
      centres.add(centre)
    if curriculum == "aligned":
      assert centres == {(2, 2)}
    else:
      assert len(centres) == 25
    assert 0.4 < np.mean(first_axes) < 0.6                          # row- and column-first, p = 0.5


def test_interleaved_is_a_shuffled_cross_with_its_blocks():
  orders = 0
  for s in range(200):
    cells, blocks = grid.study_cells("interleaved", np.random.default_rng(s))
    centre = _cross(cells)
    assert centre is not None and sorted(blocks) == [0] * 5 + [1] * 4
    a_cells = [c for c, b in zip(cells, blocks) if b == 0]
    b_cells = [c for c, b in zip(cells, blocks) if b == 1]
    a = _line_axis(a_cells)
    assert a is not None and centre in a_cells and _line_axis(b_cells + [centre]) == 1 - a
    orders += blocks != [0] * 5 + [1] * 4 or cells[4] != centre
  assert orders > 190


def test_misaligned_is_one_diagonal_the_centre_then_the_other():
  diag, anti = {(0, 0), (1, 1), (3, 3), (4, 4)}, {(0, 4), (1, 3), (3, 1), (4, 0)}
  diag_first = []
  for s in range(400):
    cells, blocks = grid.study_cells("misaligned", np.random.default_rng(s))
    assert blocks == [0] * 5 + [1] * 4 and cells[4] == (2, 2)
    assert {frozenset(cells[:4]), frozenset(cells[5:])} == {frozenset(diag), frozenset(anti)}
    diag_first.append(set(cells[:4]) == diag)
  assert 0.4 < np.mean(diag_first) < 0.6


def _decode(item):
  colour, animal = (VOCAB[t] for t in item)
  return grid.COLOURS.index(colour), grid.ANIMALS.index(animal)


def _layout_ok(curriculum, cells, blocks):
  """The study cells and blocks of an episode are a layout of the curriculum (test_*_curricul* pin each)."""
  centre = _cross(cells) if curriculum != "misaligned" else (2, 2)
  a_cells = [c for c, b in zip(cells, blocks) if b == 0]
  if curriculum == "misaligned":
    return cells[4] == centre and blocks == [0] * 5 + [1] * 4 and {frozenset(cells[:4]), frozenset(cells[5:])} == {
        frozenset({(0, 0), (1, 1), (3, 3), (4, 4)}), frozenset({(0, 4), (1, 3), (3, 1), (4, 0)})}
  ok = centre is not None and centre in a_cells and _line_axis(a_cells) is not None and len(a_cells) == 5
  if curriculum == "aligned":
    ok = ok and centre == (2, 2)
  return ok and (curriculum == "interleaved" or (blocks == [0] * 5 + [1] * 4 and cells[4] == centre))


@pytest.mark.parametrize("curriculum", grid.CURRICULA)
@pytest.mark.parametrize("rotated", [False, True])
def test_episode_items_and_answers_follow_the_permutations(curriculum, rotated):
  for s in range(30):
    key = (7919 * s + 13) % grid.NUM_EPISODES
    colour_x, animal_y = grid.permutations(key)
    ep = grid.make_episode(key, curriculum, rotated, np.random.default_rng(s))
    assert len(ep.study) == 9 and len(ep.test) == 16
    items = [r[0] for r in ep.study] + [r[0] for r in ep.test]
    assert len(set(items)) == 25 and {_decode(i) for i in items} == set(CELLS)
    cells = [(colour_x[c], animal_y[a]) for c, a in map(_decode, [r[0] for r in ep.study])]
    assert _layout_ok(curriculum, cells, [r[2] for r in ep.study])
    answers = {}
    for item, answer in [r[:2] for r in ep.study] + ep.test:
      assert len(answer) == 2
      answers[_decode(item)] = tuple(int(VOCAB[t]) for t in answer)
    # every answer is the target of its cell, under one flip for the whole episode
    flips = [f for f in (False, True) if all(
        ans == grid.target(colour_x[c], animal_y[a], f, rotated) for (c, a), ans in answers.items())]
    assert len(flips) == 1
    # compositional iff unrotated: each answer coordinate is a function of one word
    one_word = [k for k in (0, 1) for w in (0, 1)
                if all(len({answers[c, a][k] for c, a in CELLS if (c, a)[w] == v}) == 1 for v in range(5))]
    assert one_word == ([] if rotated else [0, 1])


def test_flip_probability():
  def flipped(s, p):
    key = s % grid.NUM_EPISODES
    colour_x, _ = grid.permutations(key)
    ep = grid.make_episode(key, "blocked", False, np.random.default_rng(s), flip_xy=p)
    rows = [r[:2] for r in ep.study] + ep.test
    return any(int(VOCAB[ans[0]]) != colour_x[_decode(item)[0]] for item, ans in rows)  # colour -> x unless flipped
  n = 2000
  frac = np.mean([flipped(s, 0.5) for s in range(n)])
  assert abs(frac - 0.5) < 5 * np.sqrt(0.25 / n)
  assert not any(flipped(s, 0.0) for s in range(50)) and all(flipped(s, 1.0) for s in range(50))
