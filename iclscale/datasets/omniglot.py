"""Omniglot exemplar table: all 1623 characters x 20 drawers as one array.

Conventions (see data/omniglot/README.md):
- Class c of the un-augmented table is the character with the c-th smallest
  global id; for the full set that is global id c + 1, i.e. the 964 background
  characters first, then the 659 evaluation characters (TFDS label = id - 1).
  NB: torchvision's Omniglot (used by Chan et al. 2024) orders characters by
  sorted folder names instead, so its class c is usually a different character.
- Exemplar k is drawer k + 1 (the `_YY` of `XXXX_YY.png`, sorted).
- Pixels: white background = 1.0 (float32) or 255 (uint8), ink = 0. uint8 is
  the default because the 105 px table is 358 MB as uint8 but 1.4 GB as
  float32 (11.4 GB with x8 augmentation); `to_float` converts on the device.
- Resizing (image_size != source size): Pillow BILINEAR on the float32 ('F')
  image. For downsampling Pillow widens the triangle kernel by the scale factor,
  so it is an antialiased (area-aware) bilinear filter, the same filter as
  torchvision's Resize on PIL images, and no uint8 rounding happens before it.
- Augmentation (x8): variant v = 4 * flip + k is rot90^k(fliplr^flip(image)),
  rot90 counter-clockwise: the order of Chan et al. 2022's
  `_apply_image_augmentations` (flip outer, rotation inner). Class index is
  c * 8 + v so the 8 variants of a character stay adjacent and a split into
  blocks of 8 keeps them together (their `preserve_ordering_every_n = 8`).
  It is applied after resizing so that the variants are exact rotations/flips.
- Pixel noise is not added here; the task adds it on the device.

Sources: the shipped npz pair (+ characters.csv), the official
images_{background,evaluation}.zip, or the unzipped tree
`.../<alphabet>/characterNN/XXXX_YY.png`. All give identical arrays.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import zipfile
from typing import Sequence, Union

import numpy as np
from PIL import Image

from iclscale import cache

PathLike = Union[str, os.PathLike]

NUM_BACKGROUND = 964  # global ids 1..964; evaluation ids are 965..1623
NUM_VARIANTS = 8
EXEMPLAR_MODES = ('single', 'all', 'separated')
_CACHE_VERSION = 1  # bump when the cached array's construction changes
_SPLIT_OFFSET = {'images_background': 1, 'images_evaluation': NUM_BACKGROUND + 1}
_PNG_NAME = re.compile(r'(\d+)_(\d+)\.png')


@dataclasses.dataclass(frozen=True)
class OmniglotTable:
  """images[c, e] is exemplar e of class c; the other fields describe class c."""
  images: np.ndarray  # [C, E, H, W] uint8 (255 = white) or float32 (1.0 = white)
  character_ids: np.ndarray  # [C] int32 global Omniglot id (1..1623)
  variants: np.ndarray  # [C] int32 augmentation variant 0..7 (0 if none)
  alphabet_index: np.ndarray  # [C] int32 index into alphabet_names
  alphabet_names: tuple[str, ...]  # in order of first appearance by id

  @property
  def num_classes(self) -> int:
    return self.images.shape[0]

  @property
  def num_exemplars(self) -> int:
    return self.images.shape[1]

  @property
  def image_size(self) -> int:
    return self.images.shape[-1]

  @property
  def alphabets(self) -> np.ndarray:
    """[C] alphabet folder name of each class."""
    return np.asarray(self.alphabet_names, dtype=object)[self.alphabet_index]


def to_float(images):
  """uint8 (255 = white) or float images -> float32 with white = 1.0.

  Works on numpy and jax arrays, so the uint8 table can be shipped to the
  device as is and converted there.
  """
  if images.dtype == np.uint8:
    return images.astype(np.float32) / np.float32(255)
  return images.astype(np.float32)


def exemplar_indices(mode: str, split: str = 'train', num_exemplars: int = 20,
                     num_heldout: int = 5) -> np.ndarray:
  """Exemplar indices a task may draw from, for split 'train' or 'heldout'.

  single:    train [0]; heldout [num_exemplars - 1] (Chan et al. 2024's
             `exemplar = heldout` intent: exemplar 19, never a training one).
  all:       train all exemplars; there are no held-out exemplars.
  separated: train the first num_exemplars - num_heldout, heldout the rest.
  NB: Chan et al. 2022's 'separated' instead makes every exemplar its own
  class; that is a class relabelling, not an exemplar split, and is not this.
  """
  if mode not in EXEMPLAR_MODES:
    raise ValueError(f'exemplar mode {mode!r} not in {EXEMPLAR_MODES}')
  if split not in ('train', 'heldout'):
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
  if mode == 'single':
    return np.array([0 if split == 'train' else num_exemplars - 1], np.int32)
  if mode == 'all':
    if split == 'heldout':
      raise ValueError("exemplar mode 'all' has no held-out exemplars")
    return np.arange(num_exemplars, dtype=np.int32)
  if not 0 < num_heldout < num_exemplars:
    raise ValueError(f'need 0 < num_heldout < {num_exemplars}, got {num_heldout}')
  num_train = num_exemplars - num_heldout
  if split == 'train':
    return np.arange(num_train, dtype=np.int32)
  return np.arange(num_train, num_exemplars, dtype=np.int32)


# ---------------------------------------------------------------- sources ---


def default_source() -> pathlib.Path:
  """$ICLSCALE_OMNIGLOT_DIR, else the repository's data/omniglot."""
  env = os.environ.get('ICLSCALE_OMNIGLOT_DIR')
  if env:
    return pathlib.Path(env)
  return pathlib.Path(__file__).resolve().parents[2] / 'data' / 'omniglot'


