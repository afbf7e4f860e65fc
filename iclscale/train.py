"""THE training loop: every study enters here with a config and a workdir.

The loop knows no study: it asks the task for sequences (by index and step, on the device), the model registry
for a model, the optimizer builder for a chain and the evaluator registry for sweeps. It sees plug-ins only
through the contracts of iclscale/contracts.py. K steps run per dispatch inside
one `lax.scan`; the host reads device values only at logging/eval/checkpoint times, and nothing it keeps grows
with the step count, so 5e7-step runs are practical.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from iclscale import cache
from iclscale import checkpoint as ckpt_lib
from iclscale import config as config_lib
from iclscale import contracts
from iclscale import distributed
from iclscale import evaluators
from iclscale import mesh as mesh_lib
from iclscale import models
from iclscale import optim
from iclscale import pipeline
from iclscale import preemption as preemption_lib
from iclscale import profiling
from iclscale import tasks
from iclscale.results import ResultsTable

TRAIN_DEFAULTS = dict(
    num_steps=20_000,        # total optimizer steps
    batch_size=32,           # global batch (sequences per step), split over the data-parallel devices
    steps_per_dispatch=10,   # K steps per jitted call (lax.scan); every cadence below must be a multiple of K
    log_every=1000,          # write averaged train loss/accuracy/grad-norm and the lr every this many steps
    eval_at_start=False,     # also run the evaluators on the initial params (step 0): fine-tuning's baseline
)
TOP_FIELDS = ("seed", "task", "model", "optim", "train", "data", "mesh", "checkpoint", "eval_every", "evals",
              "report_every_secs", "plot", "profile")
OPTIONAL_FIELDS = ("profile",)  # sections with defaults for every field: a config may leave them out
METRICS = ("loss", "accuracy", "grad_norm")


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Validates the whole config (one clear ConfigError line) and fills in every plug-in's defaults."""
  for key in config.keys():
    config_lib.check(key in TOP_FIELDS, key, f"unknown field (known: {', '.join(TOP_FIELDS)})")
  for key in TOP_FIELDS:
    config_lib.check(key in config or key in OPTIONAL_FIELDS, key, "missing")
  config_lib.check(isinstance(config.seed, int) and config.seed >= 0, "seed", f"must be an int >= 0, got {config.seed!r}")
  out = ml_collections.ConfigDict()
  out.seed = config.seed
  out.task = tasks.resolve(config.task)
  out.model = models.resolve(config.model, tasks.input_shape(out.task))
  out.optim = config_lib.with_defaults(config.optim, optim.DEFAULTS, "optim")
  optim.validate(out.optim)
  out.train = tr = config_lib.with_defaults(config.train, TRAIN_DEFAULTS, "train")
  for f in ("num_steps", "batch_size", "steps_per_dispatch", "log_every"):
    config_lib.check_positive(tr, f, "train")
  out.data = config_lib.with_defaults(config.data, pipeline.DEFAULTS, "data")
  config_lib.check_one_of(out.data, "pipeline", "data", ("grain", "device"))
  config_lib.check_positive(out.data, "prefetch", "data")
  out.mesh = config_lib.with_defaults(config.mesh, mesh_lib.DEFAULTS, "mesh")
  out.checkpoint = config_lib.with_defaults(config.checkpoint, ckpt_lib.DEFAULTS, "checkpoint")
  ckpt_lib.validate(out.checkpoint)
  k = tr.steps_per_dispatch
  for name, v in (("train.num_steps", tr.num_steps), ("train.log_every", tr.log_every),
                  ("eval_every", config.eval_every), ("checkpoint.every", out.checkpoint.every)):
    config_lib.check(isinstance(v, int) and v >= 0 and v % k == 0, name,
                     f"must be a multiple of train.steps_per_dispatch={k}, got {v!r}")
  out.eval_every = config.eval_every
  parallelism = mesh_lib.batch_parallelism(out.mesh)
  config_lib.check(tr.batch_size % parallelism == 0, "train.batch_size",
                   f"{tr.batch_size} is not divisible by the data-parallel size {parallelism}")
  copies = tasks.num_copies(out.task)
  if copies > 1:  # independent model copies (contracts.TaskSpec.num_copies, models.with_copies)
    config_lib.check(tr.batch_size % copies == 0, "train.batch_size",
                     f"{tr.batch_size} does not split over the task's {copies} model copies")
    config_lib.check(not out.optim.grad_clip, "optim.grad_clip",
                     "a global-norm clip couples the independent model copies; set 0")
  out.evals = evaluators.resolve(config.evals, parallelism)
  config_lib.check(isinstance(config.report_every_secs, (int, float)) and config.report_every_secs > 0,
                   "report_every_secs", f"must be > 0, got {config.report_every_secs!r}")
  out.report_every_secs = config.report_every_secs
  out.plot = config.plot
  out.profile = config_lib.with_defaults(config.get("profile", {}), profiling.DEFAULTS, "profile")
  profiling.validate(out.profile)
  return out


