"""THE training loop: every study enters here with a config and a workdir.

The loop knows no study: it asks the task for sequences (by index and step, on the device), the model registry
for a model, the optimizer builder for a chain and the evaluator registry for sweeps. It sees plug-ins only
through the contracts of iclscale/contracts.py. K steps run per dispatch inside
one `lax.scan`; the host reads device values only at logging/eval/checkpoint times, and nothing it keeps grows
with the step count, so 5e7-step runs are practical.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import os
import threading
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
from iclscale import outputs as outputs_lib
from iclscale import pipeline
from iclscale import population as population_lib
from iclscale import preemption as preemption_lib
from iclscale import profiling
from iclscale import tasks

TRAIN_DEFAULTS = dict(
    num_steps=20_000,        # total optimizer steps
    batch_size=32,           # global batch (sequences per step), split over the data-parallel devices
    steps_per_dispatch=10,   # K steps per jitted call (lax.scan); every cadence below must be a multiple of K
    log_every=1000,          # write averaged train loss/accuracy/grad-norm and the lr every this many steps
    eval_at_start=False,     # also run the evaluators on the initial params (step 0): fine-tuning's baseline
    eval_steps=(),           # extra steps at which the evaluators run (multiples of steps_per_dispatch), e.g. the
                             # dataset sizes N of a streaming sweep read off one long run (studies/gated_study.py)
)
TOP_FIELDS = ("seed", "task", "model", "optim", "train", "data", "mesh", "checkpoint", "eval_every", "evals",
              "report_every_secs", "plot", "profile", "population")
OPTIONAL_FIELDS = ("profile", "population")  # sections with defaults for every field: a config may leave them out


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Validates the whole config (one clear ConfigError line) and fills in every plug-in's defaults. A population
  is resolved as its shared config plus its `population` block, after every member was resolved as a solo run."""
  if not population_lib.is_population(config):
    out = resolve_solo(config)
    config_lib.check(mesh_lib.population_size(out.mesh) == 1, "mesh.population",
                     "only a population (config.population) has members to split over this axis; set 1")
    return out
  members = resolve_members(config)
  shared = ml_collections.ConfigDict(config)
  with shared.unlocked():
    del shared["population"]
  out = resolve_solo(shared)
  pop = config_lib.with_defaults(config.population, population_lib.DEFAULTS, "population")
  out.population = pop
  split = mesh_lib.population_size(out.mesh)
  config_lib.check(members.size % split == 0, "mesh.population",
                   f"the population's {members.size} members do not split over {split} devices")
  return out


def resolve_members(config: ml_collections.ConfigDict) -> population_lib.Members | None:
  """The members of config's population, each resolved as a solo run; None for a solo run."""
  if not population_lib.is_population(config):
    return None
  return population_lib.members(config, resolve_solo, tasks.member_fields, models.reads_task_seed)


