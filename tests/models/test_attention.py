import jax
import numpy as np
import pytest
from flax import nnx

from sparse_tubes.models import attention


def test_impls_agree():
  rng = np.random.RandomState(0)
  q, k, v = (rng.standard_normal((2, s, 4, 8)).astype(np.float32) for s in (5, 7, 7))
  xla = jax.jit(lambda *a: attention.dot_product_attention(*a, impl='xla'))(q, k, v)
  einsum = jax.jit(lambda *a: attention.dot_product_attention(*a, impl='einsum'))(q, k, v)
  assert xla.shape == (2, 5, 4, 8)
  np.testing.assert_allclose(xla, einsum, atol=1e-5)


def test_mha_impls_agree_and_cross_attend():
  x = np.random.RandomState(1).standard_normal((2, 9, 24)).astype(np.float32)
  probe = np.random.RandomState(2).standard_normal((2, 1, 24)).astype(np.float32)
  a = attention.MultiHeadAttention(24, 2, attention_impl='xla', rngs=nnx.Rngs(0))
  b = attention.MultiHeadAttention(24, 2, attention_impl='einsum', rngs=nnx.Rngs(0))
  attend = nnx.jit(lambda m, *x: m(*x))
  np.testing.assert_allclose(attend(a, x), attend(b, x), atol=1e-5)
  assert attend(a, probe, x).shape == (2, 1, 24)
  np.testing.assert_allclose(attend(a, probe, x), attend(b, probe, x), atol=1e-5)


def test_auto_is_einsum_on_cpu_and_bad_impl_errors():
  assert attention.resolve_impl('auto') == ('einsum' if jax.default_backend() == 'cpu' else 'xla')
  with pytest.raises(ValueError, match='attention_impl'):
    attention.MultiHeadAttention(24, 2, attention_impl='flash', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='not divisible'):
    attention.MultiHeadAttention(10, 4, rngs=nnx.Rngs(0))
