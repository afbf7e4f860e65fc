"""Tests for iclscale.datasets.omniglot (shipped npz, official zip/tree, modes)."""

import csv
import io
import pathlib
import zipfile

import numpy as np
import pytest
from PIL import Image

from iclscale.datasets import omniglot

# One xdist worker runs this module (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("omniglot")

DATA_DIR = pathlib.Path(omniglot.__file__).resolve().parents[2] / 'data' / 'omniglot'


@pytest.fixture(scope='module')
def full_table():
  """The shipped 105 px set, loaded once per module (~1 s, 358 MB uint8)."""
  return omniglot.load_omniglot(cache=False)


@pytest.fixture(scope='module')
def csv_rows():
  with open(DATA_DIR / 'characters.csv', newline='') as f:
    return {int(r['character_id']): r for r in csv.DictReader(f)}


def _write_zip(path, records):
  """records: (split, alphabet, character, id, drawer, bool image) -> zip."""
  with zipfile.ZipFile(path, 'w') as zf:
    for split, alphabet, character, cid, drawer, image in records:
      buf = io.BytesIO()
      Image.fromarray(image).save(buf, 'PNG')  # bool -> 1-bit PNG, as official
      zf.writestr(f'{split}/{alphabet}/{character}/{cid:04d}_{drawer:02d}.png',
                  buf.getvalue())


def test_shipped_table_shape_and_white_background(full_table):
  assert full_table.images.shape == (1623, 20, 105, 105)
  assert full_table.images.dtype == np.uint8
  white = omniglot.to_float(full_table.images[::50]) == 1.0
  # Handwritten strokes cover a small part of each image.
  assert 0.85 < white.mean() < 0.97
  # Corners are background in (nearly) every image.
  assert white[..., 0, 0].mean() > 0.99
  assert full_table.num_classes == 1623 and full_table.num_exemplars == 20


def test_shipped_class_order_matches_csv(full_table, csv_rows):
  np.testing.assert_array_equal(full_table.character_ids, np.arange(1, 1624))
  assert len(full_table.alphabet_names) == 50
  for cid in (1, 964, 965, 1000, 1623):
    assert full_table.alphabets[cid - 1] == csv_rows[cid]['alphabet']
  assert full_table.alphabet_names[0] == 'Arcadian'  # first background alphabet
  assert full_table.alphabets[964] == 'Angelic'  # first evaluation character
  np.testing.assert_array_equal(full_table.variants, 0)


def test_zip_and_tree_match_shipped_arrays(full_table, csv_rows, tmp_path):
  # 2 alphabets x 2 characters x 2 drawers of real characters, one from each
  # split, written with the official naming: must reproduce the npz pixels.
  ids = (1, 2, 965, 966)
  records = []
  for cid in ids:
    row = csv_rows[cid]
    split = f"images_{row['split']}"
    for drawer in (1, 2):
      image = full_table.images[cid - 1, drawer - 1] == 255
      records.append((split, row['alphabet'], row['character'], cid, drawer, image))
  zip_path = tmp_path / 'subset.zip'
  _write_zip(zip_path, records)

  table = omniglot.load_omniglot(zip_path, cache_dir=tmp_path / 'cache')
  expected = full_table.images[np.array(ids) - 1, :2]
  np.testing.assert_array_equal(table.images, expected)
  np.testing.assert_array_equal(table.character_ids, ids)
  assert table.alphabet_names == ('Arcadian', 'Angelic')
  assert list(table.alphabets) == ['Arcadian', 'Arcadian', 'Angelic', 'Angelic']
  assert list((tmp_path / 'cache' / 'omniglot').glob('*.npy'))  # PNGs are cached

  # The unzipped tree gives the same table; a directory holding it is found.
  with zipfile.ZipFile(zip_path) as zf:
    zf.extractall(tmp_path / 'unzipped')
  tree = omniglot.load_omniglot(tmp_path / 'unzipped', cache=False)
  np.testing.assert_array_equal(tree.images, expected)
  # The cached copy reloads identically.
  again = omniglot.load_omniglot(zip_path, cache_dir=tmp_path / 'cache')
  np.testing.assert_array_equal(again.images, expected)


def test_synthetic_zip_roundtrip(tmp_path):
  # Arbitrary ids/alphabets; files deliberately written out of order.
  rng = np.random.default_rng(0)
  chars = [('Alpha', 'character02', 12), ('Alpha', 'character01', 11),
           ('Beta_(b)', 'character01', 30), ('Beta_(b)', 'character02', 31)]
  written = {}
  records = []
  for alphabet, character, cid in chars:
    for drawer in (2, 1):
      image = rng.random((105, 105)) < 0.9
      written[cid, drawer] = image
      records.append(('images_background', alphabet, character, cid, drawer, image))
  _write_zip(tmp_path / 'tiny.zip', records)
  table = omniglot.load_omniglot(tmp_path / 'tiny.zip', dtype='float32', cache=False)
  assert table.images.shape == (4, 2, 105, 105) and table.images.dtype == np.float32
  np.testing.assert_array_equal(table.character_ids, [11, 12, 30, 31])
  assert table.alphabet_names == ('Alpha', 'Beta_(b)')
  for c, cid in enumerate(table.character_ids):
    for e in range(2):
      np.testing.assert_array_equal(table.images[c, e], written[cid, e + 1])


