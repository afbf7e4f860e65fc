"""The plug-in contracts: what a task, a model and an evaluator are, and how each kind is registered.

The training loop (train.py) sees plug-ins only through these types; it never probes them with getattr/hasattr.
Each kind has a registry, an explicit table in its package (`tasks/__init__.py`, `models/__init__.py`,
`evaluators/__init__.py`) mapping a config name to a spec: the plug-in's declared fields with their defaults, a
validation of the filled-in config, and a builder.

Adding a plug-in:
  task       a module in tasks/ with DEFAULTS (a dict of every field with its default, each commented, `name`
             included), validate(cfg) (config.check* helpers: one ConfigError line per bad value), input_shape(cfg)
             and a class satisfying `Task`, built as Cls(cfg, seed); then one `TaskSpec` row in tasks.REGISTRY.
             tasks/stylized.py is the smallest complete example.
  model      build(cfg, task) -> `Model` and validate(cfg, input_shape) in a module of models/, DEFAULTS as for a
             task; one `ModelSpec` row in models.REGISTRY. Set `loss` when the outputs are not query logits
             (losses.py has the answer-token CE), `load` for pretrained weights, `param_specs` for a sharding
             other than FSDP. models/decoder.py is a small complete example.
  evaluator  a subclass of `Evaluator` constructed as Cls(name, cfg, task, apply, mesh) that sets `data` and
             defines `compute` and `rows`, a dict of its fields with
             `type` = its row name, and validate(name, cfg, data-parallel size); one `EvaluatorSpec` row in
             evaluators.REGISTRY. A config then declares it as evals.<name> = dict(type=<row name>, ...).
             evaluators/classification.py is the reference.
Every field a plug-in reads must be in its defaults: the config is checked against them (unknown keys and wrong
types are one-line errors) and any of them can be overridden from the command line. Plug-ins never import the loop;
models import neither evaluators nor learners; tasks do not import models.

Batch formats the existing models and evaluators read (a new task that emits one of them gets them for free):
  classification   x [B, L+1, ...] (context items then the query), ctx_labels [B, L], target [B]: the
                   transformer / gated models, query CE, the query_classification / icl_iwl evaluators;
  answer tokens    tokens [B, T], answer_pos / answer_tok [B, N] int32, answer_mask [B, N] bool: the decoder and
                   gemma3 models, answer CE, the episode_accuracy / fact_probes evaluators.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Protocol

import jax

from iclscale import losses

Batch = dict[str, Any]          # named arrays with a leading batch axis
Rows = dict[tuple[str, str], float]  # {(evaluator/set, metric): value}: rows of the results table


class Task(Protocol):
  """Turns (seed, index, step) into a training sequence on the device, and builds fixed evaluation sets.

  Built once per run as TaskClass(resolved_cfg, seed). Determinism: the batch of step t is a pure function of
  (seed, indices, t); evaluation sets are drawn from streams of their own, never the training one.
  """
  seed: int                        # the run's seed, which the task was built with
  num_classes: int                 # outputs of the query readout (the vocabulary size for token tasks)
  dataset_size: int | None         # indices are drawn from [0, dataset_size); None = an infinite stream
  arrays: dict[str, Any]           # arrays `batch` reads (the loop places them on the devices, replicated)

  def batch(self, arrays: dict[str, Any], indices_B: jax.Array, step: jax.Array) -> Batch:
    """The training batch for these indices at this step (jittable; traced inside the loop's scan).

    `arrays` is the task's `arrays` as placed by the loop; `step` is the int32 step of this batch, which
    scheduled tasks read (e.g. the blocked finetuning phases of tasks/episodes.py) and others ignore.
    """

  def eval_sets(self, kind: str, num_examples: int) -> dict[str, Batch]:
    """{set name: batch} of `kind` (the evaluator's `sets` field); raises ValueError for a kind it lacks."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A row of tasks.REGISTRY."""
  defaults: dict[str, Any]                            # every field with its default; `name` is the row's key
  validate: Callable[[Any], None]                     # (filled-in cfg) -> None; raises config.ConfigError
  input_shape: Callable[[Any], tuple[int, ...]]       # (cfg) -> shape of one item, known before any array exists
  build: Callable[[Any, int], Task]                   # (cfg, seed) -> Task
  # The task fields a population's members may vary (iclscale/population.py): the task reads each of them from its
  # `arrays` (or they only bound the index sampler, as dataset_size), never as a Python constant in `batch`, so
  # one member's `batch` vmapped over the stacked arrays is every member's. None = the task is not
  # population-ready (its batch closes over member-specific values): members may not even vary the seed.
  member_fields: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Model:
  """What the loop trains: pure functions of a parameter pytree.

  The loop initializes: it traces `init` abstractly (jax.eval_shape) to learn the parameter tree, then either
  runs `init` on the devices with each parameter's sharding, or, when the model starts from existing weights,
  fills that tree from `load` or from `init_from` (loaded shapes must equal the initialized ones).
  """
  module: Any                                  # the flax module (for inspection; the loop calls init/apply)
  init: Callable[[jax.Array, Batch], Any]      # (key, example batch) -> params
  apply: Callable[[Any, Batch], Any]           # (params, batch) -> outputs that `loss` and the evaluators read
  # (outputs, batch) -> (scalar objective, {metric: scalar}); the metrics hold at least `loss` and `accuracy`.
  # The default is the cross-entropy of query logits [B, K] against batch['target'].
  loss: Callable[[Any, Batch], tuple[jax.Array, dict]] = losses.query_ce
  # (abstract params: a ShapeDtypeStruct tree) -> host arrays of pretrained weights; None = init. Every member of a
  # population starts from them.
  load: Callable[[Any], Any] | None = None
  # A run's workdir: the loop restores the params of its newest checkpoint (read-only) instead of initializing.
  init_from: str = ""
  # (abstract params, mesh) -> PartitionSpec tree; None = the loop's default FSDP rule (mesh.param_shardings).
  param_specs: Callable[[Any, Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A row of models.REGISTRY."""
  defaults: dict[str, Any]                                # every field with its default
  validate: Callable[[Any, tuple[int, ...]], None]        # (cfg, task input shape) -> None; raises ConfigError
  build: Callable[[Any, Task], Model]                     # (cfg, task) -> Model
  # The built model holds values of the task's seed (the gated model's prototype regions): population members
  # must then share the seed (iclscale/population.py refuses a population that varies it).
  reads_task_seed: bool = False


class Evaluator(abc.ABC):
  """Base of evaluators: run on the parameters at every evaluation step, returns rows for the results table.

  Constructed once per run (per population member) as Cls(name, cfg, task, apply, mesh), where `apply` is the
  model's apply. The constructor builds the evaluation sets into `data` (device arrays); `compute(params, data)`
  is a pure, jittable function of the two and `rows` turns its fetched output into table rows. The split lets the
  loop evaluate a whole population in one compiled call: it stacks the members' `data` and vmaps one member's
  `compute` over (params, data), so `compute` must read everything that differs between members from `data`,
  never from Python attributes of the member's task.
  """

  def __init__(self, name: str):
    self.name = name   # the config's key under evals; prefixes every row's evaluator column
    self.data: Any = None   # the evaluation sets (any pytree of arrays), set by the constructor
    self._compiled = None

  @abc.abstractmethod
  def compute(self, params: Any, data: Any) -> Any:
    """The metrics of these parameters on `data` as a pytree of arrays (traced: jittable and vmappable)."""

  @abc.abstractmethod
  def rows(self, out: Any) -> Rows:
    """{(evaluator/set, metric): value} from `compute`'s output fetched to the host (numpy arrays)."""

  def start(self, params: Any) -> Any:
    """Dispatches `compute` and returns its device output at once: the loop dispatches its next training steps
    before it fetches this (`finish`), so the host's table and summary writing overlaps the device's work."""
    if self._compiled is None:
      self._compiled = jax.jit(self.compute)
    return self._compiled(params, self.data)

  def finish(self, out: Any) -> Rows:
    """Rows of a `start`ed evaluation (waits for it)."""
    return self.rows(jax.device_get(out))

  def __call__(self, params: Any) -> Rows:
    return self.finish(self.start(params))

  def finalize(self, workdir: str) -> str | None:
    """Called once at the end of a completed run (when config.plot is set): writes the evaluator's own figure
    from the results table in workdir and returns its path; None = no figure of its own (the default)."""
    del workdir
    return None


@dataclasses.dataclass(frozen=True)
class EvaluatorSpec:
  """A row of evaluators.REGISTRY."""
  defaults: dict[str, Any]                          # every field with its default; `type` is the row's key
  validate: Callable[[str, Any, int], None]         # (name, cfg, data-parallel size) -> None; raises ConfigError
  build: Callable[..., Evaluator]                   # (name, cfg, task, apply, mesh) -> Evaluator

