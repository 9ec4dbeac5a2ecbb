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
