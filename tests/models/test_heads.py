import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_tubes.models import heads


def test_map_head_pools_tokens():
  head = heads.MAPHead(24, 2, 48, rngs=nnx.Rngs(0))
  x = np.random.RandomState(0).standard_normal((3, 7, 24)).astype(np.float32)
  pool = nnx.jit(lambda head, x: head(x))
  y = pool(head, x)
  assert y.shape == (3, 24)
  # Attention pooling is permutation-invariant over tokens.
  np.testing.assert_allclose(y, pool(head, x[:, ::-1]), atol=1e-5)


def test_gap():
  x = jnp.arange(24.).reshape(2, 3, 4)
  np.testing.assert_allclose(heads.gap(x), x.mean(1))


def test_dataset_heads_zero_init_and_unknown_name():
  hs = heads.dataset_heads(24, {'video': 5, 'image': 3}, rngs=nnx.Rngs(0))
  assert hs['video'].kernel.shape == (24, 5) and hs['image'].kernel.shape == (24, 3)
  assert not np.any(hs['video'].kernel[...]) and not np.any(hs['video'].bias[...])
  with pytest.raises(ValueError, match=r"'kinetics'.*\['image', 'video'\]"):
    heads.check_dataset(hs, 'kinetics')
