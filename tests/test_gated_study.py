"""The gated-model study driver: reading transformer runs' results tables and locating the error crossings."""
import json
import os

import numpy as np
import pytest

from iclscale.studies import gated_study


def test_study_reads_transformer_runs_and_finds_crossings(tmp_path):
  # two finished runs at p_relevant 0.9, a baseline at p = 0 and an unfinished run: only the first two count
  for name, n, err, p, steps in (("a", 64, 0.2, 0.9, 20), ("b", 1024, 0.9, 0.9, 20), ("c", 64, 0.7, 0.0, 20),
                                 ("d", 256, 0.1, 0.9, 40)):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"task.dataset_size": n, "task.input_noise": 0.2, "task.p_high": 0.9,
                                               "task.p_relevant": p, "train.num_steps": steps}))
    (d / "results.csv").write_text("step,evaluator,metric,value\n"
                                   f"10,grid/oobd/relevant/C_L,error,0.5\n20,grid/oobd/relevant/C_L,error,{err}\n"
                                   "20,train,loss,1.0\n")
  rows = sorted(gated_study.transformer_rows(str(tmp_path), 0.9), key=lambda r: r["N"])
  assert [(r["N"], r["set"], r["value"], r["sigma"]) for r in rows] == [(64, "oobd/relevant/C_L", 0.2, 0.2),
                                                                        (1024, "oobd/relevant/C_L", 0.9, 0.2)]
  ns = np.array([64, 128, 256])
  assert gated_study.crossing(ns, np.array([0.2, 0.4, 0.6])) == pytest.approx(2 ** 7.5)
  assert gated_study.crossing(ns, np.array([0.6, 0.7, 0.8])) == 64
  assert gated_study.crossing(ns, np.array([0.1, 0.2, 0.3])) == float("inf")
  assert os.path.exists(gated_study.CONFIG)


def test_population_sweep_equals_the_one_at_a_time_runs(tmp_path):
  """σ members trained once to the largest N and read at every N equal the separate N-step runs (the data is a
  stream and the learners' clocks do not depend on the run's length), for every seed."""
  sc = dict(gated_study.SCALES["tiny"], seeds=(0, 1), sigmas=(0.1, 0.3))
  pop = gated_study.sweep_population(str(tmp_path / "pop"), sc)
  runs = gated_study.gated_rows(gated_study.sweep(str(tmp_path / "runs"), sc))
  key = lambda r: (r["sigma"], r["p_high"], r["seed"], r["N"], r["set"], r["metric"])
  assert len(pop) == len(runs) > 0
  want = {key(r): r["value"] for r in runs}
  for r in pop:
    assert r["value"] == pytest.approx(want[key(r)], rel=1e-5, abs=1e-6), key(r)