def resolve_solo(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """resolve() of a config without a population."""
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
  config_lib.check_positive(out.mesh, "fsdp_min_size", "mesh", allow_zero=True)
  out.checkpoint = config_lib.with_defaults(config.checkpoint, ckpt_lib.DEFAULTS, "checkpoint")
  ckpt_lib.validate(out.checkpoint)
  k = tr.steps_per_dispatch
  for name, v in (("train.num_steps", tr.num_steps), ("train.log_every", tr.log_every),
                  ("eval_every", config.eval_every), ("checkpoint.every", out.checkpoint.every)):
    config_lib.check(isinstance(v, int) and v >= 0 and v % k == 0, name,
                     f"must be a multiple of train.steps_per_dispatch={k}, got {v!r}")
  for s in tr.eval_steps:
    config_lib.check(isinstance(s, int) and 0 < s <= tr.num_steps and s % k == 0, "train.eval_steps",
                     f"every step must be a multiple of train.steps_per_dispatch={k} in (0, num_steps], got {s!r}")
  out.eval_every = config.eval_every
  parallelism = mesh_lib.batch_parallelism(out.mesh)
  config_lib.check(tr.batch_size % parallelism == 0, "train.batch_size",
                   f"{tr.batch_size} is not divisible by the data-parallel size {parallelism}")
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
  return {m: jnp.zeros((), jnp.float32) for m in outputs_lib.METRICS + ("count",)}


# Chunks dispatched ahead of the host work on a step's results (train.run's `pending`): the device stays busy
# while the host fetches, logs, evaluates and saves, if that work takes less than HOST_LAG chunks of training.
HOST_LAG = 2
SAMPLER_SALT, INIT_SALT = 0x5A3, 0x1417   # streams of the run's seed: device-side index sampling, initialization


def member_inputs(members: population_lib.Members | None, task: contracts.Task, shared_lr: float) -> dict:
  """What differs between population members besides their task arrays, as arrays the vmapped step reads: the
  learning-rate scale and l2 of population.Members.hparams, and each member's sampler key and dataset size (for
  device-side sampling). Empty for a solo run."""
  if members is None:
    return {}
  keys = [jax.random.key_data(jax.random.fold_in(jax.random.key(c.seed), SAMPLER_SALT)) for c in members.cfgs]
  sizes = [c.task.get("dataset_size", 0) or 0 for c in members.cfgs] if task.dataset_size else [0] * members.size
  return dict(members.hparams(shared_lr), sampler_key=np.stack(keys), dataset_size=np.array(sizes, np.int32))


def stack_members(arrays_list: list[dict]) -> tuple[dict, dict]:
  """The members' task arrays as one tree: a leaf that differs between members stacked [P, ...] (vmap axis 0),
  a leaf every member has equal (a shared exemplar table, say) kept once (axis None), so a population of P
  members does not hold P copies of a 2.9 GB Omniglot table."""
  leaves = [jax.tree.leaves(a) for a in arrays_list]
  treedef = jax.tree.structure(arrays_list[0])
  out, axes = [], []
  for j, first in enumerate(leaves[0]):
    col = [np.asarray(m[j]) for m in leaves]
    shared = all(m[j] is first or np.array_equal(c, col[0]) for m, c in zip(leaves[1:], col[1:]))
    out.append(col[0] if shared else np.stack(col))
    axes.append(None if shared else 0)
  return treedef.unflatten(out), treedef.unflatten(axes)


def make_train_chunk(cfg, task: contracts.Task, model: contracts.Model, tx, population: bool,
                     task_axes: Any = None):
  """(state, inputs, indices [K, B] / [K, P, B] or None) -> state after K steps: one scan, one dispatch.

  `inputs` = dict(task=the task's arrays, hp=member_inputs). The state carries running sums of the train metrics,
  so the host reads them only when it logs, and a resumed run continues the same logging window as an
  uninterrupted one. A population vmaps one member's step over the members' stacked params, optimizer states,
  sums, task arrays, indices and hyperparameters: each member's gradient, clip norm and Adam moments are its own.
  `task_axes` (stack_members) says which task arrays are stacked (0) and which all members share (None).
  """
  solo_key = jax.random.fold_in(jax.random.key(cfg.seed), SAMPLER_SALT)

  def loss_fn(params, batch, l2):
    loss, metrics = model.loss(model.apply(params, batch), batch)
    return loss + optim.penalty(cfg.optim, params, l2), metrics

  def member_step(params, opt_state, sums, arrays, idx_B, step, hp):
    if idx_B is None:  # device-side sampling: the bound the Grain pipeline is measured against
      key = jax.random.wrap_key_data(hp["sampler_key"]) if hp else solo_key
      size = (hp["dataset_size"] if hp else task.dataset_size) if task.dataset_size else None
      idx_B = pipeline.device_indices(key, size, cfg.train.batch_size, step)
    # Every task gets the step (scheduled tasks read it): the data of step t stays a function of (seed, t).
    batch = task.batch(arrays, idx_B, step)
    batch = jax.lax.with_sharding_constraint(batch, jax.tree.map(lambda x: mesh_lib.batch_spec(x.ndim), batch))
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, hp.get("l2"))
    updates, opt_state = tx.update(grads, opt_state, params)
    if "lr_scale" in hp:  # adam/adamw updates are linear in lr (population.LINEAR_IN_LR): the member's own lr
      updates = jax.tree.map(lambda u: u * hp["lr_scale"].astype(u.dtype), updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), count=1.0)
    sums = {m: sums[m] + metrics[m] for m in sums}
    return optax.apply_updates(params, updates), opt_state, sums

  if population:
    member_step = jax.vmap(member_step, in_axes=(0, 0, 0, task_axes, 0, None, 0),
                           spmd_axis_name=mesh_lib.POPULATION)

  def one_step(carry, idx):
    state, inputs = carry
    params, opt_state, sums = member_step(state["params"], state["opt_state"], state["sums"], inputs["task"], idx,
                                          state["step"], inputs["hp"])
    return (dict(params=params, opt_state=opt_state, step=state["step"] + 1, sums=sums), inputs), None

  def chunk(state, inputs, idx):
    (state, _), _ = jax.lax.scan(one_step, (state, inputs), idx, length=cfg.train.steps_per_dispatch)
    return state

  return jax.jit(chunk, donate_argnums=0)