def enable_compilation_cache(path: str | None = None, min_compile_secs: float = 0.5) -> None:
  """Persist compiled programs across processes: re-runs, resumes and sweep members start without compiling.

  The cache is `path`, else $ICLSCALE_JAX_CACHE, else the project cache's jax/ folder (cache.cache_dir); programs
  that compile faster than `min_compile_secs` are not stored.
  """
  path = path or os.environ.get("ICLSCALE_JAX_CACHE") or str(cache.cache_dir("jax"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)


def zero_sums() -> dict:
  return {m: jnp.zeros((), jnp.float32) for m in METRICS + ("count",)}


def make_train_chunk(cfg, task: contracts.Task, model: contracts.Model, tx, mesh):
  """(state, arrays, indices [K, B] or None) -> state after K steps: one scan, one dispatch.

  The state carries running sums of the train metrics, so the host reads them only when it logs, and a resumed
  run continues the same logging window as an uninterrupted one.
  """
  sampler_key = jax.random.fold_in(jax.random.key(cfg.seed), 0x5A3)

  def loss_fn(params, batch):
    loss, metrics = model.loss(model.apply(params, batch), batch)
    return loss + optim.penalty(cfg.optim, params), metrics

  def one_step(carry, idx_B):
    state, arrays = carry
    if idx_B is None:  # device-side sampling: the bound the Grain pipeline is measured against
      idx_B = pipeline.device_indices(sampler_key, task.dataset_size, cfg.train.batch_size, state["step"])
    # Every task gets the step (scheduled tasks read it): the data of step t stays a function of (seed, t).
    batch = task.batch(arrays, idx_B, state["step"])
    batch = jax.lax.with_sharding_constraint(batch, jax.tree.map(lambda x: mesh_lib.batch_spec(x.ndim), batch))
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), count=1.0)
    sums = {m: state["sums"][m] + metrics[m] for m in state["sums"]}
    return (dict(params=optax.apply_updates(state["params"], updates), opt_state=opt_state,
                 step=state["step"] + 1, sums=sums), arrays), None

  def chunk(state, arrays, idx_KxB):
    (state, _), _ = jax.lax.scan(one_step, (state, arrays), idx_KxB, length=cfg.train.steps_per_dispatch)
    return state

  return jax.jit(chunk, donate_argnums=0)


def load_params(model: contracts.Model, abstract: Any) -> Any | None:
  """Host arrays of the model's starting weights (another run's checkpoint or pretrained ones) in the initialized
  tree `abstract`, or None when the model starts from `init`. Copies all start from one copy's weights."""
  if not (model.init_from or model.load):
    return None
  one = abstract if model.copies == 1 else jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype),
                                                        abstract)
  if model.init_from:
    params = ckpt_lib.restore_params(model.init_from, one, "model.init_from")
  else:
    params = model.load(one)
    same = jax.tree.structure(params) == jax.tree.structure(one) and all(
        np.shape(p) == s.shape for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(one)))
    config_lib.check(same, "model", "the loaded weights do not have the initialized model's parameter shapes")
  if model.copies == 1:
    return params
  return jax.tree.map(lambda x: np.broadcast_to(x, (model.copies,) + np.shape(x)).copy(), params)


def init_state(cfg, task: contracts.Task, model: contracts.Model, mesh):
  """Parameters initialized (or loaded: see `load_params`) directly with their shardings, the optimizer chain,
  and the train state."""
  example = jax.eval_shape(task.batch, task.arrays,
                           jnp.zeros(pipeline.index_shape(task.dataset_size, 2 * model.copies), jnp.uint32),
                           jnp.zeros((), jnp.int32))
  init_key = jax.random.fold_in(jax.random.key(cfg.seed), 0x1417)

  def init_params(key):
    return model.init(key, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example))

  abstract = jax.eval_shape(init_params, init_key)
  loaded = load_params(model, abstract)
  shardings = mesh_lib.param_shardings(abstract, mesh, model.param_specs and model.param_specs(abstract, mesh))
  tx, lr_fn = optim.build(cfg.optim, abstract, cfg.train.num_steps)

  def rest(params):
    opt_state = tx.init(params)
    # Adam's moments are zeros, with no data dependence on params to propagate their sharding: constrain them.
    is_params = lambda x: jax.tree.structure(x) == jax.tree.structure(abstract)
    opt_shardings = jax.tree.map(lambda x: shardings if is_params(x) else mesh_lib.replicated(mesh), opt_state,
                                 is_leaf=is_params)
    return dict(opt_state=jax.lax.with_sharding_constraint(opt_state, opt_shardings),
                step=jnp.zeros((), jnp.int32), sums=zero_sums())

  if loaded is None:
    def init(key):
      params = jax.lax.with_sharding_constraint(init_params(key), shardings)
      return dict(params=params, **rest(params))
    return jax.jit(init)(init_key), tx, lr_fn
  params = jax.device_put(loaded, shardings)  # host -> each device's shards, never a full copy per device
  del loaded
  return dict(params=params, **jax.jit(rest)(params)), tx, lr_fn


