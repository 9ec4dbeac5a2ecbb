import jax
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


def test_tubevit_pooling_has_no_mlp_and_ends_in_layer_norm():
  """mlp_dim=0 is TubeViT's pooling: LN(attention(probe, tokens)); mlp_dim > 0 adds big_vision's
  MLP block (2 * D * mlp_dim + mlp_dim + D parameters) on the residual path."""
  x = np.random.RandomState(1).standard_normal((2, 5, 16)).astype(np.float32)
  paper = heads.MAPHead(16, 2, 0, rngs=nnx.Rngs(0))
  mlp = heads.MAPHead(16, 2, 32, rngs=nnx.Rngs(0))
  count = lambda m: sum(v.size for v in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
  assert paper.mlp is None
  assert count(mlp) - count(paper) == 2 * 16 * 32 + 32 + 16
  pooled = paper.attention(jnp.broadcast_to(paper.probe[...], (2, 1, 16)), x)
  np.testing.assert_allclose(paper(x), paper.norm(pooled)[:, 0], atol=1e-6)
  y = np.asarray(paper(x))  # LayerNorm output: zero mean, unit variance per example (scale 1)
  np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(y.std(-1), 1, atol=1e-3)
