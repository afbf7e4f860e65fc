"""Milestones, periodic-action timing and the workdir config guard."""
import json

import pytest

from iclscale import checkpoint
from iclscale.config import ConfigError


def test_milestones_are_log_spaced_and_independent_of_run_length():
  m = checkpoint.milestones(10_000, per_decade=2, multiple=1)
  assert m == [1, 3, 10, 32, 100, 316, 1000, 3162, 10000]
  assert checkpoint.milestones(100, per_decade=2, multiple=1) == m[:5]   # a prefix: extending keeps them


def test_milestones_round_up_to_the_dispatch_size():
  assert checkpoint.milestones(1000, per_decade=1, multiple=30) == [30, 120]
  assert checkpoint.milestones(1000, per_decade=0, multiple=1) == []


def test_itstime():
  assert checkpoint.itstime(200, 100) and not checkpoint.itstime(150, 100)
  assert checkpoint.itstime(150, 100, total=150)
  assert checkpoint.itstime(30, 0, at={30}) and not checkpoint.itstime(30, 0)


def test_guard_allows_extending_but_refuses_other_changes(tmp_path, tiny):
  assert checkpoint.guard_workdir(str(tmp_path), tiny()) is False
  assert checkpoint.guard_workdir(str(tmp_path), tiny(**{"train.num_steps": 10_000, "eval_every": 500})) is True
  with pytest.raises(ConfigError, match=r"task.input_noise: 0.2 -> 0.4"):
    checkpoint.guard_workdir(str(tmp_path), tiny(**{"task.input_noise": 0.4}))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["task.input_noise"] == 0.2 and "train.num_steps" not in saved
