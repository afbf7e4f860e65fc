"""Device mesh (population / data / fsdp / model axes), batch and parameter shardings, and per-host slicing.

The population axis splits the members of a population (iclscale/population.py): each device trains P/D
members and no collective crosses it; inside a member the batch is split over ('data', 'fsdp') as in a solo run.

The global batch is split over ('data', 'fsdp'); each process materializes only its own rows and the rows are
assembled into one global array with `jax.make_array_from_process_local_data`, so a multi-host run reads no data
twice. Parameters are replicated unless they are large enough to be worth sharding over 'fsdp'.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from iclscale import config as config_lib

DEFAULTS = dict(
    population=1,    # population axis: members split over it (a solo run keeps 1); -1 = what the others leave
    num_devices=0,   # use the first n devices (0 = all); 1 gives the single-device reference run
    data=-1,         # data-parallel axis size (-1 = whatever the other axes leave)
    fsdp=1,          # parameters sharded over this axis, batch split over data x fsdp
    model=1,         # tensor-parallel axis for models that define model-axis rules
    fsdp_min_size=2**18,  # parameters with fewer elements stay replicated under fsdp (the gathers would cost more)
)
AXES = ("population", "data", "fsdp", "model")
POPULATION = "population"
BATCH_AXES = ("data", "fsdp")


def axis_sizes(cfg, num_devices: int) -> tuple[int, int, int, int]:
  sizes = [cfg.population, cfg.data, cfg.fsdp, cfg.model]
  for name, s in zip(AXES, sizes):
    config_lib.check(s == -1 or s >= 1, f"mesh.{name}", f"must be -1 or >= 1, got {s}")
  config_lib.check(sizes.count(-1) <= 1, "mesh", "at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  config_lib.check(num_devices % known == 0, "mesh",
                   f"{num_devices} devices cannot be split into axes population={cfg.population} data={cfg.data} "
                   f"fsdp={cfg.fsdp} model={cfg.model}")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  config_lib.check(math.prod(sizes) == num_devices, "mesh",
                   f"axes {dict(zip(AXES, sizes))} use {math.prod(sizes)} devices, {num_devices} are in use")
  return tuple(sizes)


def num_devices(cfg) -> int:
  total = jax.device_count()
  config_lib.check(0 <= cfg.num_devices <= total, "mesh.num_devices",
                   f"must be in [0, {total}] ({total} devices visible), got {cfg.num_devices}")
  return cfg.num_devices or total


def batch_parallelism(cfg) -> int:
  _, data, fsdp, _ = axis_sizes(cfg, num_devices(cfg))
  return data * fsdp


def population_size(cfg) -> int:
  """Devices along the population axis (members are split over them)."""
  return axis_sizes(cfg, num_devices(cfg))[0]


def make_mesh(cfg) -> jax.sharding.Mesh:
  n = num_devices(cfg)
  devices = jax.devices()[:n] if n < jax.device_count() else None
  # Auto axes: plain GSPMD propagation; Explicit (the default of make_mesh) rejects ambiguous contractions.
  return jax.make_mesh(axis_sizes(cfg, n), AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def batch_spec(ndim: int, batch_dim: int = 0) -> P:
  spec = [None] * ndim
  spec[batch_dim] = BATCH_AXES
  return P(*spec)


def batch_sharding(mesh, ndim: int, batch_dim: int = 0) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(ndim, batch_dim))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = DEFAULTS["fsdp_min_size"]) -> P:
  """Shard the largest dimension divisible by the fsdp size; arrays under `min_size` elements or with no divisible
  dimension stay replicated."""
  if fsdp == 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def param_shardings(abstract_params: Any, mesh, specs: Any = None, population: bool = False,
                    fsdp_min_size: int = DEFAULTS["fsdp_min_size"]) -> Any:
  """NamedShardings for a parameter tree: model-provided specs if given, else the fsdp rule (`fsdp_spec`). With
  `population`, `abstract_params` is one member's tree and the shardings are of the stacked tree [P, ...]: the
  leading axis over 'population', the member's own spec after it."""
  if specs is None:
    specs = jax.tree.map(lambda x: fsdp_spec(x.shape, mesh.shape["fsdp"], fsdp_min_size), abstract_params)
  if population:
    specs = jax.tree.map(lambda s: P(POPULATION, *s), specs, is_leaf=lambda s: isinstance(s, P))
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))


def member_sharding(mesh, ndim: int) -> NamedSharding:
  """An array stacked over members [P, ...]: split over the population axis only."""
  return NamedSharding(mesh, P(POPULATION, *([None] * (ndim - 1))))


def host_slices(sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[slice, ...]:
  """The block of a global array of `shape` that this process's devices hold, one slice per dimension: the only
  part this host produces (e.g. its members' and its rows' indices)."""
  index_map = sharding.addressable_devices_indices_map(shape)
  out = []
  for d, size in enumerate(shape):
    spans = sorted({(i[d].start or 0, size if i[d].stop is None else i[d].stop) for i in index_map.values()})
    for (_, stop), (start, _) in zip(spans, spans[1:]):
      if start > stop:
        raise ValueError(f"process {jax.process_index()} holds a non-contiguous block of dimension {d}: {spans}")
    out.append(slice(spans[0][0], max(stop for _, stop in spans)))
  return tuple(out)


def to_global(local: np.ndarray, sharding: NamedSharding, global_shape: tuple[int, ...]) -> jax.Array:
  return jax.make_array_from_process_local_data(sharding, local, global_shape)


def from_host_copy(x: Any, sharding: NamedSharding) -> jax.Array:
  """A global array from data every process holds in full (e.g. deterministic evaluation sets)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
