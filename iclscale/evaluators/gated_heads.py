"""The 'gated_heads' evaluator: the gated model's f, g and h side by side on the task's evaluation sets."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from iclscale import config as config_lib
from iclscale.evaluators import classification
from iclscale.models import gated

GATED_HEADS = dict(
    type="gated_heads",
    sets="grid",            # which family of evaluation sets the task builds (the stylized IBD/OOBD grid)
    num_examples=1000,      # sequences per set
    batch_size=500,         # sequences per forward pass
    prob_floor=1e-7,        # probabilities clipped here before the cross-entropy (h is 0 off its context labels)
)


def head_metrics(out: dict, batch: dict, floor: float) -> dict[str, jax.Array]:
  """f's error/accuracy/ce under the usual names (so f compares with any model), g_* and h_*, and mean α."""
  per = gated.head_losses(out, batch["target"], floor)
  ce_g = optax.softmax_cross_entropy_with_integer_labels(out["log_g"], batch["target"])  # log_g is normalized
  metrics = dict(error=per["f_err"].mean(), accuracy=(1.0 - per["f_err"]).mean(), ce=per["f"].mean(),
                 g_error=per["g_err"].mean(), g_ce=ce_g.mean(), h_error=per["h_err"].mean(), h_ce=per["h"].mean(),
                 alpha=out["alpha"].mean())
  if "context_has_query" in batch:
    metrics["context_has_query"] = batch["context_has_query"].astype(jnp.float32).mean()
  return metrics


class GatedHeads(classification.QueryClassification):
  """QueryClassification's sets and stacking, with metrics of f, g, h and α instead of a logits readout."""

  def set_metrics(self, cfg, outputs: dict, batch: dict) -> dict[str, jax.Array]:
    return head_metrics(outputs, batch, cfg.prob_floor)


def validate_gated_heads(name: str, cfg, parallelism: int) -> None:
  classification.validate_query_classification(name, cfg, parallelism)
  config_lib.check(0.0 < cfg.prob_floor < 1.0, f"evals.{name}.prob_floor", f"must lie in (0, 1), got {cfg.prob_floor}")
