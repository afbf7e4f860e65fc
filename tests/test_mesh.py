"""Mesh axes, batch/parameter shardings and host rows on 8 simulated CPU devices."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from iclscale import mesh as mesh_lib
from iclscale.config import ConfigError


def mesh_cfg(**kw):
  return ml_collections.ConfigDict(dict(mesh_lib.DEFAULTS, **kw))


def test_axis_fill_and_errors():
  assert mesh_lib.axis_sizes(mesh_cfg(fsdp=2), 8) == (1, 4, 2, 1)
  assert mesh_lib.axis_sizes(mesh_cfg(data=2, fsdp=-1, model=2), 8) == (1, 2, 2, 2)
  with pytest.raises(ConfigError, match="cannot be split"):
    mesh_lib.axis_sizes(mesh_cfg(model=3), 8)
  with pytest.raises(ConfigError, match="at most one axis may be -1"):
    mesh_lib.axis_sizes(mesh_cfg(data=-1, fsdp=-1), 8)


def test_mesh_uses_requested_devices_with_auto_axes():
  mesh = mesh_lib.make_mesh(mesh_cfg(num_devices=4, fsdp=2))
  assert dict(mesh.shape) == {"population": 1, "data": 2, "fsdp": 2, "model": 1}
  assert mesh_lib.batch_parallelism(mesh_cfg(num_devices=4, fsdp=2)) == 4


def test_fsdp_rule_shards_only_large_divisible_arrays():
  assert mesh_lib.fsdp_spec((1024, 512), 4) == P("fsdp", None)
  assert mesh_lib.fsdp_spec((64, 64), 4) == P()            # small: replicated
  assert mesh_lib.fsdp_spec((1023, 513), 4) == P()         # indivisible: replicated
  assert mesh_lib.fsdp_spec((1024, 512), 1) == P()
  assert mesh_lib.fsdp_spec((64, 64), 4, min_size=64 * 64) == P("fsdp", None)   # mesh.fsdp_min_size lowered
  assert mesh_lib.fsdp_spec((64, 64), 4, min_size=64 * 64 + 1) == P()


def test_batch_is_split_over_data_and_fsdp_and_hosts_read_all_rows():
  mesh = mesh_lib.make_mesh(mesh_cfg(num_devices=8, fsdp=2))
  x = mesh_lib.from_host_copy(np.arange(32 * 3).reshape(32, 3), mesh_lib.batch_sharding(mesh, 2))
  assert {s.data.shape for s in x.addressable_shards} == {(4, 3)}
  np.testing.assert_array_equal(np.asarray(x), np.arange(96).reshape(32, 3))
  assert mesh_lib.host_slices(mesh_lib.batch_sharding(mesh, 1), (32,)) == (slice(0, 32),)


def test_population_axis_splits_members_and_one_process_holds_every_block():
  mesh = mesh_lib.make_mesh(mesh_cfg(num_devices=8, population=4, data=2))
  sharding = jax.sharding.NamedSharding(mesh, P(None, "population", ("data", "fsdp")))
  x = mesh_lib.from_host_copy(np.zeros((5, 8, 6)), sharding)
  assert {s.data.shape for s in x.addressable_shards} == {(5, 2, 3)}   # 2 of 8 members, half of each batch
  assert mesh_lib.host_slices(sharding, (5, 8, 6)) == (slice(0, 5), slice(0, 8), slice(0, 6))
  params = {"w": jax.ShapeDtypeStruct((3, 2), jnp.float32)}
  assert mesh_lib.param_shardings(params, mesh, population=True)["w"].spec == P("population")


def test_param_shardings_follow_the_rule():
  mesh = mesh_lib.make_mesh(mesh_cfg(num_devices=8, fsdp=8))
  params = {"big": jax.ShapeDtypeStruct((1024, 512), jnp.float32), "small": jax.ShapeDtypeStruct((8,), jnp.float32)}
  sh = mesh_lib.param_shardings(params, mesh)
  assert sh["big"].spec == P("fsdp", None) and sh["small"].spec == P()
