"""Transience metrics on hand-made curves, and the command end to end on hand-made results tables."""
import csv
import json
import math
import os

import numpy as np
import pytest

from iclscale.analysis import transience


def test_peak_slope_and_onset_of_a_rise_then_linear_decay_in_log_step():
  steps = np.array([10, 100, 1000, 10_000, 100_000])
  icl = np.array([0.5, 0.9, 0.8, 0.7, 0.6])       # peak at 100, then -0.1 per decade
  iwl = np.array([0.0, 0.1, 0.4, 0.6, 0.9])
  m = transience.transience_metrics(steps, icl, steps, iwl, iwl_threshold=0.5)
  assert m["icl_peak"] == 0.9 and m["icl_peak_step"] == 100
  assert m["icl_decay_slope"] == pytest.approx(-0.1)
  assert m["iwl_onset_step"] == 10_000 and m["icl_final"] == 0.6 and m["iwl_final"] == 0.9


def test_no_decay_points_and_no_onset_give_nan():
  steps = np.array([1, 10, 100])
  m = transience.transience_metrics(steps, np.array([0.1, 0.2, 0.9]), steps, np.array([0.0, 0.1, 0.2]))
  assert m["icl_peak_step"] == 100 and math.isnan(m["icl_decay_slope"]) and math.isnan(m["iwl_onset_step"])


def test_first_maximum_is_the_peak_and_plateaus_have_zero_slope():
  steps = np.array([10, 100, 1000, 10_000])
  m = transience.transience_metrics(steps, np.array([0.2, 0.8, 0.8, 0.8]), steps, np.zeros(4))
  assert m["icl_peak_step"] == 100 and m["icl_decay_slope"] == pytest.approx(0.0, abs=1e-12)


def write_run(path, l2, classes, icl, iwl):
  os.makedirs(path)
  steps = [100, 1000, 10_000, 100_000]
  with open(os.path.join(path, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["step", "evaluator", "metric", "value"])
    for s, a, b in zip(steps, icl, iwl):
      w.writerow([s, "icl_iwl/fewshot_holdout", "accuracy_closed", a])
      w.writerow([s, "icl_iwl/no_support", "accuracy_closed", b])
      w.writerow([s, "train", "loss", 1.0 / s])
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"task.name": "bursty", "task.dataset": "synthetic", "task.synthetic_classes": classes,
               "optim.l2": l2}, f)


def test_command_writes_the_summary_and_figures(tmp_path):
  a, b = str(tmp_path / "l2_0"), str(tmp_path / "l2_1e-4")
  write_run(a, 0.0, 100, [0.6, 0.9, 0.7, 0.5], [0.0, 0.2, 0.6, 0.9])
  write_run(b, 1e-4, 200, [0.6, 0.9, 0.9, 0.85], [0.0, 0.1, 0.3, 0.6])
  out = str(tmp_path / "out")
  summaries = transience.main([a, b, "--out", out])
  assert summaries[0]["icl_decay_slope"] == pytest.approx(-0.2) and summaries[0]["iwl_onset_step"] == 10_000
  assert summaries[1]["l2"] == 1e-4 and summaries[1]["num_classes"] == 200
  for name in ("transience_summary.csv", "l2_0_curves.png", "slope_vs_l2.png", "peak_vs_classes.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  with open(os.path.join(out, "transience_summary.csv")) as f:
    assert len(list(csv.DictReader(f))) == 2


def test_a_population_run_gives_one_summary_per_member_with_its_own_l2(tmp_path):
  from iclscale import results
  run = tmp_path / "pop"
  table = results.ResultsTable(str(run), resume_step=-1, columns=("member", "optim.l2"))
  curves = {0: ([0.6, 0.9, 0.7, 0.5], 0.0), 1: ([0.6, 0.9, 0.9, 0.85], 1e-3)}   # l2 = 1e-3 keeps ICL
  for step_i, step in enumerate([100, 1000, 10_000, 100_000]):
    for m, (icl, l2) in curves.items():
      table.append(step, {("icl_iwl/fewshot_holdout", "accuracy_closed"): icl[step_i],
                          ("icl_iwl/no_support", "accuracy_closed"): 0.1 * step_i, ("train", "loss"): 1.0 / step},
                   member={"member": m, "optim.l2": l2})
    table.commit(step)
  with open(run / "config.json", "w") as f:
    json.dump({"task.name": "bursty", "task.synthetic_classes": 300}, f)
  out = str(tmp_path / "out")
  s0, s1 = transience.main([str(run), "--out", out])
  assert (s0["name"], s1["name"]) == ("pop/0_l2=0", "pop/1_l2=0.001")
  assert (s0["l2"], s1["l2"]) == (0.0, 1e-3) and s0["num_classes"] == s1["num_classes"] == 300
  assert s0["icl_decay_slope"] == pytest.approx(-0.2) and s1["icl_decay_slope"] == pytest.approx(-0.025)
  assert os.path.getsize(os.path.join(out, "pop_1_l2=0.001_curves.png")) > 0
  early, _ = transience.main([str(run), "--out", out, "--until", "1000"])   # a common horizon: steps <= 1000
  assert early["last_step"] == 1000 and early["icl_final"] == 0.9 and math.isnan(early["icl_decay_slope"])