class Outputs:
  """Everything the run writes besides checkpoints: CLU summaries, progress reports, the results table, sweeps.

  Built after the first training dispatch, so the slow imports (CLU pulls in TensorFlow) and the evaluators'
  compilation overlap with training instead of delaying it.
  """

  def __init__(self, cfg, workdir, task, model, mesh, resume_step, fresh, lr_fn):
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self.results = ResultsTable(workdir, resume_step)
    self.writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if fresh:
      self.writer.write_hparams({n: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                 for n, v in config_lib.flatten(cfg).items()})
    from iclscale import progress  # pylint: disable=g-import-not-at-top  # imports CLU
    self.report = progress.SyncedProgress(num_train_steps=cfg.train.num_steps, writer=self.writer,
                                          every_secs=cfg.report_every_secs)
    self.evaluators = evaluators.build(cfg.evals, task, model.apply, mesh)
    self.lr_fn = lr_fn
    self.lr = cfg.optim.lr
    self.last_train: dict[str, float] = {}
    self.last_evals: dict = {}

  def log_train(self, step: int, sums: dict) -> None:
    sums = jax.device_get(sums)
    if not sums["count"]:
      return
    out = {f"train/{m}": float(sums[m] / sums["count"]) for m in METRICS}
    out["train/lr"] = float(self.lr_fn(step))
    if not np.isfinite(out["train/loss"]):
      raise FloatingPointError(
          f"training loss is {out['train/loss']} at step {step}; stopped. Re-run the same command with a lower "
          f"learning rate or with clipping (e.g. --config.optim.lr={self.lr / 3:.3g} or "
          "--config.optim.grad_clip=1.0) to resume from the last checkpoint; the change is recorded in "
          "history.jsonl")
    self.writer.write_scalars(step, out)
    self.last_train = out

  def evaluate(self, step: int, params: Any) -> None:
    distributed.barrier("evaluate")
    values = {}
    for ev in self.evaluators:
      values.update(ev(params))
    values.update({("train", name.split("/", 1)[1]): v for name, v in self.last_train.items()})
    self.writer.write_scalars(step, {f"{e}/{m}": v for (e, m), v in values.items()})
    self.results.append(step, values)
    self.last_evals = values

  def close(self) -> None:
    self.results.close()
    self.writer.flush()
    self.writer.close()


def guard_workdir(workdir: str, cfg) -> bool:
  """checkpoint.guard_workdir, and a run is extended, never shortened: its checkpoints are kept."""
  latest = ckpt_lib.latest_saved_step(workdir)
  if latest is not None and latest > cfg.train.num_steps:
    raise config_lib.ConfigError(
        f"train.num_steps: {workdir} holds a run already at step {latest}, past train.num_steps="
        f"{cfg.train.num_steps}; re-run with --config.train.num_steps={latest} or more (its checkpoints are "
        "kept), or use another --workdir")
  return ckpt_lib.guard_workdir(workdir, cfg)


