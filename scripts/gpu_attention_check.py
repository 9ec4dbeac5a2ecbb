"""Checks cuDNN flash attention (attention_impl='auto' on a GPU) at every attention shape of the
zoo: forward and backward of `attention.dot_product_attention` in bfloat16 against einsum attention
in float32 on the same inputs. Prints, per shape, the kernel chosen and the largest relative error
(max |a - b| / max |b|) of the output and of the q, k, v gradients; exits 1 if any is above
--tolerance, not finite, or (with --platform_check) not served by the expected kernel.

  python scripts/gpu_attention_check.py            # on a GPU (meant for < 60 s on an H200)
  python scripts/gpu_attention_check.py --platform_check=false --heads=2 --batch=1  # anywhere

--platform_check=false away from a GPU: the choice is made for a faked GPU platform, and where it
is 'cudnn' the same padded, masked `attention.cudnn_attention` call runs through XLA instead of
cuDNN (the wrapper's code path, not the kernel). --multiple and --mask try other paddings/maskings.
"""
import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from sparse_tubes.models import attention  # noqa: E402

# (name, groups per example, Tq, Tk, head divisor, head_dim (None: --head_dim), dtype, expected)
# Token grids: TimeSformer 8x14x14 (8 frames, 16x16 patches), ViViT 16x14x14 (32 frames, 2x16x16
# tubelets), TubeViT's 539 tube tokens on 32x224x224; "+1" a class token.
CASES = [
    ('vit image 196+1', 1, 197, 197, 1, None, 'bfloat16', 'cudnn'),
    ('vit-h head_dim 80', 1, 197, 197, 1, 80, 'bfloat16', 'cudnn'),
    ('tubevit 539', 1, 539, 539, 1, None, 'bfloat16', 'cudnn'),
    ('tubevit 539+1', 1, 540, 540, 1, None, 'bfloat16', 'cudnn'),
    ('timesformer joint 1568+1', 1, 1569, 1569, 1, None, 'bfloat16', 'cudnn'),
    ('vivit m1 3136+1', 1, 3137, 3137, 1, None, 'bfloat16', 'cudnn'),
    ('divided time (8 frames)', 196, 8, 8, 1, None, 'bfloat16', 'cudnn'),
    ('divided space 196+1', 8, 197, 197, 1, None, 'bfloat16', 'cudnn'),
    ('axial width 14+1', 8 * 14, 15, 15, 1, None, 'bfloat16', 'cudnn'),
    ('local window 8x7x7+1', 4, 393, 393, 1, None, 'bfloat16', 'cudnn'),
    ('global stride 2 196+1', 8, 197, 197, 1, None, 'bfloat16', 'cudnn'),
    ('vivit m3 space 196', 16, 196, 196, 1, None, 'bfloat16', 'cudnn'),
    ('vivit m3 time 16', 196, 16, 16, 1, None, 'bfloat16', 'cudnn'),
    ('vivit m4 space, half heads', 16, 196, 196, 2, None, 'bfloat16', 'cudnn'),
    ('vivit m4 time, half heads', 196, 16, 16, 2, None, 'bfloat16', 'cudnn'),
    ('attention pooling 1 x 1568', 1, 1, 1568, 1, None, 'bfloat16', 'cudnn'),
    ('attention pooling 1 x 539', 1, 1, 539, 1, None, 'bfloat16', 'cudnn'),
    ('odd tiny 7', 1, 7, 7, 1, None, 'bfloat16', 'cudnn'),
    ('float32 model: falls back', 1, 197, 197, 1, None, 'float32', 'xla'),
]


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  if not np.all(np.isfinite(a)):
    return float('inf')
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def fake_gpu(fn, *args):
  """fn(*args) with the target platform faked as an NVIDIA GPU (an abstract mesh)."""
  mesh = jax.sharding.AbstractMesh((1,), ('data',), abstract_device=jax.sharding.AbstractDevice(
      device_kind='NVIDIA H200', num_cores=1, platform='gpu'))
  with jax.sharding.use_abstract_mesh(mesh):
    return fn(*args)


