"""`profile.*` writes a JAX profiler trace of the configured steps into the workdir."""
import glob
import gzip
import json
import os

import pytest

from iclscale import train
from iclscale.config import ConfigError


def test_trace_of_the_configured_steps_is_written(tiny, tmp_path):
  config = tiny(**{"train.num_steps": 60, "profile.start_step": 20, "profile.num_steps": 20, "plot": False,
                   "eval_every": 0, "checkpoint.every": 0})
  out = train.run(config, str(tmp_path))
  assert out["step"] == 60
  assert glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  perfetto = glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "perfetto_trace.json.gz"))
  assert perfetto
  with gzip.open(perfetto[0]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  assert any("chunk" in str(e.get("name", "")) for e in events)  # the jitted K-step training chunk ran in it


def test_no_trace_by_default_and_bad_values_are_refused(tiny, tmp_path):
  train.run(tiny(**{"train.num_steps": 20, "plot": False, "eval_every": 0}), str(tmp_path))
  assert not os.path.exists(tmp_path / "profile")
  with pytest.raises(ConfigError, match="profile.num_steps"):
    train.resolve(tiny(**{"profile.num_steps": -1}))
