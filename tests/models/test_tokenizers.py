import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from sparse_tubes.models import tokenizers

# TubeViT Table 12: (kernel, stride, offset), (t, h, w).
PAPER_TUBES = (
    ((8, 8, 8), (16, 32, 32), (0, 0, 0)),
    ((16, 4, 4), (6, 32, 32), (4, 8, 8)),
    ((4, 12, 12), (16, 32, 32), (0, 16, 16)),
    ((1, 16, 16), (32, 16, 16), (0, 0, 0)),
)
TINY_TUBES = (
    ((8, 4, 4), (4, 16, 16), (0, 4, 4)),
    ((4, 8, 8), (4, 16, 16), (0, 0, 0)),
    ((2, 12, 12), (4, 16, 16), (0, 8, 8)),
    ((1, 8, 8), (8, 8, 8), (0, 0, 0)),
)


def model_cfg(tubes, image_tube=3):
  return ml_collections.ConfigDict(dict(tubes=tubes, image_tube=image_tube))


def test_paper_table_gives_539_tokens_on_32x224x224():
  counts = tokenizers.count_tokens(model_cfg(PAPER_TUBES), (32, 224, 224, 3))
  assert counts['per_tube'] == [2 * 7 * 7, 3 * 7 * 7, 2 * 7 * 7, 1 * 14 * 14]
  assert counts['total'] == 539


