import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sparse_tubes import defaults
from sparse_tubes.train import sharding


def mesh_cfg(**kw):
  return ml_collections.ConfigDict(dict(dict(data=-1, fsdp=1, tensor=1), **kw))


def test_mesh_shape_fills_minus_one():
  assert sharding.mesh_shape(mesh_cfg(), 8) == (8, 1, 1)
  assert sharding.mesh_shape(mesh_cfg(fsdp=2), 8) == (4, 2, 1)
  assert sharding.mesh_shape(mesh_cfg(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)


@pytest.mark.parametrize('cfg,n,msg', [
    (dict(data=-1, fsdp=-1), 8, 'at most one axis'),
    (dict(data=3), 8, 'needs 3 devices'),
    (dict(fsdp=3), 8, 'not divisible'),
])
def test_mesh_errors(cfg, n, msg):
  with pytest.raises(ValueError, match=msg):
    sharding.mesh_shape(mesh_cfg(**cfg), n)


def test_logical_rules():
  rules = sharding.rules_tuple(defaults.base().sharding_rules)
  assert sharding.batch_axes(rules) == ('data', 'fsdp')


def test_global_batch_single_device():
  mesh = sharding.make_mesh(mesh_cfg())
  rules = defaults.base().sharding_rules
  local = {'inputs': np.ones((4, 2, 3), np.float32), 'label': np.arange(4, dtype=np.int32)}
  g = sharding.global_batch(local, mesh, rules)
  assert g['inputs'].shape == (4, 2, 3)
  np.testing.assert_array_equal(np.asarray(g['label']), np.arange(4))
  assert g['inputs'].sharding.spec == P(('data', 'fsdp'), None, None)