def run(config: ml_collections.ConfigDict, workdir: str, start_time: float | None = None) -> dict:
  """Trains (or resumes) the run `config` in `workdir`; returns the last train and eval metrics."""
  start_time = start_time or time.time()
  # Every ConfigError is raised here, before anything is built or compiled, and on every process alike.
  cfg = distributed.same_everywhere("config", lambda: resolve(config))
  distributed.on_process_zero("writable", lambda: ckpt_lib.check_writable(workdir))
  mesh = mesh_lib.make_mesh(cfg.mesh)
  tr, k = cfg.train, cfg.train.steps_per_dispatch
  outputs = None
  with jax.set_mesh(mesh):
    task = tasks.build(cfg.task, cfg.seed)  # reads its data first: a missing data set leaves no run record behind
    # Decided once, on process 0, from the workdir's files: every process then acts on the same answer.
    fresh = not distributed.on_process_zero("workdir", lambda: guard_workdir(workdir, cfg))
    task.arrays = jax.tree.map(lambda x: jax.device_put(x, mesh_lib.replicated(mesh)), task.arrays)
    model = models.build(cfg.model, task, tasks.num_copies(cfg.task))
    state, tx, lr_fn = init_state(cfg, task, model, mesh)
    train_chunk = make_train_chunk(cfg, task, model, tx, mesh)
    data_iter = None
    if cfg.data.pipeline == "grain":
      data_iter = pipeline.make_iterator(cfg.seed, task.dataset_size, tr.batch_size, k, tr.num_steps,
                                         mesh_lib.host_rows(tr.batch_size, mesh), cfg.data.prefetch)
    idx_shape = (k,) + pipeline.index_shape(task.dataset_size, tr.batch_size)  # [K, B] or [K, B, 2]
    idx_sharding = jax.sharding.NamedSharding(mesh, mesh_lib.batch_spec(len(idx_shape), batch_dim=1))

    checkpointer = ckpt_lib.Checkpointer(workdir, cfg.checkpoint, tr.num_steps, k)
    restored = None if fresh else checkpointer.restore(state, data_iter)
    start_step = step = 0
    if restored is not None:
      step, state = restored
      start_step = step
      logging.info("Resumed from the checkpoint at step %d in %s", step, workdir)
    saved_step = step if restored is not None else None  # a preemption right after a save must not save it again
    preemption = preemption_lib.Preemption()
    profile = profiling.Profile(cfg.profile, workdir)
    try:
      if tr.eval_at_start and restored is None and cfg.evals:
        outputs = Outputs(cfg, workdir, task, model, mesh, -1, True, lr_fn)
        outputs.evaluate(0, state["params"])
      while step < tr.num_steps:
        if preemption.due():
          if saved_step != step:
            checkpointer.save(step, state, data_iter)
          if outputs is not None:
            outputs.results.commit(step)  # table chunks end at checkpoints: a resume drops exactly what follows
          checkpointer.wait()
          logging.warning("Preempted: saved step %d in %s; re-run the same command to resume.", step, workdir)
          break
        idx = None if data_iter is None else mesh_lib.to_global(next(data_iter), idx_sharding, idx_shape)
        if step == start_step:
          train_chunk = distributed.compiled_together("train_chunk", train_chunk, state, task.arrays, idx)
        profile.before(step, state["step"])
        state = train_chunk(state, task.arrays, idx)
        step += k
        profile.after(step, state["step"])
        if step == start_step + k:
          logging.info("First training step dispatched %.1f s after start.", time.time() - start_time)
        if outputs is None:
          outputs = Outputs(cfg, workdir, task, model, mesh, start_step if restored else -1,
                            restored is None, lr_fn)
        outputs.report(step, state["step"])  # timed on finished work: iclscale/progress.py
        do_eval = bool(outputs.evaluators) and ckpt_lib.itstime(step, cfg.eval_every, tr.num_steps,
                                                                checkpointer.milestones)
        do_save = checkpointer.due(step)
        # Train metrics are also logged at every save, so a resumed run logs the same windows as an unbroken one.
        if do_eval or do_save or ckpt_lib.itstime(step, tr.log_every, tr.num_steps):
          outputs.log_train(step, state["sums"])
          state = dict(state, sums=zero_sums())
        if do_eval:
          outputs.evaluate(step, state["params"])
        if do_save:
          checkpointer.save(step, state, data_iter)
          outputs.results.commit(step)
          saved_step = step
      if outputs is None and step >= tr.num_steps and cfg.plot and cfg.evals:
        # A completed run re-run (e.g. killed before its figures): rebuild the evaluators to rewrite them.
        outputs = Outputs(cfg, workdir, task, model, mesh, step, False, lr_fn)
    finally:
      profile.close(state["step"])
      preemption.close()
      checkpointer.close()
      if outputs is not None:
        outputs.close()
  if cfg.plot and jax.process_index() == 0 and step >= tr.num_steps and outputs and outputs.evaluators:
    from iclscale.analysis import plots  # pylint: disable=g-import-not-at-top
    logging.info("Evaluator curves: %s", plots.plot_run(workdir))
    for ev in outputs.evaluators:  # evaluators with a figure of their own (contracts.Evaluator.finalize)
      figure = ev.finalize(workdir)
      if figure:
        logging.info("%s figure: %s", ev.name, figure)
  return dict(step=step, train=outputs.last_train if outputs else {}, evals=outputs.last_evals if outputs else {},
              outputs=written_outputs(workdir))


def written_outputs(workdir: str) -> list[str]:
  """What the workdir holds (names for the user), so the closing message claims only files that exist."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  names = sorted(p.name for p in epath.Path(workdir).iterdir()) if epath.Path(workdir).exists() else []
  out = ["TensorBoard events"] if any(n.startswith("events.out.tfevents") for n in names) else []
  out += [n + "/" if n in ("checkpoints", "results") else n for n in names
          if n in ("checkpoints", "results", "results.csv") or n.endswith(".png")]
  return out
