"""The Russin et al. 2024 study end to end at tiny scale: every condition runs, the metalearned weights stay
untouched by finetuning, and the table holds our values next to the paper's."""
import csv
import os

import numpy as np
import pytest

from iclscale import checkpoint, results
from iclscale.studies import russin_study

# One xdist worker runs this module (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.xdist_group("russin_study")]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  from iclscale import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("russin"))
  runs = russin_study.run_configs("grid", "tiny", 0, workdir)
  for name in ("meta_rule", "meta_rotated"):
    train.run(*runs[name])
  before = checkpoint.restore_params(runs["meta_rule"][1])
  rows = russin_study.main(["--task", "grid", "--scale", "tiny", "--seeds", "0", "--workdir", workdir])
  return workdir, runs, before, rows


def test_finetuning_leaves_the_metalearned_weights_untouched(study):
  _, runs, before, _ = study
  after = checkpoint.restore_params(runs["meta_rule"][1])
  np.testing.assert_equal(after, before)
  finetuned = checkpoint.restore_params(runs["ft_icl_iwl_rule_blocked"][1])   # [episodes, ...]: a population
  emb, base = finetuned["embed"]["embedding"], before["embed"]["embedding"]
  assert emb.shape == (4,) + base.shape
  assert all(not np.allclose(emb[i], base) for i in range(4))         # every copy moved
  assert not np.allclose(emb[0], emb[1])                               # each on its own episode


def test_icl_measures_agree_between_metalearning_and_finetuning_runs(study):
  """Step 0 of an ICL+IWL finetune run evaluates the metalearned weights on the same held-out episodes with the
  same curriculum as the metalearning run's last few-shot evaluation."""
  _, runs, _, _ = study
  meta = results.read(runs["meta_rule"][1])
  ft = results.read(runs["ft_icl_iwl_rule_blocked"][1])
  for metric in ("accuracy_test", "ce_test", "accuracy_study"):
    assert russin_study.last(ft, "heldout/finetuned", metric, first=True) == pytest.approx(
        russin_study.last(meta, "heldout/rule/blocked", metric), abs=1e-5)


def last_row(workdir: str, evaluator: str) -> dict[str, float]:
  """{metric: value} of `evaluator` at the last step of a run's results table; for a population (the finetuned
  episodes, one member each) the mean over its members."""
  rows = [r for r in results.read(workdir) if r["evaluator"] == evaluator]
  step = max(r["step"] for r in rows)
  per_metric: dict[str, list[float]] = {}
  for r in rows:
    if r["step"] == step:
      per_metric.setdefault(r["metric"], []).append(r["value"])
  return {m: float(np.mean(v)) for m, v in per_metric.items()}


def test_table_rows_and_outputs(study):
  workdir, runs, _, rows = study
  got = {(r["measure"], r["rotation"], r["curriculum"]): r for r in rows}
  assert len(got) == len(rows)
  for rot in ("rule", "rotated"):
    for sched in ("blocked", "interleaved"):
      for cond in ("iwl_only", "icl_iwl"):   # each cell is its run's held-out accuracy, read here independently
        final = last_row(runs[f"ft_{cond}_{rot}_{sched}"][1], "heldout/finetuned")
        assert got[(f"{cond}/retention", rot, sched)]["mean"] == pytest.approx(final["accuracy_study"], abs=1e-4)
        assert got[(f"{cond}/generalization", rot, sched)]["mean"] == pytest.approx(final["accuracy_test"],
                                                                                    abs=1e-4)
    for cur in ("blocked", "interleaved", "aligned", "misaligned"):
      assert (("icl/fewshot", rot, cur)) in got
  assert got[("icl/fewshot", "rule", "blocked")]["paper"] == 0.999
  assert got[("iwl_only/retention", "rule", "blocked")]["paper"] == 0.452
  assert got[("icl/fewshot", "rule", "aligned")]["paper"] == ""
  assert all(r["n"] == 1 and r["ci95"] == 0.0 for r in rows)
  assert got[("icl_iwl/fewshot", "rule", "blocked")]["mean"] == pytest.approx(
      got[("icl/fewshot", "rule", "blocked")]["mean"], abs=1e-6)
  for ext in ("csv", "md", "png"):
    assert os.path.getsize(os.path.join(workdir, f"russin_grid.{ext}")) > 0
  with open(os.path.join(workdir, "russin_grid.csv")) as f:
    assert len(list(csv.DictReader(f))) == len(rows)
