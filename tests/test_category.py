"""The Russin et al. 2024 category task against its definition: dimension pairs, boundaries, episodes, curricula."""
import collections
import itertools

import numpy as np
import pytest

from iclscale.tasks import category
from iclscale.tasks import episodes

D = 10
VOCAB = episodes.SPECIALS + category.words(D)
GRID = list(itertools.product(range(8), range(8)))


def test_dims_enumerate_the_ordered_pairs_of_distinct_dimensions():
  for d in (2, 3, D):
    pairs = [category.dims(k, d) for k in range(d * (d - 1))]
    assert sorted(pairs) == sorted(itertools.permutations(range(d), 2))


def test_unrotated_sides_are_the_four_quadrants():
  for x, y in GRID:
    assert category.sides(x, y, False) == (int(x >= 4), int(y >= 4))
  assert set(collections.Counter(category.sides(x, y, False) for x, y in GRID).values()) == {16}


def test_rotated_sides_are_the_diagonals_split_32_32():
  s = np.array([category.sides(x, y, True) for x, y in GRID])
  assert s[:, 0].sum() == 32 and s[:, 1].sum() == 32
  for (x, y), (s0, s1) in zip(GRID, s):
    if x != y:
      assert s0 == int(x > y)          # x' = x - y + 7 against 7: the diagonal
    if x + y != 7:
      assert s1 == int(x + y > 7)      # y' = x + y against 7: the anti-diagonal


def test_rotated_quadrants_hold_16_plus_minus_1():
  counts = collections.Counter(category.sides(x, y, True) for x, y in GRID)
  assert len(counts) == 4 and all(n == 16 for n in counts.values())


def _decode(tok):
  _, d, v = VOCAB[tok].split("_")
  return int(d), int(v)


def _episode(key, curriculum, rotated, seed):
  """(d1, d2), study [(x, y, label, block)], test [(x, y, label)] with x on d1 and y on d2."""
  d1, d2 = category.dims(key, D)
  ep = category.make_episode(key, curriculum, rotated, np.random.default_rng(seed), D)
  orders = set()

  def row(item, answer):
    (da, va), (db, vb) = map(_decode, item)
    orders.add((da, db))
    assert {da, db} == {d1, d2} and len(answer) == 1
    word = VOCAB[answer[0]]
    assert word in ("label_0", "label_1")
    return (va, vb, int(word[-1])) if da == d1 else (vb, va, int(word[-1]))

  study = [row(item, answer) + (block,) for item, answer, block in ep.study]
  test = [row(item, answer) for item, answer in ep.test]
  assert len(orders) == 1  # one token order per episode
  return (d1, d2), study, test, orders.pop()


def _decides(label, side, items=GRID):
  """Whether the label of every item is a one-to-one function of side(item), two sides."""
  pairs = {(side(c), label[c]) for c in items}
  return len(pairs) == 2 and len({p[0] for p in pairs}) == 2 and len({p[1] for p in pairs}) == 2


@pytest.mark.parametrize("curriculum", category.CURRICULA)
@pytest.mark.parametrize("rotated", [False, True])
def test_episode_split_labels_and_blocks(curriculum, rotated):
  relevant, low_labels, orders = set(), set(), set()
  for s in range(20):
    key = (31 * s + 5) % (D * (D - 1))
    (d1, d2), study, test, order = _episode(key, curriculum, rotated, s)
    orders.add(order == (d1, d2))
    assert len(study) == 32 and len(test) == 32
    assert sorted([r[:2] for r in study] + [r[:2] for r in test]) == GRID
    quadrants = collections.Counter(category.sides(x, y, rotated) for x, y, *_ in study)
    assert sorted(quadrants.values()) == [8] * 4
    rows = [r[:3] for r in study] + test
    assert [r[3] for r in study] == [r[2] for r in study]            # finetuning block = label
    assert collections.Counter(r[2] for r in study) == {0: 16, 1: 16}
    label = {(x, y): lab for x, y, lab in rows}
    feature_rules = [f for f in (0, 1) if _decides(label, lambda c: c[f] >= 4)]
    if rotated:  # no single feature predicts the label; one rotated side does
      assert not feature_rules
      for f in (0, 1):
        assert any(len({label[c] for c in GRID if c[f] == v}) == 2 for v in range(8))
      sides = {r: _decides(label, lambda c: category.sides(*c, True)[r]) for r in (0, 1)}
      assert sum(sides.values()) == 1
      off = [c for c in GRID if c[0] != c[1] and c[0] + c[1] != 7]   # strictly off both boundaries
      diagonals = [_decides(label, lambda c: c[0] > c[1], off), _decides(label, lambda c: c[0] + c[1] > 7, off)]
      assert diagonals == [sides[0], sides[1]]
      relevant.add(sides[1])
    else:        # one feature's value decides: < 3.5 vs >= 3.5
      assert len(feature_rules) == 1
      relevant.add(feature_rules[0])
      low_labels.add(label[0, 0])
  assert relevant == {0, 1} and orders == {False, True}  # relevant dimension and token order vary
  if not rotated:
    assert low_labels == {0, 1}                              # label order drawn per episode


def test_blocked_groups_study_items_by_quadrant_and_interleaved_does_not():
  contiguous = collections.Counter()
  quadrant_orders = set()
  for curriculum in category.CURRICULA:
    for s in range(8):
      for rotated in (False, True):
        _, study, _, _ = _episode(s, curriculum, rotated, s)
        q = [category.sides(x, y, rotated) for x, y, *_ in study]
        runs = [q[i:i + 8] for i in range(0, 32, 8)]
        grouped = all(len(set(r)) == 1 for r in runs) and len({r[0] for r in runs}) == 4
        contiguous[curriculum] += grouped
        if curriculum == "blocked":
          quadrant_orders.add(tuple(r[0] for r in runs))
  assert contiguous["blocked"] == 16 and contiguous["interleaved"] == 0
  assert len(quadrant_orders) > 1