def load_params(model: contracts.Model, abstract: Any, members: int = 1) -> Any | None:
  """Host arrays of the model's starting weights (another run's checkpoint or pretrained ones) in the initialized
  tree `abstract` of one model, or None when the model starts from `init`. With `members` > 1 (a population,
  stacked on a leading axis) every member starts from the same weights."""
  if not (model.init_from or model.load):
    return None
  if model.init_from:
    params = ckpt_lib.restore_params(model.init_from, abstract, "model.init_from")
  else:
    params = model.load(abstract)
    same = jax.tree.structure(params) == jax.tree.structure(abstract) and all(
        np.shape(p) == s.shape for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(abstract)))
    config_lib.check(same, "model", "the loaded weights do not have the initialized model's parameter shapes")
  if members == 1:
    return params
  return jax.tree.map(lambda x: np.broadcast_to(x, (members,) + np.shape(x)).copy(), params)


def init_state(cfg, task: contracts.Task, model: contracts.Model, mesh,
               members: population_lib.Members | None = None):
  """Parameters initialized (or loaded: see `load_params`) directly with their shardings, the optimizer chain,
  and the train state. Population member i initializes from its own seed exactly as its solo run would."""
  example = jax.eval_shape(task.batch, task.arrays,
                           jnp.zeros(pipeline.index_shape(task.dataset_size, 2), jnp.uint32),
                           jnp.zeros((), jnp.int32))
  seeds = [c.seed for c in members.cfgs] if members else [cfg.seed]
  keys = jnp.stack([jax.random.key_data(jax.random.fold_in(jax.random.key(s), INIT_SALT)) for s in seeds])

  def init_one(key_data):
    return model.init(jax.random.wrap_key_data(key_data), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                                                          example))

  population = members is not None
  init_params = jax.vmap(init_one) if population else lambda keys: init_one(keys[0])
  abstract = jax.eval_shape(init_params, keys)
  # One member's tree: what loading, optimizer scopes and sharding rules describe.
  one = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), abstract) if population else abstract
  loaded = load_params(model, one, members.size if population else 1)
  shardings = mesh_lib.param_shardings(one, mesh, model.param_specs and model.param_specs(one, mesh), population,
                                       cfg.mesh.fsdp_min_size)
  tx, lr_fn = optim.build(cfg.optim, one, cfg.train.num_steps)

  def rest(params):
    opt_state = jax.vmap(tx.init)(params) if population else tx.init(params)
    # Adam's moments are zeros, with no data dependence on params to propagate their sharding: constrain them.
    is_params = lambda x: jax.tree.structure(x) == jax.tree.structure(abstract)
    other = lambda x: mesh_lib.member_sharding(mesh, x.ndim) if population else mesh_lib.replicated(mesh)
    opt_shardings = jax.tree.map(lambda x: shardings if is_params(x) else other(x), opt_state, is_leaf=is_params)
    sums = jax.vmap(lambda _: zero_sums())(keys) if population else zero_sums()
    return dict(opt_state=jax.lax.with_sharding_constraint(opt_state, opt_shardings),
                step=jnp.zeros((), jnp.int32), sums=sums)

  if loaded is None:
    def init(keys):
      params = jax.lax.with_sharding_constraint(init_params(keys), shardings)
      return dict(params=params, **rest(params))
    return jax.jit(init)(keys), tx, lr_fn
  params = jax.device_put(loaded, shardings)  # host -> each device's shards, never a full copy per device
  del loaded
  return dict(params=params, **jax.jit(rest)(params)), tx, lr_fn