def check(case, args, on_gpu: bool):
  name, groups, tq, tk, head_div, head_dim, dtype, expected = case
  b, n, d = args.batch * groups, max(args.heads // head_div, 1), head_dim or args.head_dim
  rng = np.random.RandomState(tq * 7 + tk)
  q = rng.standard_normal((b, tq, n, d)).astype(np.float32)
  k, v = (rng.standard_normal((b, tk, n, d)).astype(np.float32) for _ in range(2))
  ct = rng.standard_normal((b, tq, n, d)).astype(np.float32)
  # The inputs as the model would hand them over; the reference sees exactly these values.
  q, k, v = (jnp.asarray(a, dtype) for a in (q, k, v))
  resolve = lambda: attention.resolve_impl(args.impl, q, k)  # noqa: E731
  chosen = resolve() if on_gpu else fake_gpu(resolve)
  if on_gpu:
    fn = lambda *a: attention.dot_product_attention(*a, impl=args.impl)  # noqa: E731
  elif chosen == 'cudnn':   # the cuDNN wrapper through XLA: padding, masking and slicing only
    fn = lambda *a: attention.cudnn_attention(*a, implementation='xla')  # noqa: E731
  else:
    fn = lambda *a: attention.dot_product_attention(*a, impl=chosen)  # noqa: E731
  ref = lambda *a: attention.einsum_attention(*(x.astype(jnp.float32) for x in a))  # noqa: E731

  def out_and_grads(f, q, k, v, ct):
    out, vjp = jax.vjp(lambda *a: f(*a).astype(jnp.float32), q, k, v)
    return (out, *vjp(ct))

  start = time.time()
  got = jax.block_until_ready(jax.jit(functools.partial(out_and_grads, fn))(q, k, v, ct))
  want = jax.block_until_ready(jax.jit(functools.partial(out_and_grads, ref))(q, k, v, ct))
  errs = [rel_err(a, b) for a, b in zip(got, want)]
  ok = max(errs) <= args.tolerance and (not args.platform_check or chosen == expected)
  print(f"{'ok  ' if ok else 'FAIL'} {name:<30} B={b:<5} Tq={tq:<5} Tk={tk:<5} N={n:<3} d={d:<4} "
        f"{dtype:<9} impl={chosen:<6} out {errs[0]:.1e}  dq {errs[1]:.1e}  dk {errs[2]:.1e}  "
        f"dv {errs[3]:.1e}  ({time.time() - start:.1f} s)", flush=True)
  return ok


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--platform_check', default='true', choices=('true', 'false'),
                  help="true: needs a GPU and the expected kernel ('cudnn' for 16-bit inputs)")
  ap.add_argument('--impl', default='auto', choices=('auto', 'cudnn'))
  ap.add_argument('--batch', type=int, default=2, help='examples (each splits into its groups)')
  ap.add_argument('--heads', type=int, default=12)
  ap.add_argument('--head_dim', type=int, default=64)
  ap.add_argument('--tolerance', type=float, default=2e-2, help='max relative error (bfloat16)')
  ap.add_argument('--multiple', type=int, default=attention.CUDNN_SEQ_MULTIPLE,
                  help='pad sequence lengths to a multiple of this')
  ap.add_argument('--mask', default=attention.CUDNN_MASK, choices=('seqlens', 'bias'))
  ap.add_argument('--cases', default='', help='comma-separated substrings of case names')
  args = ap.parse_args(argv)
  args.platform_check = args.platform_check == 'true'
  attention.CUDNN_SEQ_MULTIPLE, attention.CUDNN_MASK = args.multiple, args.mask

  on_gpu = jax.default_backend() == 'gpu'
  device = jax.devices()[0]
  print(f'jax {jax.__version__}, {device.platform} {device.device_kind}, compute capability '
        f'{attention.gpu_capability() if on_gpu else None}, cuDNN {cudnn_version()}; '
        f'padding to a multiple of {args.multiple}, mask {args.mask!r}', flush=True)
  if args.platform_check and not on_gpu:
    print(f"no GPU here ({jax.default_backend()}): run on a GPU, or with --platform_check=false to "
          'run the cuDNN wrapper through XLA.')
    return 2
  cases = [c for c in CASES if not args.cases or any(s in c[0] for s in args.cases.split(','))]
  start = time.time()
  failed = [c[0] for c in cases if not check(c, args, on_gpu)]
  print(f'{len(cases) - len(failed)}/{len(cases)} passed in {time.time() - start:.0f} s'
        + (f"; FAILED: {', '.join(failed)}" if failed else ''))
  return 1 if failed else 0


def cudnn_version():
  try:
    from sparse_tubes import compat  # pylint: disable=g-import-not-at-top
    return compat.cudnn_version()
  except Exception:  # noqa: BLE001  (best effort: only printed)
    return None


if __name__ == '__main__':
  sys.exit(main())