def test_resize_28_shape_range_and_values(full_table, tmp_path):
  # Resizing is tested on a small npz-free source (a few real characters) to
  # keep the test fast; the full-set path is the same function.
  records = [('images_background', 'A', f'character0{c + 1}', c + 1, d + 1,
              full_table.images[c, d] == 255) for c in range(3) for d in range(2)]
  _write_zip(tmp_path / 'small.zip', records)
  for dtype in ('uint8', 'float32'):
    table = omniglot.load_omniglot(tmp_path / 'small.zip', image_size=28,
                                   dtype=dtype, cache_dir=tmp_path / 'cache')
    assert table.images.shape == (3, 2, 28, 28)
    x = omniglot.to_float(table.images)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert x[..., 0, 0].min() == pytest.approx(1.0)  # white corners stay white
    assert 0.8 < x.mean() < 0.98  # antialiased: grey strokes, mostly white
    assert len(np.unique(x)) > 2  # bilinear, not nearest
  # Reference: Pillow BILINEAR on the float image.
  ref = Image.fromarray((full_table.images[1, 1] == 255).astype(np.float32))
  ref = np.asarray(ref.resize((28, 28), Image.Resampling.BILINEAR))
  np.testing.assert_allclose(x[1, 1], ref, atol=1e-6)


def test_augmentation_layout():
  rng = np.random.default_rng(1)
  base = rng.integers(0, 256, size=(3, 2, 6, 6), dtype=np.uint8)
  aug = omniglot.augment_x8(base)
  assert aug.shape == (24, 2, 6, 6)
  for c in range(3):
    v = aug[c * 8:(c + 1) * 8]
    np.testing.assert_array_equal(v[0], base[c])
    for k in range(1, 4):  # variants 1..3 rotate the previous one by 90 deg
      np.testing.assert_array_equal(v[k], np.rot90(v[k - 1], axes=(-2, -1)))
    np.testing.assert_array_equal(v[4], base[c][..., ::-1])  # left-right flip
    np.testing.assert_array_equal(v[5], np.rot90(v[4], axes=(-2, -1)))
  assert len({aug[i].tobytes() for i in range(8)}) == 8  # all distinct


def test_augmented_table_metadata(tmp_path):
  records = [('images_background', 'A', f'character0{c}', c, 1,
              np.eye(8, dtype=bool)[::-1] | (np.arange(8) < c)) for c in (1, 2)]
  _write_zip(tmp_path / 'aug.zip', records)
  table = omniglot.load_omniglot(tmp_path / 'aug.zip', augment=True, cache=False)
  assert table.num_classes == 16
  np.testing.assert_array_equal(table.character_ids, [1] * 8 + [2] * 8)
  np.testing.assert_array_equal(table.variants, list(range(8)) * 2)
  np.testing.assert_array_equal(table.images[9], np.rot90(table.images[8], axes=(-2, -1)))


def test_exemplar_modes():
  np.testing.assert_array_equal(omniglot.exemplar_indices('single'), [0])
  np.testing.assert_array_equal(omniglot.exemplar_indices('single', 'heldout'), [19])
  np.testing.assert_array_equal(omniglot.exemplar_indices('all'), np.arange(20))
  np.testing.assert_array_equal(omniglot.exemplar_indices('separated'), np.arange(15))
  np.testing.assert_array_equal(omniglot.exemplar_indices('separated', 'heldout'),
                                np.arange(15, 20))
  np.testing.assert_array_equal(
      omniglot.exemplar_indices('separated', 'heldout', num_heldout=1), [19])
  with pytest.raises(ValueError):
    omniglot.exemplar_indices('all', 'heldout')
  with pytest.raises(ValueError):
    omniglot.exemplar_indices('random')


def test_env_var_source(monkeypatch, tmp_path):
  monkeypatch.setenv('ICLSCALE_OMNIGLOT_DIR', str(tmp_path))
  assert omniglot.default_source() == tmp_path
  monkeypatch.delenv('ICLSCALE_OMNIGLOT_DIR')
  assert omniglot.default_source() == DATA_DIR
  with pytest.raises(FileNotFoundError):
    omniglot.load_omniglot(tmp_path / 'missing')
