"""Mixed precision (model.dtype): bfloat16 matmuls, float32 parameters/optimizer state/loss, f32-close training."""
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iclscale import mesh as mesh_lib
from iclscale import models
from iclscale import tasks
from iclscale import train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Each model family's tiny config: transformer (stylized), transformer + ResNet encoder (Omniglot), the Russin
# decoder, Gemma 3 (tiny random weights).
TINY = {
    "transformer": ("chan2024_synthetic", "tiny"),
    "resnet": ("singh2023_omniglot", "tiny"),
    "decoder": ("russin2024", "grid,tiny"),
    "gemma3": ("gemma_finetune", "tiny"),
}


def built(name, dtype):
  module, arg = TINY[name]
  config = importlib.import_module(f"configs.{module}").get_config(arg)
  config.model.dtype = dtype
  config.mesh.num_devices = 1
  cfg = train.resolve(config)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  with jax.set_mesh(mesh):
    task = tasks.build(cfg.task, cfg.seed)
    model = models.build(cfg.model, task)
    state, _, _ = train.init_state(cfg, task, model, mesh)
    n = 2
    batch = jax.jit(task.batch)(task.arrays, jnp.arange(n, dtype=jnp.uint32), jnp.int32(0))
  return cfg, task, model, state, batch


def contractions(jaxpr):
  """(primitive, operand dtypes, module scope) of every dot_general / convolution, nested jaxprs included."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
      dtypes = tuple(str(v.aval.dtype) for v in eqn.invars)
      out.append((eqn.primitive.name, dtypes, str(eqn.source_info.name_stack)))
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else (p,)):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          out += contractions(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          out += contractions(sub)
  return out


@pytest.mark.parametrize("name", list(TINY))
def test_bf16_runs_every_matmul_in_bf16_and_keeps_f32_state(name):
  cfg, task, model, state, batch = built(name, "bfloat16")
  loss_of = model.loss  # the Model contract's loss (query CE unless the model names another)

  def loss(params):
    out = model.apply(params, batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(out))  # the loss sees float32 logits
    return loss_of(out, batch)[0]

  jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(state["params"])
  found = contractions(jaxpr.jaxpr)
  assert found, "no matmul found"
  # No float32 matmul is left outside LayerNorm. The transformer's LayerNorm (models/transformer.py) computes its
  # statistics in float32 on purpose, as flax's does, and takes its means as matrix-vector products with a 1/D
  # vector: those contractions (forward and backward) are float32 by design. Mixed ones (a float32 cotangent x a
  # bf16 operand) are allowed only where a library kernel accumulates in float32 on purpose:
  # jax.nn.dot_product_attention (the decoder) computes its logits with preferred_element_type=float32, so their
  # backward contractions see a float32 cotangent.
  in_layer_norm = lambda c: re.search(r"\bln_\w+\)?$", c[2]) is not None
  f32 = [c for c in found if all(d == "float32" for d in c[1]) and not in_layer_norm(c)]
  norm = [c for c in found if in_layer_norm(c)]
  assert all(d == "float32" for c in norm for d in c[1]), f"LayerNorm statistics must stay float32: {norm}"
  assert not f32, f"{len(f32)} of {len(found)} contractions in float32: {f32[:3]}"
  found = [c for c in found if not in_layer_norm(c)]
  bf16 = [c for c in found if all(d == "bfloat16" for d in c[1])]
  assert len(bf16) >= 0.85 * len(found), f"only {len(bf16)} of {len(found)} contractions in bfloat16: {found}"
  # parameters, gradients and the optimizer state stay float32
  floats = lambda t: [x.dtype for x in jax.tree.leaves(t) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert set(floats(state["params"])) == {jnp.dtype("float32")}
  assert set(floats(state["opt_state"])) == {jnp.dtype("float32")}
  assert set(str(a.dtype) for a in jaxpr.out_avals) == {"float32"}
  assert cfg.model.dtype == "bfloat16"


def test_float32_default_has_no_bf16():
  cfg, task, model, state, batch = built("transformer", "float32")
  assert cfg.model.dtype == "float32"
  found = contractions(jax.make_jaxpr(model.apply)(state["params"], batch).jaxpr)
  assert found and all(d == "float32" for _, ds, _ in found for d in ds)


def test_unknown_dtype_is_refused(tiny):
  from iclscale.config import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="model.dtype"):
    train.resolve(tiny(**{"model.dtype": "float16"}))


# Tolerance: bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2% per op), so individual logits differ by
# ~1e-2; over 300 steps of the tiny stylized run the trajectories drift apart but learn the same task: the final
# train loss (averaged over the last 50 steps) agrees within 0.05 absolute and both reach the same accuracy within
# 3 points; the in-distribution evaluation error within 0.03.
LOSS_ATOL, ACC_ATOL, ERR_ATOL = 0.05, 0.03, 0.03


def test_bf16_training_tracks_f32(tiny, tmp_path):
  outs = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny(**{"model.dtype": dtype, "train.num_steps": 300, "plot": False, "eval_every": 300})
    outs[dtype] = train.run(config, str(tmp_path / dtype))
  f32, bf16 = outs["float32"], outs["bfloat16"]
  assert f32["train"]["train/loss"] < 0.2  # it learned (the untrained loss is ln 10 = 2.3)
  assert abs(bf16["train"]["train/loss"] - f32["train"]["train/loss"]) < LOSS_ATOL
  assert abs(bf16["train"]["train/accuracy"] - f32["train"]["train/accuracy"]) < ACC_ATOL
  key = ("grid/ibd/default/all", "error")
  assert abs(bf16["evals"][key] - f32["evals"][key]) < ERR_ATOL