@dataclasses.dataclass
class Program:
  """What the loop runs: the model, the initial state, the compiled K-step chunk, its inputs and index layout."""
  cfg: Any
  members: population_lib.Members | None
  task_list: list
  model: contracts.Model
  state: dict
  tx: Any
  lr_fn: Any
  chunk: Any                # (state, inputs, idx) -> state after K steps
  inputs: dict              # dict(task=arrays (stacked for a population), hp=member_inputs)
  idx_shape: tuple          # [K, (P,) B(, 2)] indices of one chunk
  idx_sharding: Any

  def make_iterator(self):
    """The Grain iterator of this host's block of the indices: its members' streams, its rows only."""
    cfg, tr = self.cfg, self.cfg.train
    batch_dim = len(self.idx_shape) - (1 if self.task_list[0].dataset_size else 2)
    block = mesh_lib.host_slices(self.idx_sharding, self.idx_shape)
    streams = None if self.members is None else [
        (c.seed, t.dataset_size) for c, t in list(zip(self.members.cfgs, self.task_list))[block[1]]]
    return pipeline.make_iterator(cfg.seed, self.task_list[0].dataset_size, tr.batch_size,
                                  tr.steps_per_dispatch, tr.num_steps, block[batch_dim], cfg.data.prefetch, streams)


