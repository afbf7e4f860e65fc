"""The 'episode_accuracy' evaluator: answer accuracy of the episodic token tasks (tasks/episodes.py)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from iclscale import config as config_lib
from iclscale import contracts
from iclscale import losses
from iclscale import mesh as mesh_lib
from iclscale.evaluators import batched

EPISODE_ACCURACY = dict(
    type="episode_accuracy",
    sets="fewshot",         # fewshot: held-out episodes under every curriculum; episodes: the finetuned episode's
    batch_size=250,         # sequences per forward pass (fewshot sets are padded to a multiple of it)
)
PAD_BLOCK = -2              # `block` of padding rows: neither test (-1) nor study (0 = A, 1 = B)


def answer_metrics(logits_xNxV: jax.Array, batch: dict) -> dict[str, jax.Array]:
  """Exact match of all answer tokens and answer CE, over the test rows (block -1), the study rows (block >= 0)
  and each finetuning block of study rows (A = 0, B = 1)."""
  scores, block_x = losses.answer_scores(logits_xNxV, batch), batch["block"]
  hit_x, ce_x = scores["exact"], -scores["logp"]
  mean_where = lambda v, m: jnp.sum(jnp.where(m, v, 0.0)) / jnp.maximum(jnp.sum(m), 1)
  return dict(accuracy_test=mean_where(hit_x, block_x == -1), accuracy_study=mean_where(hit_x, block_x >= 0),
              accuracy_study_A=mean_where(hit_x, block_x == 0), accuracy_study_B=mean_where(hit_x, block_x == 1),
              ce_test=mean_where(ce_x, block_x == -1))


class EpisodeAccuracy(contracts.Evaluator):
  """Answer accuracy of episodic tasks (tasks/episodes.py) on test and study queries of held-out episodes.

  Sets are rows [N], run batch_size at a time (a set smaller than that in one batch) and padded to a multiple of
  it with rows that count nowhere. Sets are small: they are kept replicated."""

  def __init__(self, name: str, cfg, task: contracts.Task, apply: Callable, mesh):
    super().__init__(name)
    sets = task.eval_sets(cfg.sets, 0)
    self.set_names = list(sets)
    self.batch = {k: min(cfg.batch_size, len(s["block"])) for k, s in sets.items()}
    sets = {k: {f: batched.pad_rows(np.asarray(v), self.batch[k], PAD_BLOCK if f == "block" else 0)
                for f, v in s.items()} for k, s in sets.items()}
    self.data = jax.device_put(sets, mesh_lib.replicated(mesh))
    self.apply = apply

  def compute(self, params: Any, data: dict) -> dict:
    return {k: answer_metrics(batched.batched_apply(self.apply, params, s, self.batch[k]), s)
            for k, s in data.items()}

  def rows(self, out: dict) -> contracts.Rows:
    return {(f"{self.name}/{k}", m): float(v) for k, ms in out.items() for m, v in ms.items()}


def validate_episode_accuracy(name: str, cfg, parallelism: int) -> None:
  del parallelism  # the sets are replicated
  config_lib.check_one_of(cfg, "sets", f"evals.{name}", ("fewshot", "episodes"))
  config_lib.check_positive(cfg, "batch_size", f"evals.{name}")
