"""The 'fact_probes' evaluator: does the model answer from its weights or from its context?

Each probe item (tasks/facts.py) has two candidate answers, scored teacher-forced on the same prompt:
  context  the conflicting city stated in the in-context probe (in 'iw/trained', where nothing is in context,
           the same string: the no-context baseline of the in-context answer);
  weights  the memorized (trained) city; for held-out names the city they would have learned (a control).
Per answer: log-probability of all its tokens (`*_logp`), rank of its first token in the vocabulary at the
answer position (`*_rank`, 0 = top; the first token that differs between cities), and exact match (`*_exact`: every greedy answer token equals the city's,
i.e. greedy decoding produces the city); plus `prefers_context` (context logp > weights logp). Each metric is a
mean over the set's facts with the half-width of its 95% t-interval over facts (`*_ci95`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from iclscale import config as config_lib
from iclscale import contracts
from iclscale import losses
from iclscale import mesh as mesh_lib
from iclscale.analysis import stats
from iclscale.evaluators import batched

FACT_PROBES = dict(
    type="fact_probes",
    batch_size=8,        # probe sequences per forward pass (memory: batch_size x answer tokens x vocabulary logits)
)
ROW_KEYS = ("tokens", "answer_pos", "answer_tok", "answer_mask")


def first_distinct_slot(answer_tok_MxN: np.ndarray) -> int:
  """The first answer slot whose token is not the same in every row."""
  same_N = np.all(answer_tok_MxN == answer_tok_MxN[:1], axis=0)
  return int(np.argmin(same_N)) if not same_N.all() else 0


def summarize(scores: dict[str, np.ndarray]) -> dict[str, float]:
  """{metric: value} of one probe set from its per-row scores (first half context rows, second half weights)."""
  n = len(scores["logp"]) // 2
  per_fact = {f"{ans}_{m}": v[sl] for m, v in scores.items()
              for ans, sl in (("context", slice(0, n)), ("weights", slice(n, 2 * n)))}
  per_fact["prefers_context"] = (scores["logp"][:n] > scores["logp"][n:]).astype(np.float32)
  out = {}
  for m, v in per_fact.items():
    out[m], out[f"{m}_ci95"] = stats.mean_ci95(v)
  return out


class FactProbes(contracts.Evaluator):
  """All probe sets concatenated into one row batch: one compiled forward, split per set on the host."""

  def __init__(self, name: str, cfg, task: contracts.Task, apply: Callable, mesh):
    super().__init__(name)
    sets = task.eval_sets("probes", 0)
    self.sizes = {s: len(b["tokens"]) for s, b in sets.items()}
    rows = {k: np.concatenate([np.asarray(b[k]) for b in sets.values()]) for k in ROW_KEYS}
    rows = {k: batched.pad_rows(v, cfg.batch_size) for k, v in rows.items()}   # copies of row 0, ignored
    # The answer slot that tells the candidate cities apart: an array in `data`, as it differs between seeds.
    self.data = dict({k: mesh_lib.from_host_copy(v, mesh_lib.replicated(mesh)) for k, v in rows.items()},
                     slot=jax.numpy.int32(first_distinct_slot(rows["answer_tok"])))
    self.cfg, self.apply = cfg, apply

  def compute(self, params: Any, data: dict) -> dict:
    rows = {k: data[k] for k in ROW_KEYS}
    return batched.batched_apply(lambda p, b: losses.answer_scores(self.apply(p, b), b, data["slot"]), params,
                                 rows, self.cfg.batch_size)

  def rows(self, out: dict) -> contracts.Rows:
    rows, start = {}, 0
    for s, size in self.sizes.items():
      for m, v in summarize({k: x[start:start + size] for k, x in out.items()}).items():
        rows[(f"{self.name}/{s}", m)] = v
      start += size
    return rows

  def finalize(self, workdir: str) -> str:
    """The probe curves (analysis/facts_plot.py) from the run's results table."""
    from iclscale.analysis import facts_plot  # pylint: disable=g-import-not-at-top  # matplotlib, at the end only
    return facts_plot.plot(workdir, self.name)


def validate_fact_probes(name: str, cfg, parallelism: int) -> None:
  del parallelism  # the probe rows are few and replicated: any batch size runs on any mesh
  config_lib.check_positive(cfg, "batch_size", f"evals.{name}")