def build_program(cfg, members: population_lib.Members | None, task_list: list, mesh,
                  steps_per_dispatch: int | None = None) -> Program:
  """Places the task arrays (stacked over members for a population), builds the model, initializes the state and
  the K-step chunk (K = steps_per_dispatch or the config's). Shared by the loop and the benchmarks."""
  task, tr = task_list[0], cfg.train
  k = steps_per_dispatch or tr.steps_per_dispatch
  inputs = dict(task=task.arrays, hp=member_inputs(members, task, cfg.optim.lr))
  task_axes = None
  if members:  # arrays that differ between members stacked [P, ...] over the population axis; equal ones shared
    stacked, task_axes = stack_members([t.arrays for t in task_list])
    flat, treedef = jax.tree.flatten(stacked)
    placed = [jax.device_put(x, mesh_lib.replicated(mesh) if a is None else mesh_lib.member_sharding(mesh, x.ndim))
              for x, a in zip(flat, jax.tree.leaves(task_axes, is_leaf=lambda a: a is None))]
    inputs = dict(task=treedef.unflatten(placed),
                  hp=jax.tree.map(lambda x: jax.device_put(x, mesh_lib.member_sharding(mesh, x.ndim)), inputs["hp"]))
  else:
    inputs = jax.tree.map(lambda x: jax.device_put(x, mesh_lib.replicated(mesh)), inputs)
  model = models.build(cfg.model, task)
  state, tx, lr_fn = init_state(cfg, task, model, mesh, members)
  if k != tr.steps_per_dispatch:
    cfg = ml_collections.ConfigDict(cfg)
    cfg.train = dict(tr, steps_per_dispatch=k)
  chunk = make_train_chunk(cfg, task, model, tx, members is not None, task_axes)
  idx_shape = (k,) + ((members.size,) if members else ()) + pipeline.index_shape(task.dataset_size, tr.batch_size)
  spec = [None] * len(idx_shape)
  spec[2 if members else 1] = mesh_lib.BATCH_AXES      # [K, (P,) B(, 2)]: rows over the batch axes
  if members:
    spec[1] = mesh_lib.POPULATION
  idx_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  return Program(cfg, members, task_list, model, state, tx, lr_fn, chunk, inputs, idx_shape, idx_sharding)


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
  # The summary writers import TensorFlow (seconds of CPU): import it while the run is set up and compiled, on
  # process 0 only (the only one that writes summaries: iclscale/outputs.py).
  if jax.process_index() == 0:
    threading.Thread(target=importlib.import_module, args=("clu.metric_writers",), daemon=True).start()
  # Every ConfigError is raised here, before anything is built or compiled, and on every process alike.
  cfg = distributed.same_everywhere("config", lambda: resolve(config))
  members = resolve_members(config)  # None for a solo run (iclscale/population.py)
  distributed.on_process_zero("writable", lambda: ckpt_lib.check_writable(workdir))
  mesh = mesh_lib.make_mesh(cfg.mesh)
  tr, k = cfg.train, cfg.train.steps_per_dispatch
  outputs = None
  with jax.set_mesh(mesh):
    # Each member's task is built from its own config and seed, exactly as its solo run's; the data is read first:
    # a missing data set leaves no run record behind.
    task_list = [tasks.build(c.task, c.seed) for c in members.cfgs] if members else [tasks.build(cfg.task, cfg.seed)]
    # Decided once, on process 0, from the workdir's files: every process then acts on the same answer.
    fresh = not distributed.on_process_zero("workdir", lambda: guard_workdir(workdir, cfg))
    prog = build_program(cfg, members, task_list, mesh)
    model, state, lr_fn, train_chunk, inputs = prog.model, prog.state, prog.lr_fn, prog.chunk, prog.inputs
    idx_shape, idx_sharding = prog.idx_shape, prog.idx_sharding
    data_iter = prog.make_iterator() if cfg.data.pipeline == "grain" else None

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
    # Host work on a dispatch's results (logging, evaluation rows, checkpoint writes) waits in `pending` until
    # HOST_LAG more chunks are dispatched: the device then computes while the host fetches and writes (nanodo: the
    # host never waits on an idle device). Work runs in step order: a NaN loss stops the run before that step's
    # state is saved.
    pending: list = []   # (step, fn)

    def drain(upto: float = float("inf")):
      while pending and pending[0][0] <= upto:
        pending.pop(0)[1]()

    try:
      # Built before the first dispatch: its evaluation sets and writers are ready when the first results are.
      # A finished run that is re-run builds it only to rewrite its end-of-run figures.
      if step < tr.num_steps or (cfg.plot and cfg.evals):
        outputs = outputs_lib.Outputs(cfg, workdir, task_list, model, mesh, start_step if restored else -1,
                                      restored is None, lr_fn, members)
      if tr.eval_at_start and restored is None and outputs.evaluators:
        outputs.evaluate(0, state["params"])
      # One program for the window's sums (not one per metric): the loop dispatches a few programs per chunk, never
      # a burst (checkpoint.copy_tree says why a burst can stall a multi-device CPU run).
      clear_sums = jax.jit(lambda sums: jax.tree.map(jnp.zeros_like, sums),
                           out_shardings=jax.tree.map(lambda x: x.sharding, state["sums"]))
      first_dispatch = None
      while step < tr.num_steps:
        if preemption.due():
          drain()
          if saved_step != step:
            checkpointer.save(step, state, data_iter)
          outputs.results.commit(step)  # table chunks end at checkpoints: a resume drops exactly what follows
          checkpointer.wait()
          logging.warning("Preempted: saved step %d in %s; re-run the same command to resume.", step, workdir)
          break
        idx = None if data_iter is None else mesh_lib.to_global(next(data_iter), idx_sharding, idx_shape)
        if step == start_step:
          train_chunk = distributed.compiled_together("train_chunk", train_chunk, state, inputs, idx)
        checkpointer.before_update()   # state is donated: no background write may still read its buffers
        profile.before(step, state["step"])
        state = train_chunk(state, inputs, idx)
        step += k
        profile.after(step, state["step"])
        if first_dispatch is None:
          first_dispatch = time.time()
          logging.info("First training step dispatched %.1f s after start.", first_dispatch - start_time)
        drain(upto=step - HOST_LAG * k)  # earlier dispatches' host work, while the device runs the later ones
        outputs.report(step, state["step"])  # timed on finished work: iclscale/progress.py
        do_eval = bool(outputs.evaluators) and ckpt_lib.itstime(step, cfg.eval_every, tr.num_steps,
                                                                checkpointer.milestones | set(tr.eval_steps))
        do_save = checkpointer.due(step)
        # Train metrics are also logged at every save, so a resumed run logs the same windows as an unbroken one.
        if do_eval or do_save or ckpt_lib.itstime(step, tr.log_every, tr.num_steps):
          pending.append((step, functools.partial(outputs.log_train, step, state["sums"])))
          state = dict(state, sums=clear_sums(state["sums"]))
        snapshot = checkpointer.snapshot(state, data_iter) if do_save else None
        if do_save:   # before the evaluation, which then overlaps the background write
          pending.append((step, functools.partial(checkpointer.save, step, *(snapshot or (state, data_iter)))))
        if do_eval:
          pending.append((step, functools.partial(outputs.finish_evaluation, step,
                                                  outputs.start_evaluation(state["params"]))))
        if do_save:
          pending.append((step, functools.partial(outputs.results.commit, step)))
          saved_step = step
        if do_save and snapshot is None:  # saved in place: before the next step donates the state
          drain()
      drain()
      if first_dispatch is not None:
        checkpointer.wait()
        took = time.time() - first_dispatch
        logging.info("Trained steps %d to %d in %.1f s from the first dispatch: %.1f steps/s with evaluations, "
                     "checkpoints and logging.", start_step, step, took, (step - start_step) / took)
    finally:
      profile.close(state["step"])
      preemption.close()
      checkpointer.close()
      if outputs is not None:
        outputs.close()
  # A population's figures come from the study commands, which read its one table (iclscale/studies/).
  if (cfg.plot and members is None and jax.process_index() == 0 and step >= tr.num_steps and outputs
      and outputs.evaluators):
    from iclscale.analysis import plots  # pylint: disable=g-import-not-at-top
    logging.info("Evaluator curves: %s", plots.plot_run(workdir))
    for ev in outputs.evaluators:  # evaluators with a figure of their own (contracts.Evaluator.finalize)
      figure = ev.finalize(workdir)
      if figure:
        logging.info("%s figure: %s", ev.name, figure)
  # A solo run's last metrics as dicts; a population's as one dict per member.
  pick = (lambda views: views) if members else (lambda views: views[0])
  return dict(step=step, train=pick(outputs.last_train) if outputs else {},
              evals=pick(outputs.last_evals) if outputs else {}, outputs=written_outputs(workdir))


def written_outputs(workdir: str) -> list[str]:
  """What the workdir holds (names for the user), so the closing message claims only files that exist."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  names = sorted(p.name for p in epath.Path(workdir).iterdir()) if epath.Path(workdir).exists() else []
  out = ["TensorBoard events"] if any(n.startswith("events.out.tfevents") for n in names) else []
  out += [n + "/" if n in ("checkpoints", "results") else n for n in names
          if n in ("checkpoints", "results", "results.csv") or n.endswith(".png")]
  return out
