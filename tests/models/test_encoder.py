import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_tubes.models import encoder


def make(num_layers=2, **kw):
  return encoder.Encoder(num_layers, 24, 2, 48, rngs=nnx.Rngs(0), **kw)


def test_stochastic_depth_rises_linearly():
  enc = make(num_layers=3, stochastic_depth=0.2)
  assert enc.drop_rates == pytest.approx((0.0, 0.1, 0.2))


def test_dropout_and_drop_path_only_in_train_with_rngs():
  x = np.random.RandomState(0).standard_normal((8, 5, 24)).astype(np.float32)
  enc = make(dropout=0.3, stochastic_depth=0.5)
  run = nnx.jit(lambda enc, x, key: enc(x, train=True, rngs=nnx.Rngs(dropout=key)))
  evaluate = nnx.jit(lambda enc, x: enc(x))
  k1, k2 = jax.random.key(1), jax.random.key(2)
  a, b = run(enc, x, k1), run(enc, x, k2)
  assert not np.allclose(a, evaluate(enc, x)) and not np.allclose(a, b)
  np.testing.assert_array_equal(a, run(enc, x, k1))
  with pytest.raises(ValueError, match='rngs=nnx.Rngs\\(dropout=key\\)'):
    nnx.jit(lambda enc, x: enc(x, train=True))(enc, x)


def test_drop_path_is_per_example():
  x = jnp.ones((64, 3, 4))
  y = encoder.drop_path(x, 0.5, train=True, rngs=nnx.Rngs(dropout=0))
  per_example = y.reshape(64, -1)
  assert set(np.unique(per_example)) <= {0.0, 2.0}
  assert np.all(per_example.min(1) == per_example.max(1))


def test_remat_same_values_and_grads():
  x = np.random.RandomState(0).standard_normal((2, 5, 24)).astype(np.float32)
  def loss(model):
    return jnp.sum(model(x, train=True, rngs=nnx.Rngs(dropout=3)) ** 2)
  plain, remat = make(dropout=0.1), make(dropout=0.1, remat=True)
  (l1, g1), (l2, g2) = (nnx.jit(nnx.value_and_grad(loss))(m) for m in (plain, remat))
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