def _resolve_parts(source) -> list[pathlib.Path]:
  """A source -> list of npz files, zip files or PNG-tree directories."""
  if source is None:
    source = default_source()
  if isinstance(source, (str, os.PathLike)):
    source = [source]
  parts = []
  for path in map(pathlib.Path, source):
    if not path.exists():
      raise FileNotFoundError(f'Omniglot source not found: {path}')
    if path.is_file():
      parts.append(path)
      continue
    # A directory: prefer the compact npz pair, then zips, then unzipped trees.
    for pattern in ('images_*.npz', 'images_*.zip'):
      found = sorted(path.glob(pattern))
      if found:
        parts.extend(found)
        break
    else:
      trees = [path / s for s in _SPLIT_OFFSET if (path / s).is_dir()]
      parts.extend(trees or [path])  # else `path` itself is a split tree
  return parts


def _read_npz(path: pathlib.Path):
  """Shipped npz -> (ids [n], bool images [n, E, H, W], alphabets [n])."""
  if path.stem not in _SPLIT_OFFSET:
    raise ValueError(f'npz must be named images_background/evaluation: {path}')
  with np.load(path) as data:
    images, labels = data['images'], data['labels']
  ids = labels[:, 0].astype(np.int64) + _SPLIT_OFFSET[path.stem]
  csv_path = path.parent / 'characters.csv'
  if not csv_path.exists():
    raise FileNotFoundError(f'{csv_path} (alphabet names) must sit beside {path}')
  with open(csv_path, newline='') as f:
    alphabet_of = {int(r['character_id']): r['alphabet'] for r in csv.DictReader(f)}
  return ids, images, [alphabet_of[int(i)] for i in ids]


def _png_entries(path: pathlib.Path, archive: zipfile.ZipFile | None):
  """Yield (alphabet, character_id, drawer, opener) for each official PNG."""
  if archive is not None:
    names = [(n.split('/'), n) for n in archive.namelist()]
    opener = archive.open
  else:
    names = [(p.relative_to(path).parts, p) for p in path.rglob('*.png')]
    opener = lambda p: open(p, 'rb')
  for parts, name in names:
    match = _PNG_NAME.fullmatch(parts[-1])
    if match and len(parts) >= 3:
      yield parts[-3], int(match[1]), int(match[2]), lambda n=name: opener(n)


