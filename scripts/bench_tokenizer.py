"""Forward + backward time of the TubeViT tokenizer: 3D convolutions against what the library does
(windows cut by slicing, then one matmul per tube; sparse_tubes/models/tokenizers.py).

TubeViT-B size by default: the four tubes of Table 12, hidden 768, 32x224x224x3 clips. The backward
pass is taken w.r.t. the tube kernels and biases (what training needs) and, with --wrt_input, the
clip too. Prints milliseconds per step (median of --repeats after one warm-up call) and the largest
difference between the two gradients, relative to each array's scale. Figures only, no assertions.

  python scripts/bench_tokenizer.py [--batch=1,2] [--hidden=768] [--frames=32] [--size=224]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from sparse_tubes import zoo  # noqa: E402
from sparse_tubes.models import tokenizers  # noqa: E402


def conv_tokens(tok, x):
  """The same tokens through one lax 3D convolution per tube (what the library did before)."""
  out = []
  for i, (_, s, o) in enumerate(tok.tubes):
    y = jax.lax.conv_general_dilated(x[:, o[0]:, o[1]:, o[2]:], tok.convs[i].kernel[...], s,
                                     'VALID', dimension_numbers=('NTHWC', 'THWIO', 'NTHWC'))
    y = y + tok.convs[i].bias[...]
    out.append(y.reshape(y.shape[0], -1, y.shape[-1]))
  return jax.numpy.concatenate(out, axis=1)


def matmul_tokens(tok, x):
  return tok(x).tokens


def step_fn(forward, graphdef, wrt_input):
  """jit(value and gradients of sum(tokens * cotangent)), w.r.t. the parameters (and the clip)."""
  def loss(params, x, cotangent):
    return (forward(nnx.merge(graphdef, params), x) * cotangent).sum()
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1) if wrt_input else 0))


def time_ms(fn, *args, repeats):
  out = jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(1e3 * (time.perf_counter() - start))
  return float(np.median(times)), out


def max_relative_difference(a, b):
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max() / max(1., np.abs(y).max()))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--batch', default='1,2', help='comma-separated batch sizes')
  ap.add_argument('--hidden', type=int, default=768, help='token width D (TubeViT-B: 768)')
  ap.add_argument('--frames', type=int, default=32)
  ap.add_argument('--size', type=int, default=224, help='height = width')
  ap.add_argument('--repeats', type=int, default=5)
  ap.add_argument('--wrt_input', action='store_true', help='also differentiate w.r.t. the clip')
  args = ap.parse_args(argv)

  tok = tokenizers.SparseTubes(zoo.TUBEVIT_TUBES, args.hidden, image_tube=3, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(tok)
  shape = (args.frames, args.size, args.size, 3)
  n_tokens = tokenizers.count_tokens(dict(tubes=zoo.TUBEVIT_TUBES, image_tube=3), shape)['total']
  print(f'{jax.devices()[0].platform}: TubeViT tubes (Table 12), {n_tokens} tokens of width '
        f'{args.hidden} per {"x".join(map(str, shape))} clip; forward + backward w.r.t. '
        f'{"parameters and clip" if args.wrt_input else "parameters"}, median of {args.repeats}')
  rng = np.random.RandomState(0)
  for batch in (int(b) for b in args.batch.split(',')):
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    cotangent = rng.standard_normal((batch, n_tokens, args.hidden)).astype(np.float32)
    results = {}
    for name, forward in (('conv', conv_tokens), ('slices+matmul', matmul_tokens)):
      results[name] = time_ms(step_fn(forward, graphdef, args.wrt_input), params, x, cotangent,
                              repeats=args.repeats)
    (conv_ms, conv_out), (ours_ms, ours_out) = results['conv'], results['slices+matmul']
    print(f'batch {batch}: conv {conv_ms:9.1f} ms   slices+matmul {ours_ms:9.1f} ms   '
          f'speed-up x{conv_ms / ours_ms:.1f}   max |grad difference| / scale '
          f'{max_relative_difference(ours_out[1], conv_out[1]):.1e}')


if __name__ == '__main__':
  main()
