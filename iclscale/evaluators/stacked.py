"""One evaluator over every member of a population: the members' sets stacked, one member's `compute` vmapped.

Each member's evaluator is built as in its solo run (its own task, so its own seed's evaluation sets); their
`data` trees are stacked on a leading member axis split over the mesh's population axis, and one compiled call
evaluates all members (contracts.Evaluator: `compute` reads everything member-specific from `data`).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from iclscale import contracts
from iclscale import distributed
from iclscale import mesh as mesh_lib


class Stacked:
  """Calls of all members' evaluator `name` at once: params [P, ...] -> one Rows dict per member."""

  def __init__(self, members: list[contracts.Evaluator], mesh):
    self.name = members[0].name
    self.members = members
    shapes = [jax.tree.map(lambda x: (x.shape, x.dtype), m.data) for m in members]
    for i, s in enumerate(shapes[1:], 1):
      if s != shapes[0]:
        raise ValueError(f"evaluator {self.name}: member {i}'s evaluation sets differ in shape from member 0's; "
                         "a population's members must build sets of one shape")
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *[m.data for m in members])
    self.data = jax.tree.map(lambda x: jax.device_put(x, mesh_lib.member_sharding(mesh, x.ndim)), stacked)
    for m in members:   # the stacked copy is the one kept on the devices
      m.data = None
    self._compiled = jax.jit(jax.vmap(members[0].compute, spmd_axis_name=mesh_lib.POPULATION))

  def start(self, params: Any) -> Any:
    """Dispatches every member's evaluation (contracts.Evaluator.start)."""
    return self._compiled(params, self.data)

  def finish(self, out: Any) -> list[contracts.Rows]:
    out = distributed.fetch(out)
    return [m.rows(jax.tree.map(lambda x, i=i: x[i], out)) for i, m in enumerate(self.members)]

  def __call__(self, params: Any) -> list[contracts.Rows]:
    return self.finish(self.start(params))
