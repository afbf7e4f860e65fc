"""Throughput of the ResNet item encoder under jit (forward+backward and forward).

One step encodes a batch of B sequences x T images ([B, T, S, S] -> [B, T, D])
and, for forward+backward, takes the gradient of a scalar loss w.r.t. all
encoder parameters: the encoder's share of one training step of the bursty
Omniglot task (B = 32, T = 9 in Chan et al. 2022).

  python -m benchmarks.resnet_encoder               # from the repo root; 105 and 28 px
  python -m benchmarks.resnet_encoder --sizes 28 --steps 20 --norm group
  python -m benchmarks.resnet_encoder --scan 2 --grads xla   # fwd+bwd inside a 2-step lax.scan, JAX's own gradients

--scan K times K SGD steps in one lax.scan, as the training loop's chunk runs them: XLA:CPU compiles the
convolution gradients there differently from a plain jit (iclscale/models/encoders.py, `grads`).
"""

import argparse
import time

import jax
import jax.numpy as jnp

from iclscale.models import encoders


def _time(fn, *args, steps: int):
  """(compile+first-call seconds, mean seconds per later call)."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return first, (time.perf_counter() - start) / steps


def build(width: int, norm: str, grads: str = 'auto', scan: int = 0):
  model = encoders.build_encoder('resnet', width, norm=norm, grads=grads)
  # RBG keys compile the initialisers much faster than threefry on CPU.
  params = jax.jit(model.init)(jax.random.key(0, impl='rbg'), jnp.zeros((1, 28, 28)))

  def loss_fn(p, x_BxTxSxS):
    return jnp.mean(model.apply(p, x_BxTxSxS) ** 2)

  value_and_grad = jax.value_and_grad(loss_fn)
  if not scan:
    return model, params, jax.jit(model.apply), jax.jit(value_and_grad)

  def sgd_steps(p, x_BxTxSxS):
    def step(p, _):
      loss, g = value_and_grad(p, x_BxTxSxS)
      return jax.tree.map(lambda a, b: a - 1e-3 * b, p, g), loss
    return jax.lax.scan(step, p, None, length=scan)
  return model, params, jax.jit(model.apply), jax.jit(sgd_steps)


def measure(size: int, batch: int = 32, seq: int = 9, width: int = 64, norm: str = 'none',
            seconds: float = 5.0) -> dict:
  """Forward+backward of the encoder on [batch, seq, size, size] images for about `seconds` (one process)."""
  _, params, _, forward_backward = build(width, norm)
  x_BxTxSxS = jax.random.uniform(jax.random.key(1), (batch, seq, size, size))
  start = time.perf_counter()
  jax.block_until_ready(forward_backward(params, x_BxTxSxS))
  compile_s = time.perf_counter() - start
  flops = forward_backward.lower(params, x_BxTxSxS).cost_analysis().get('flops')
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    jax.block_until_ready(forward_backward(params, x_BxTxSxS))
    n += 1
  dt = time.perf_counter() - start
  return dict(steps_per_s=n / dt, steps=n, timed_s=dt, first_dispatch_s=compile_s, flops_per_step=flops,
              images_per_s=n * batch * seq / dt)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=[105, 28])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--seq', type=int, default=9)
  parser.add_argument('--width', type=int, default=64)
  parser.add_argument('--norm', default='none', choices=encoders.NORMS)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--grads', default='auto', choices=encoders.GRADS)
  parser.add_argument('--scan', type=int, default=0, help='K > 0: fwd+bwd = K SGD steps in one lax.scan')
  args = parser.parse_args()

  _, params, forward, forward_backward = build(args.width, args.norm, args.grads, args.scan)
  print(f'device={jax.devices()[0].platform} ({jax.device_count()}) '
        f'params={encoders.count_params(params)} norm={args.norm} grads={args.grads} scan={args.scan} '
        f'batch={args.batch}x{args.seq} images, {args.steps} timed steps')
  images_per_step = args.batch * args.seq
  for size in args.sizes:
    x_BxTxSxS = jax.random.uniform(jax.random.key(1), (args.batch, args.seq, size, size))
    for name, fn in (('fwd+bwd', forward_backward), ('fwd', forward)):
      compile_s, step_s = _time(fn, params, x_BxTxSxS, steps=args.steps)
      step_s /= args.scan if name == 'fwd+bwd' and args.scan else 1
      print(f'{size:>4} px {name:>8}: {images_per_step / step_s:9.0f} images/s '
            f'({step_s * 1e3:7.1f} ms/step, first call {compile_s:5.1f} s)')


if __name__ == '__main__':
  main()
