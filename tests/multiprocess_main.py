"""main.py with probes, for tests/test_multiprocess.py: records what this process's input pipeline produced, which
rows of each evaluation set and which parameter shards live on this process, then runs main.main unchanged.

The probes go to $MP_PROBE_DIR/process_<i>.json (rewritten after every record, so a killed run leaves its last).
"""
import atexit
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main  # pylint: disable=wrong-import-position  # installs the early SIGTERM handler and main's flags
from absl import app  # pylint: disable=wrong-import-position,g-bad-import-order
from iclscale import pipeline, train  # pylint: disable=wrong-import-position
from iclscale.evaluators import classification  # pylint: disable=wrong-import-position

PROBE = {"chunks": {}, "eval_rows": [], "params": []}


def _dump():
  import jax  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.environ["MP_PROBE_DIR"], f"process_{jax.process_index()}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(PROBE, f)
  os.replace(path + ".tmp", path)


def _spans(x, dim):
  return sorted({(i[dim].start or 0, x.shape[dim] if i[dim].stop is None else i[dim].stop)
                 for i in x.sharding.addressable_devices_indices_map(x.shape).values()})


_chunk_call = pipeline.ChunkIndices.__call__


def chunk_call(self, chunk):
  out = _chunk_call(self, chunk)
  PROBE["rows"] = [self.rows.start, self.rows.stop]
  PROBE["chunks"][str(int(chunk))] = out.tolist()
  _dump()
  return out


_eval_init = classification.QueryClassification.__init__


def eval_init(self, *args, **kwargs):
  _eval_init(self, *args, **kwargs)
  import jax  # pylint: disable=g-import-not-at-top
  # [S, N, ...] sets: which of the N rows this process's devices hold (and so compute on).
  PROBE["eval_rows"] = [_spans(x, 1) for x in jax.tree.leaves(self.data)]
  _dump()


_init_state = train.init_state


def init_state(*args, **kwargs):
  state, tx, lr_fn = _init_state(*args, **kwargs)
  import jax  # pylint: disable=g-import-not-at-top
  # (global size, elements held by this process's devices counted once) per parameter.
  PROBE["params"] = [[int(x.size), int(sum({str(s.index): s.data.size for s in x.addressable_shards}.values()))]
                     for x in jax.tree.leaves(state["params"])]
  _dump()
  return state, tx, lr_fn


pipeline.ChunkIndices.__call__ = chunk_call
classification.QueryClassification.__init__ = eval_init
train.init_state = init_state

# Whether this process imported TensorFlow (through CLU's summary writers: only process 0 should).
atexit.register(lambda: (PROBE.update(tensorflow="tensorflow" in sys.modules), _dump()))

if __name__ == "__main__":
  # A process started with a different command than the others (the config-hash check must refuse the run).
  if os.environ.get("MP_PROCESS_1_EXTRA") and os.environ.get("JAX_PROCESS_ID") == "1":
    sys.argv.append(os.environ["MP_PROCESS_1_EXTRA"])
  app.run(main.main)