def _read_pngs(path: pathlib.Path):
  """Official zip or tree -> (ids [n], bool images [n, E, H, W], alphabets)."""
  by_id: dict[int, dict[int, np.ndarray]] = {}
  alphabet_of: dict[int, str] = {}
  archive = zipfile.ZipFile(path) if path.is_file() else None
  try:
    for alphabet, char_id, drawer, open_png in _png_entries(path, archive):
      with open_png() as f:
        # convert('L') accepts the official 1-bit PNGs and any grey/RGB re-save.
        image = np.asarray(Image.open(f).convert('L')) >= 128  # True = white
      if alphabet_of.setdefault(char_id, alphabet) != alphabet:
        raise ValueError(f'character {char_id} appears under two alphabets')
      if drawer in by_id.setdefault(char_id, {}):
        raise ValueError(f'duplicate PNG for character {char_id} drawer {drawer}')
      by_id[char_id][drawer] = image
  finally:
    if archive is not None:
      archive.close()
  if not by_id:
    raise ValueError(f'no XXXX_YY.png files under <alphabet>/<character>/ in {path}')
  ids = np.array(sorted(by_id), np.int64)
  counts = {len(by_id[i]) for i in ids}
  if len(counts) != 1:
    raise ValueError(f'characters have differing drawer counts {counts} in {path}')
  images = np.stack([np.stack([by_id[i][d] for d in sorted(by_id[i])]) for i in ids])
  return ids, images, [alphabet_of[i] for i in ids]


def _read_part(path: pathlib.Path):
  return _read_npz(path) if path.suffix == '.npz' else _read_pngs(path)


def _fingerprint(parts: Sequence[pathlib.Path]) -> list:
  """Cheap identity of the source files (path, size, mtime) for the cache key."""
  def stat(p):
    s = p.stat()
    return [str(p.resolve()), s.st_size, s.st_mtime_ns]
  out = []
  for part in parts:
    if part.is_dir():
      out.append([stat(p) for p in sorted(part.rglob('*.png'))])
    else:
      out.append(stat(part))
  return out


# --------------------------------------------------------------- building ---


def _convert(images_NxExHxW: np.ndarray, image_size: int, dtype: str) -> np.ndarray:
  """Bool (True = white) images -> resized images in the table's dtype."""
  if images_NxExHxW.shape[-1] == image_size and images_NxExHxW.shape[-2] == image_size:
    if dtype == 'uint8':
      return images_NxExHxW.astype(np.uint8) * np.uint8(255)
    return images_NxExHxW.astype(np.float32)
  flat_MxHxW = images_NxExHxW.reshape((-1,) + images_NxExHxW.shape[-2:])
  out_MxSxS = np.empty((flat_MxHxW.shape[0], image_size, image_size), np.float32)
  for i, image in enumerate(flat_MxHxW):
    pil = Image.fromarray(image.astype(np.float32))  # mode 'F': no rounding
    out_MxSxS[i] = np.asarray(
        pil.resize((image_size, image_size), Image.Resampling.BILINEAR))
  if dtype == 'uint8':
    out_MxSxS = np.rint(np.clip(out_MxSxS, 0.0, 1.0) * 255).astype(np.uint8)
  return out_MxSxS.reshape(images_NxExHxW.shape[:2] + (image_size, image_size))


def _build_base(parts, image_size: int, dtype: str):
  """Read all parts, order classes by global id and convert them."""
  read = [_read_part(p) for p in parts]
  ids = np.concatenate([r[0] for r in read])
  if len(np.unique(ids)) != len(ids):
    raise ValueError('the same character id occurs in two source parts')
  shapes = {r[1].shape[1:] for r in read}
  if len(shapes) != 1:
    raise ValueError(f'source parts differ in [exemplars, H, W]: {shapes}')
  order = np.argsort(ids)
  rank = np.empty_like(order)
  rank[order] = np.arange(len(ids))
  num_exemplars = shapes.pop()[0]
  images = np.empty((len(ids), num_exemplars, image_size, image_size),
                    np.uint8 if dtype == 'uint8' else np.float32)
  start = 0
  for part_ids, part_images, _ in read:
    # Convert in chunks so the float temporaries stay small.
    for lo in range(0, len(part_ids), 256):
      hi = min(lo + 256, len(part_ids))
      images[rank[start + lo:start + hi]] = _convert(part_images[lo:hi], image_size, dtype)
    start += len(part_ids)
  alphabets = [a for r in read for a in r[2]]
  return images, ids[order], [alphabets[i] for i in order]


