"""Everything a run writes besides checkpoints: CLU summaries, progress reports, the results table, evaluations.

Built by the loop before its first dispatch; CLU's writers pull in TensorFlow, which the loop imports in a
background thread while the run is set up and compiled (train.run). Evaluations are started and finished apart
(start_evaluation / finish_evaluation), so the loop can dispatch more training before it fetches their results.
Only process 0 writes summaries and reports progress (as big_vision and maxtext do); the other processes of a
multi-process run build no CLU writer, so they never import TensorFlow.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from iclscale import config as config_lib
from iclscale import distributed
from iclscale import evaluators
from iclscale import population as population_lib
from iclscale.results import ResultsTable

METRICS = ("loss", "accuracy", "grad_norm")   # train metrics summed in the state and averaged per log window


class SilentWriter:
  """The summary writer of processes other than 0: process 0 writes the run's summaries, these write nothing."""

  def write_scalars(self, step: int, scalars: dict) -> None:
    del step, scalars

  def write_hparams(self, hparams: dict) -> None:
    del hparams

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def no_report(step: int, barrier: Any = None) -> bool:
  """The progress report of processes other than 0 (process 0 reports the run's progress)."""
  del step, barrier
  return False


class Outputs:
  """Everything the run writes besides checkpoints: CLU summaries, progress reports, the results table, sweeps.

  A population writes one results table with its
  members' varying fields as columns, and one TensorBoard run per member (members/<name>/) beside the progress
  summaries of the whole program.
  """

  def __init__(self, cfg, workdir, task_list, model, mesh, resume_step, fresh, lr_fn,
               members: population_lib.Members | None = None):
    self.members = members
    writes = jax.process_index() == 0
    self.results = ResultsTable(workdir, resume_step, ("member",) + members.fields if members else ())
    if writes:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      from iclscale import progress  # pylint: disable=g-import-not-at-top  # imports CLU
      writer = lambda d, **kw: metric_writers.create_default_writer(d, **kw)
    else:
      writer = lambda d, **kw: SilentWriter()
    self.writer = writer(workdir)
    if members is None:
      self.views = [(self.writer, None, cfg)]
    else:
      self.views = [(writer(os.path.join(workdir, "members", members.name(i)), asynchronous=False),
                     members.columns(i), members.cfgs[i]) for i in range(members.size)]
    if fresh:
      for writer, _, view_cfg in self.views:
        writer.write_hparams({n: (v if isinstance(v, (int, float, str, bool)) else str(v))
                              for n, v in config_lib.flatten(view_cfg).items()})
    self.report = progress.SyncedProgress(num_train_steps=cfg.train.num_steps, writer=self.writer,
                                          every_secs=cfg.report_every_secs) if writes else no_report
    built = [evaluators.build(cfg.evals, t, model.apply, mesh) for t in task_list]
    if members is None:
      self.evaluators = built[0]
    else:
      from iclscale.evaluators import stacked  # pylint: disable=g-import-not-at-top
      self.evaluators = [stacked.Stacked([b[j] for b in built], mesh) for j in range(len(built[0]))]
    self.lr_fn = lr_fn
    self.lrs = [view_cfg.optim.lr for _, _, view_cfg in self.views]
    self.shared_lr = cfg.optim.lr   # the optimizer's: a member's updates are scaled by its lr over this one
    self.last_train: list[dict[str, float]] = [{} for _ in self.views]
    self.last_evals: list[dict] = [{} for _ in self.views]

  def log_train(self, step: int, sums: dict) -> None:
    sums = distributed.fetch(sums)
    for i, (writer, columns, _) in enumerate(self.views):
      member_sums = {m: v if self.members is None else v[i] for m, v in sums.items()}
      if not member_sums["count"]:
        return
      out = {f"train/{m}": float(member_sums[m] / member_sums["count"]) for m in METRICS}
      out["train/lr"] = float(self.lr_fn(step)) * self.lrs[i] / self.shared_lr  # a member's own lr
      if not np.isfinite(out["train/loss"]):
        who = "" if columns is None else f" of population member {columns}"
        raise FloatingPointError(
            f"training loss{who} is {out['train/loss']} at step {step}; stopped. Re-run the same command with a "
            f"lower learning rate or with clipping (e.g. --config.optim.lr={self.lrs[i] / 3:.3g} or "
            "--config.optim.grad_clip=1.0) to resume from the last checkpoint; the change is recorded in "
            "history.jsonl")
      writer.write_scalars(step, out)
      self.last_train[i] = out

  def evaluate(self, step: int, params: Any) -> None:
    self.finish_evaluation(step, self.start_evaluation(params))

  def start_evaluation(self, params: Any) -> list:
    """Dispatches every evaluator on `params` without waiting (finish_evaluation writes the results)."""
    distributed.barrier("evaluate")
    return [ev.start(params) for ev in self.evaluators]

  def finish_evaluation(self, step: int, started: list) -> None:
    """Fetches the started evaluations and writes them: summaries, the results table, last_evals."""
    values = [{} for _ in self.views]
    for ev, out in zip(self.evaluators, started):
      out = ev.finish(out)
      for i, rows in enumerate([out] if self.members is None else out):
        values[i].update(rows)
    for i, (writer, columns, _) in enumerate(self.views):
      values[i].update({("train", name.split("/", 1)[1]): v for name, v in self.last_train[i].items()})
      writer.write_scalars(step, {f"{e}/{m}": v for (e, m), v in values[i].items()})
      self.results.append(step, values[i], columns)
    self.last_evals = values

  def close(self) -> None:
    self.results.close()
    for writer in {id(w): w for w, _, _ in self.views + [(self.writer, None, None)]}.values():
      writer.flush()
      writer.close()