def test_no_padding_convention_gives_the_papers_559():
  """The paper quotes 559; VALID and SAME padding, from 0 or from the offset, all give 49n + 196m."""
  def count(n_axis):
    return sum(int(np.prod([n_axis(l, k, s, o) for l, k, s, o in zip((32, 224, 224), *tube)]))
               for tube in PAPER_TUBES)
  valid = count(lambda l, k, s, o: (l - o - k) // s + 1)
  same = count(lambda l, k, s, o: -(-l // s))
  same_from_offset = count(lambda l, k, s, o: -(-(l - o) // s))
  assert (valid, same, same_from_offset) == (539, 686, 637)
  assert 559 % 49 != 0 and all((559 - 196 * m) % 49 for m in range(3))


def test_tiny_config_counts():
  cfg = model_cfg(TINY_TUBES)
  assert tokenizers.count_tokens(cfg, (8, 32, 32, 3)) == dict(per_tube=[4, 8, 2, 16], total=30)
  assert tokenizers.count_tokens(cfg, (32, 32, 3)) == dict(per_tube=[0, 0, 0, 16], total=16)


def test_tube_grid_counts_from_the_offset():
  assert tokenizers.tube_grid((16, 4, 4), (6, 32, 32), (4, 8, 8), (32, 224, 224)) == (3, 7, 7)
  assert tokenizers.tube_grid((4, 4, 4), (4, 4, 4), (2, 0, 0), (8, 8, 8)) == (1, 2, 2)
  assert tokenizers.tube_grid((8, 8, 8), (1, 1, 1), (0, 0, 0), (4, 8, 8)) == (0, 1, 1)


def test_centres_include_stride_offset_and_kernel():
  c = tokenizers.tube_centres((4, 12, 12), (16, 32, 32), (0, 16, 16), (2, 7, 7))
  assert c.shape == (98, 3)
  np.testing.assert_allclose(c[0], [2., 22., 22.])          # offset + kernel / 2
  np.testing.assert_allclose(c[1], [2., 22., 54.])          # next along x: + stride
  np.testing.assert_allclose(c[7], [2., 54., 22.])          # next along y
  np.testing.assert_allclose(c[49], [18., 22., 22.])        # next along t


def test_validate_names_the_tube_that_does_not_fit():
  with pytest.raises(ValueError, match=r'config\.model\.tubes\[0\].*time.*kernel 8 \+ offset 0 > 4'):
    tokenizers.validate_tubes(model_cfg(TINY_TUBES), (4, 32, 32, 3))
  with pytest.raises(ValueError, match=r'config\.model\.tubes\[2\].*height'):
    tokenizers.validate_tubes(model_cfg(TINY_TUBES), (8, 16, 32, 3))
  tokenizers.validate_tubes(model_cfg(TINY_TUBES), (32, 32, 3))  # images: image tube only


def test_validate_image_tube_must_be_2d_and_exist():
  with pytest.raises(ValueError, match=r'config\.model\.tubes\[1\] is the image tube.*kernel t is 4'):
    tokenizers.validate_tubes(model_cfg(TINY_TUBES, image_tube=1))
  with pytest.raises(ValueError, match=r'config\.model\.image_tube = 7'):
    tokenizers.validate_tubes(model_cfg(TINY_TUBES, image_tube=7))
  with pytest.raises(ValueError, match=r'config\.model\.tubes\[0\].*is not a tube'):
    tokenizers.validate_tubes(model_cfg((((8, 4), (4, 4, 4), (0, 0, 0)),), image_tube=0))


def test_input_shape_convention_is_checked():
  with pytest.raises(ValueError, match=r'\(T, H, W, C\) for a video or \(H, W, C\)'):
    tokenizers.count_tokens(model_cfg(PAPER_TUBES), (32, 224, 224))


def test_sparse_tubes_tokens_and_image_path():
  tok = tokenizers.SparseTubes(TINY_TUBES, 24, image_tube=3, rngs=nnx.Rngs(0))
  static = {}

  @nnx.jit  # one compile per input shape rather than one per op
  def tokenize(tok, x):
    out = tok(x)
    static[x.ndim] = out.centres, out.grids  # shape-only, known at trace time
    return out.tokens

  x = np.random.RandomState(0).standard_normal((2, 8, 32, 32, 3)).astype(np.float32)
  video, image = tokenize(tok, x), tokenize(tok, x[:, 0])
  (video_centres, video_grids), (image_centres, image_grids) = static[5], static[4]
  assert video.shape == (2, 30, 24) and video_centres.shape == (30, 3)
  assert [g for _, g in video_grids] == [(1, 2, 2), (2, 2, 2), (2, 1, 1), (1, 4, 4)]
  assert image.shape == (2, 16, 24) and image_grids == ((3, (1, 4, 4)),)
  # An image token is the same as frame 0's 2D patch: same weights, same centre.
  np.testing.assert_allclose(image, video[:, 14:], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(image_centres, video_centres[14:])


def test_conv_applied_from_the_offset():
  tube = ((1, 2, 2), (1, 2, 2), (0, 1, 1))
  tok = tokenizers.SparseTubes((tube,), 4, image_tube=0, in_channels=1, rngs=nnx.Rngs(0))
  x = np.random.RandomState(1).standard_normal((1, 1, 5, 5, 1)).astype(np.float32)
  out = tok(x).tokens.reshape(2, 2, 4)
  w = tok.convs[0].kernel[...][0, :, :, 0, :]
  expected = jnp.einsum('hw,hwd->d', x[0, 0, 3:5, 1:3, 0], w) + tok.convs[0].bias[...]
  np.testing.assert_allclose(out[1, 0], expected, rtol=1e-5, atol=1e-6)


# --- Tubes are slices + one matmul, equal to the 3D convolution they replace ----------------------

def conv_reference(x, kernel, bias, stride):
  """The VALID 3D convolution every tube computes. Kept here only, as the reference: the library
  does not use it (its backward pass crashed cuDNN autotuning on an H200, see tokenizers.py)."""
  y = jax.lax.conv_general_dilated(x, kernel, stride, 'VALID',
                                   dimension_numbers=('NTHWC', 'THWIO', 'NTHWC'),
                                   precision=jax.lax.Precision.HIGHEST)
  return y + bias


def reference_tokens(tok, x):
  """SparseTubes' tokens through `conv_reference`, with tok's own parameters."""
  if x.ndim == 4:
    x, used = x[:, None], [tok.image_tube]
  else:
    used = range(len(tok.tubes))
  out = []
  for i in used:
    _, s, o = tok.tubes[i]
    xi = x[:, o[0]:, o[1]:, o[2]:]
    if tok.variant == 'interpolated':
      y = conv_reference(xi, tok.tube_kernel(i), tok.bias[...], s)
    else:
      if tok.variant == 'space_to_depth':
        xi = tokenizers.space_to_depth(xi, tok.fold)
      y = conv_reference(xi, tok.convs[i].kernel[...], tok.convs[i].bias[...],
                         tuple(a // f for a, f in zip(s, tok.fold)))
    out.append(y.reshape(y.shape[0], -1, y.shape[-1]))
  return jnp.concatenate(out, axis=1)


def random_tokenizer(tubes, image_tube, **kw):
  """SparseTubes with random parameters (biases too, so they are checked), built abstractly: eager
  initialisation would compile every initialiser op by op."""
  tok = nnx.eval_shape(lambda: tokenizers.SparseTubes(tubes, 8, image_tube=image_tube,
                                                      rngs=nnx.Rngs(0), **kw))
  graphdef, params = nnx.split(tok)
  rng = np.random.RandomState(1)
  params = jax.tree.map(lambda p: (0.1 * rng.standard_normal(p.shape)).astype(p.dtype), params)
  return nnx.merge(graphdef, params)


def assert_close(a, b):
  """Equal to 1e-5 of the array's scale (float32): summing the same products in another order,
  as the convolution does, moves a kernel gradient of size 100 by ~1e-4 in absolute terms."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape and a.dtype == b.dtype == np.float32
  scale = max(1., float(np.abs(b).max()))
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)


def assert_tokens_and_gradients_match(tok, x):
  """Tokens, and gradients w.r.t. the input and every parameter, equal to the convolution's."""
  graphdef, params = nnx.split(tok)

  def tokens_and_gradients(forward):
    @jax.jit
    def f(params, x, cotangent):
      y, vjp = jax.vjp(lambda p, x: forward(nnx.merge(graphdef, p), x), params, x)
      return y, vjp(cotangent)
    return f

  shape = jax.eval_shape(lambda x: tok(x).tokens, x).shape
  cotangent = np.random.RandomState(2).standard_normal(shape).astype(np.float32)
  y, grads = tokens_and_gradients(lambda tok, x: tok(x).tokens)(params, x, cotangent)
  y_ref, grads_ref = tokens_and_gradients(reference_tokens)(params, x, cotangent)
  assert_close(y, y_ref)
  flat, flat_ref = jax.tree.leaves(grads), jax.tree.leaves(grads_ref)
  assert len(flat) == len(flat_ref) == len(jax.tree.leaves(params)) + 1
  for g, g_ref in zip(flat, flat_ref):
    assert_close(g, g_ref)


def video(shape, seed=0):
  return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize('length,kernel,stride', [
    (32, 8, 16), (28, 16, 6), (208, 12, 32), (31, 2, 2), (9, 3, 1), (10, 1, 4)])
def test_windows_cut_every_valid_window(length, kernel, stride):
  x = np.arange(length, dtype=np.float32)[None, :, None] + np.zeros((2, 1, 3), np.float32)
  out = np.asarray(jax.jit(tokenizers.windows, static_argnums=(1, 2, 3))(x, 1, kernel, stride))
  n = (length - kernel) // stride + 1
  expected = stride * np.arange(n)[:, None] + np.arange(kernel)[None, :]
  assert out.shape == (2, n, kernel, 3)
  np.testing.assert_array_equal(out[1, :, :, 2], expected)


TUBELET = ((2, 16, 16), (2, 16, 16), (0, 0, 0))     # ViViT §3.2 tubelet embedding
PATCH = ((1, 16, 16), (1, 16, 16), (0, 0, 0))       # TimeSformer / ViT 2D patches
OVERLAP_AND_GAPS = ((3, 5, 7), (2, 3, 9), (1, 2, 0))


# The paper's table on its 32 frames and on an odd input size; the tubelet and 2D patch (stride ==
# kernel: a pure reshape) on odd sizes that leave remainders, with a tube overlapping and gapped
# along every axis. Few frames for the 2D patch: the reference convolution's backward pass takes
# XLA:CPU seconds per frame there.
@pytest.mark.parametrize('tubes,image_tube,shape', [
    (PAPER_TUBES, 3, (1, 32, 64, 96, 3)),
    (PAPER_TUBES, 3, (2, 29, 75, 77, 3)),
    ((TUBELET, PATCH, OVERLAP_AND_GAPS), 1, (2, 5, 35, 49, 3)),
], ids=['paper_32_frames', 'paper_odd', 'vivit_timesformer_odd'])
def test_tubes_equal_the_convolution_with_gradients(tubes, image_tube, shape):
  assert_tokens_and_gradients_match(random_tokenizer(tubes, image_tube), video(shape))


def test_image_path_equals_the_convolution_with_gradients():
  tok = random_tokenizer(TINY_TUBES, 3)
  assert_tokens_and_gradients_match(tok, video((2, 33, 35, 3)))


@pytest.mark.parametrize('fold,image_tube', [((1, 2, 2), 3), ((2, 2, 2), None)])
def test_space_to_depth_equals_the_convolution_with_gradients(fold, image_tube):
  tubes = PAPER_TUBES[:3] + (((fold[0], 16, 16), (32, 16, 16), (0, 0, 0)),)
  tok = random_tokenizer(tubes, image_tube, variant='space_to_depth', fold=fold)
  assert tok.convs[1].kernel.shape == (16 // fold[0], 4 // fold[1], 4 // fold[2],
                                       3 * int(np.prod(fold)), 8)
  assert_tokens_and_gradients_match(tok, video((2, 21, 45, 47, 3)))


def test_interpolated_kernel_equals_the_convolution_with_gradients():
  tok = random_tokenizer(PAPER_TUBES, 3, variant='interpolated')
  assert_tokens_and_gradients_match(tok, video((2, 21, 45, 47, 3)))


def hlo_ops(forward, tok, x):
  """StableHLO op names of jit(grad(sum(forward(tok, x)))) w.r.t. the parameters and input."""
  graphdef, params = nnx.split(tok)

  def loss(params, x):
    return jnp.sum(forward(nnx.merge(graphdef, params), x) ** 2)
  text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).as_text()
  return set(re.findall(r'stablehlo\.([a-z_]+)', text))


@pytest.mark.parametrize('variant', tokenizers.VARIANTS)
def test_forward_and_backward_have_no_convolution_gather_or_scatter(variant):
  """The backward pass is matmuls, pads and adds: no convolution for XLA to autotune on GPU (where
  autotuning the 17x193x193 backward convolution crashed), and no scatter-add (atomics on GPU)."""
  tok = nnx.eval_shape(lambda: tokenizers.SparseTubes(PAPER_TUBES, 16, image_tube=3,
                                                      variant=variant, rngs=nnx.Rngs(0)))
  x = jax.ShapeDtypeStruct((2, 32, 224, 224, 3), jnp.float32)
  ops = hlo_ops(lambda tok, x: tok(x).tokens, tok, x)
  assert 'dot_general' in ops
  assert not ops & {'convolution', 'gather', 'scatter'}, ops
  # The check can fail: the convolution it replaces shows up under the same search.
  assert 'convolution' in hlo_ops(reference_tokens, tok, x)