def _load_base_cached(parts, image_size, dtype, cache_dir):
  """_build_base behind a .npy cache keyed by source identity and settings."""
  key_json = json.dumps([_CACHE_VERSION, _fingerprint(parts), image_size, dtype])
  key = hashlib.sha256(key_json.encode()).hexdigest()[:20]
  stem = cache.cache_dir('omniglot', cache_dir) / f'omniglot_{image_size}px_{dtype}_{key}'
  npy, meta = stem.with_suffix('.npy'), stem.with_suffix('.json')
  if npy.exists() and meta.exists():
    info = json.loads(meta.read_text())
    return np.load(npy), np.array(info['character_ids'], np.int64), info['alphabets']
  images, ids, alphabets = _build_base(parts, image_size, dtype)
  stem.parent.mkdir(parents=True, exist_ok=True)
  # Write to temporary names, then rename: concurrent loaders never see a
  # half-written file, and the meta file (written last) marks completeness.
  tmp = stem.with_name(f'{stem.name}.{os.getpid()}.tmp')
  with open(tmp, 'wb') as f:
    np.save(f, images)
  os.replace(tmp, npy)
  tmp.write_text(json.dumps({'character_ids': ids.tolist(), 'alphabets': alphabets}))
  os.replace(tmp, meta)
  return images, ids, alphabets


def augment_x8(images_CxExHxW: np.ndarray) -> np.ndarray:
  """[C, E, H, W] -> [C * 8, E, H, W]; row c * 8 + v is variant v of class c."""
  out = np.empty((images_CxExHxW.shape[0], NUM_VARIANTS) + images_CxExHxW.shape[1:],
                 images_CxExHxW.dtype)
  # Blocks of 16 classes keep the strided rot90 copies cache-resident: ~2x
  # faster than whole-array copies for the 2.9 GB 105 px uint8 result.
  for lo in range(0, images_CxExHxW.shape[0], 16):
    block = images_CxExHxW[lo:lo + 16]
    for flip in range(2):
      base = block[..., ::-1] if flip else block  # fliplr = reverse the W axis
      for k in range(4):
        out[lo:lo + 16, 4 * flip + k] = np.rot90(base, k, axes=(-2, -1))
  return out.reshape((-1,) + images_CxExHxW.shape[1:])


def load_omniglot(source: Union[PathLike, Sequence[PathLike], None] = None,
                  image_size: int = 105, augment: bool = False,
                  dtype: str = 'uint8', cache: bool = True,
                  cache_dir: PathLike | None = None) -> OmniglotTable:
  """Load Omniglot as an OmniglotTable.

  Args:
    source: None (shipped npz, or $ICLSCALE_OMNIGLOT_DIR), a directory holding
      the npz pair + characters.csv, the official zips, or the unzipped
      images_* trees; or one/several npz, zip or tree paths.
    image_size: output side in pixels (105 = native; 28 = bilinear resize).
    augment: x8 classes (4 rotations x flip), variants adjacent (c * 8 + v).
    dtype: 'uint8' (255 = white, 4x smaller) or 'float32' (1.0 = white).
    cache: keep the decoded/resized base table as .npy when building it is
      slow (PNG decoding or resizing, > 1 s); the shipped npz at native size
      decodes in ~1 s and is not duplicated on disk (358 MB). Augmentation is a fast
      numpy copy applied after the cache and is not stored (8x the disk).
    cache_dir: default $ICLSCALE_CACHE or ~/.cache/iclscale (+ /omniglot).
  """
  if dtype not in ('uint8', 'float32'):
    raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")
  if image_size <= 0:
    raise ValueError(f'image_size must be positive, got {image_size}')
  parts = _resolve_parts(source)
  slow = image_size != 105 or any(p.suffix != '.npz' for p in parts)
  if cache and slow:
    images, ids, alphabets = _load_base_cached(parts, image_size, dtype, cache_dir)
  else:
    images, ids, alphabets = _build_base(parts, image_size, dtype)
  names = tuple(dict.fromkeys(alphabets))  # first appearance by id
  alphabet_index = np.array([names.index(a) for a in alphabets], np.int32)
  variants = np.zeros(len(ids), np.int32)
  if augment:
    images = augment_x8(images)
    ids, alphabet_index = (np.repeat(a, NUM_VARIANTS) for a in (ids, alphabet_index))
    variants = np.tile(np.arange(NUM_VARIANTS, dtype=np.int32), len(variants))
  return OmniglotTable(images=images, character_ids=ids.astype(np.int32),
                       variants=variants, alphabet_index=alphabet_index,
                       alphabet_names=names)
