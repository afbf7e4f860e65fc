"""The progress line's rate is measured on finished device work (no impossible rates at the end of a run)."""
from clu import periodic_actions

from iclscale import progress


class Clock:
  def __init__(self):
    self.now = 0.0


class Barrier:
  """A queued computation's output: ready (in fake time) when the device has finished it."""

  def __init__(self, clock, done_at):
    self.clock, self.done_at = clock, done_at

  def block_until_ready(self):
    self.clock.now = max(self.clock.now, self.done_at)
    return self


class Writer:
  def __init__(self):
    self.rates = []

  def write_scalars(self, step, scalars):
    if "steps_per_sec" in scalars:
      self.rates.append((step, scalars["steps_per_sec"]))


def run(monkeypatch, cls, pass_barrier):
  """2000 steps in dispatches of 10 on a device at 100 steps/s; the host dispatches instantly up to 15 chunks
  ahead (1 ms of host work each), and an evaluation at step 1900 waits for the device and takes 2.5 s (as the loop's evals and saves do)."""
  clock = Clock()
  monkeypatch.setattr(progress.time, "monotonic", lambda: clock.now)
  monkeypatch.setattr(periodic_actions.time, "monotonic", lambda: clock.now)
  writer = Writer()
  report = cls(num_train_steps=2000, writer=writer, every_secs=2.0)
  done = []
  for i, step in enumerate(range(10, 2001, 10)):
    clock.now += 0.001  # the host's own work per dispatch
    if i >= 15:
      clock.now = max(clock.now, done[i - 15])  # a full queue makes the host wait
    done.append(max(done[-1] if done else 0.0, clock.now) + 0.1)
    if pass_barrier:
      report(step, Barrier(clock, done[-1]))
    else:
      report(step)
    if step == 1900:  # the evaluation
      clock.now = max(clock.now, done[-1]) + 2.5
      done[-1] = clock.now
  return writer.rates


def test_unsynced_clu_report_shows_an_impossible_final_rate(monkeypatch):
  rates = run(monkeypatch, periodic_actions.ReportProgress, False)
  assert rates[-1][0] == 2000 and rates[-1][1] > 1000  # the bug: host dispatches counted as finished steps


def test_rates_are_device_rates_to_the_last_step(monkeypatch):
  rates = run(monkeypatch, progress.SyncedProgress, True)
  assert rates[-1][0] == 2000 and len(rates) > 5
  for step, rate in rates:
    # 100 steps/s, less where an interval holds the 2.5 s evaluation; never more than the device's rate
    assert 20 < rate <= 100.0 + 1e-6, (step, rate)
  assert abs(rates[-1][1] - 100.0) < 0.5  # (less the 1 ms host gaps while the queue refills after the eval)
