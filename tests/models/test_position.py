import numpy as np
import pytest
from flax import nnx

from sparse_tubes.models import position


def test_sincos_at_origin_is_sin0_cos1():
  z = position.sincos_3d(np.zeros((1, 3)), 12)
  np.testing.assert_allclose(z[0], [0, 1, 0, 1, 0, 1] * 2)


def test_sincos_layout_follows_eq7():
  t, y, x, dim, tau = 3.0, 5.0, 7.0, 18, 10000.
  z = position.sincos_3d(np.array([[t, y, x]]), dim, tau)[0]
  for j in range(dim // 6):
    w = tau ** (-j / (dim // 6))
    expected = [np.sin(t * w), np.cos(t * w), np.sin(x * w), np.cos(x * w),
                np.sin(y * w), np.cos(y * w)]
    np.testing.assert_allclose(z[6 * j:6 * j + 6], expected, rtol=1e-6, atol=1e-7)


def test_dim_not_multiple_of_6_is_zero_padded():
  z = position.sincos_3d(np.random.RandomState(0).uniform(0, 32, (5, 3)), 64)
  assert z.shape == (5, 64) and z.dtype == np.float32
  assert np.all(z[:, 60:] == 0) and np.all(np.abs(z[:, :60]).sum(-1) > 0)
  with pytest.raises(ValueError, match='dim >= 6'):
    position.sincos_3d(np.zeros((1, 3)), 4)


def test_different_centres_differ():
  centres = np.array([[0., 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 4, 4]])
  z = position.sincos_3d(centres, 48)
  d = np.linalg.norm(z[:, None] - z[None], axis=-1)
  assert np.all(d[~np.eye(5, dtype=bool)] > 1e-3)


def test_learned_posemb_slices_leading_grid():
  emb = position.LearnedPosEmb([(2, 3, 3), (1, 4, 4)], 24, rngs=nnx.Rngs(0))
  z = emb(((0, (2, 3, 3)), (1, (1, 2, 2))))
  assert z.shape == (18 + 4, 24)
  np.testing.assert_allclose(z[18:], emb.tables[1][...][0, :2, :2].reshape(4, 24))
  with pytest.raises(ValueError, match='input_shape'):
    emb(((1, (2, 4, 4)),))
