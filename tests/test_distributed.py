"""iclscale/distributed.py in one process: argument checks, agreement helpers, unreachable workdirs."""
import jax
import pytest

from iclscale import distributed
from iclscale.config import ConfigError


@pytest.mark.parametrize("kwargs,message", [
    (dict(coordinator_address="localhost:1", num_processes=2), "needs --process_id too"),
    (dict(coordinator_address="localhost:1", num_processes=2, process_id=2), "--process_id 2 is out of range"),
    (dict(coordinator_address="localhost:1", num_processes=0, process_id=0), "--num_processes must be >= 1"),
    (dict(coordinator_address="nohost", num_processes=2, process_id=1), "is not host:port"),
])
def test_bad_process_arguments_are_one_line_errors(kwargs, message):
  with pytest.raises(distributed.DistributedError, match=message.replace("-", r"\-")):
    distributed.initialize("auto", **kwargs)


def test_launcher_variables_are_read(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "5")
  with pytest.raises(distributed.DistributedError, match="--process_id 5 is out of range for --num_processes 2"):
    distributed.initialize("auto")


def test_one_process_agrees_with_itself():
  assert jax.process_count() == 1
  assert distributed.allgather_str("x", "a") == ["a"]
  assert distributed.all_true("y", True) and not distributed.all_true("y", False)
  assert distributed.on_process_zero("z", lambda: 3) == 3
  with pytest.raises(ConfigError, match="bad"):
    distributed.same_everywhere("w", lambda: (_ for _ in ()).throw(ConfigError("bad")))


def test_unreachable_bucket_is_one_clear_error():
  with pytest.raises(distributed.DistributedError, match="bucket gs://iclscale-no-such-bucket is not reachable"):
    distributed.check_workdir("gs://iclscale-no-such-bucket/runs/a", timeout=60)
  distributed.check_workdir("/tmp/local/dirs/are/not/checked")
