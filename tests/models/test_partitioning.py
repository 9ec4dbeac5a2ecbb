"""Logical axis names -> mesh axes: each name takes its first rule whose mesh axes are still free;
without a mesh and rules the constraints are no-ops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_tubes.models import partitioning

RULES = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('embed', 'tensor'), ('mlp', 'tensor'),
         ('heads', 'tensor'), ('tokens', None))


@pytest.mark.parametrize('names,spec', [
    (('batch', 'tokens', 'embed'), (('data', 'fsdp'), None, 'tensor')),  # fsdp taken: next rule
    (('embed', 'mlp'), ('fsdp', 'tensor')),
    (('embed', 'heads', 'kv'), ('fsdp', 'tensor', None)),  # 'kv' has no rule
    (('mlp', 'heads'), ('tensor', None)),  # one mesh axis shards one dimension only
    ((None, 'embed'), (None, 'fsdp')),
])
def test_logical_to_mesh(names, spec):
  assert partitioning.logical_to_mesh(names, RULES) == jax.sharding.PartitionSpec(*spec)


def test_constrain_and_names_without_a_mesh():
  assert partitioning.active_mesh_and_rules()[0] is None
  x = jnp.arange(6.0).reshape(1, 2, 3)
  np.testing.assert_array_equal(partitioning.constrain(x, partitioning.BTE), x)
  init = partitioning.names(nnx.initializers.ones, ('embed', 'mlp'))
  layer = nnx.Linear(2, 3, kernel_init=init, rngs=nnx.Rngs(0))  # names recorded, not applied
  assert nnx.get_partition_spec(nnx.state(layer))['kernel'].value == jax.sharding.PartitionSpec(
      'embed', 'mlp')
  assert layer.kernel.get_metadata()['eager_sharding'] is False
