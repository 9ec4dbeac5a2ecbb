import dataclasses

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import TINY_CONFIG
from sparse_tubes import config as config_lib
from sparse_tubes import validation
from sparse_tubes import defaults
from sparse_tubes.train import sharding


def mesh_cfg(**kw):
  c = defaults.base().mesh
  c.update(kw)
  return c


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


# Multislice. Stand-ins for devices: what the mesh helpers read of a jax.Device.
@dataclasses.dataclass(frozen=True)
class FakeTpu:
  id: int
  process_index: int
  slice_index: int
  coords: tuple[int, int, int]
  core_on_chip: int = 0
  platform: str = 'tpu'
  device_kind: str = 'TPU v5 lite'


@dataclasses.dataclass(frozen=True)
class FakeCpu:   # slice_index 0 for all, as multi-process CPU devices have: each process is a slice
  id: int
  process_index: int
  slice_index: int = 0
  platform: str = 'cpu'
  device_kind: str = 'cpu'


def fake_slices(slices: int, per_slice: int = 4, hosts_per_slice: int = 2):
  """`slices` v5e 2x2 slices. Listed slice 1 first: the mesh must not depend on jax's order."""
  devices = [FakeTpu(i, i // (per_slice // hosts_per_slice), i // per_slice,
                     (i % 2, i // 2 % 2, 0)) for i in range(slices * per_slice)]
  return devices[per_slice:] + devices[:per_slice]


def test_slices_split_the_data_axis_only():
  assert sharding.slice_shapes(mesh_cfg(slices=2), 8) == ((4, 1, 1), (2, 1, 1))
  assert sharding.slice_shapes(mesh_cfg(data=2, fsdp=-1, slices=2), 8) == ((1, 4, 1), (2, 1, 1))
  mesh = sharding.make_mesh(mesh_cfg(data=4, fsdp=2, slices=2), fake_slices(2, 4))
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2, 'tensor': 1}
  grid = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  # The outer half of 'data' is the slice; every fsdp (and tensor) group lies in one slice.
  np.testing.assert_array_equal(grid[:, :, 0], [[0, 0], [0, 0], [1, 1], [1, 1]])
  # fsdp=-1 within a slice: one FSDP group of 4 per slice, data across the 2 slices.
  mesh = sharding.make_mesh(mesh_cfg(data=2, fsdp=-1, slices=2), fake_slices(2, 4))
  grid = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 4, 'tensor': 1}
  np.testing.assert_array_equal(grid[:, :, 0], [[0] * 4, [1] * 4])


def test_processes_are_slices_without_slice_index():
  devices = [FakeCpu(i, i // 2) for i in range(4)]
  mesh = sharding.make_mesh(mesh_cfg(slices=2), devices)
  assert [d.process_index for d in mesh.devices.flat] == [0, 0, 1, 1]
  with pytest.raises(ValueError, match=r'slices=4 but the 4 devices are on 2 processes'):
    sharding.make_mesh(mesh_cfg(slices=4), devices)


@pytest.mark.parametrize('cfg,n,msg', [
    (dict(data=1, fsdp=-1, slices=2), 8, r'only the data axis spans slices.*data=2 with config.mesh.fsdp=-1'),
    (dict(slices=3), 8, r'slices=3 must be >= 1 and divide the 8 devices'),
    (dict(slices=0), 8, r'slices=0 must be >= 1'),
])
def test_slice_errors(cfg, n, msg):
  with pytest.raises(ValueError, match=msg):
    sharding.mesh_shape(mesh_cfg(**cfg), n)


def test_devices_on_more_slices_than_configured():
  with pytest.raises(ValueError, match=r'on 2 TPU slices .* set config.mesh.slices=2'):
    sharding.make_mesh(mesh_cfg(), fake_slices(2, 4))
  with pytest.raises(ValueError, match=r'slices=4 but the 8 devices are on 2 TPU slices'):
    sharding.make_mesh(mesh_cfg(slices=4), fake_slices(2, 4))


def test_config_validation_names_the_slices():
  c = config_lib.load(TINY_CONFIG)
  c.mesh.update(data=1, fsdp=-1, slices=2)
  with pytest.raises(ValueError, match='config.mesh.slices=2: only the data axis spans slices'):
    validation.validate(c, num_devices=8, process_count=2)
  c.mesh.update(data=2)
  validation.validate(c, num_devices=8, process_count=2)
