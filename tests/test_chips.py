"""The chip table: topologies parsed and named as Cloud TPU names them, default grids, hosts, and
the peak and memory of the devices JAX reports."""
import pytest

from sparse_tubes import chips


@pytest.mark.parametrize('topology,n,accelerator,hosts', [
    ('v5e:4x4', 16, 'v5litepod-16', 4), ('v5e:2x4', 8, 'v5litepod-8', 1),
    ('v6e:1x1', 1, 'v6e-1', 1), ('v4:2x2x4', 16, 'v4-32', 4), ('v5p:2x2x1', 4, 'v5p-8', 1)])
def test_parse_names_chips_accelerator_type_and_hosts(topology, n, accelerator, hosts):
  t = chips.parse(topology)
  assert (t.name, t.chips, t.accelerator_type, t.hosts) == (topology, n, accelerator, hosts)


@pytest.mark.parametrize('topology,match', [
    ('v3:4x4', 'Unknown TPU topology'), ('v5e', 'Unknown TPU topology'), ('', 'Unknown'),
    ('v5e:4x4x4', 'v5e chips form a 2D grid, e.g. v5e:2x2'),
    ('v4:2x2', 'v4 chips form a 3D grid, e.g. v4:2x2x2'), ('v6e:0x4', '2D grid')])
def test_parse_errors_show_the_form(topology, match):
  with pytest.raises(ValueError, match=match):
    chips.parse(topology)


@pytest.mark.parametrize('n,dims,shape', [
    (16, 2, (4, 4)), (32, 2, (4, 8)), (1, 2, (1, 1)), (16, 3, (2, 2, 4)), (8, 3, (2, 2, 2)),
    (4, 3, (2, 2, 1))])
def test_default_shape(n, dims, shape):
  assert chips.default_shape(n, dims) == shape


def test_default_shape_needs_a_power_of_two():
  with pytest.raises(ValueError, match='power-of-two'):
    chips.default_shape(12, 2)


def test_from_accelerator_type():
  assert chips.from_accelerator_type('v5litepod-16').name == 'v5e:4x4'
  assert chips.from_accelerator_type('v4-32').name == 'v4:2x2x4'
  assert chips.from_accelerator_type('v5p-64').name == 'v5p:2x4x4'
  for bad in ('v4-3', 'v5litepod-x', 'tpu-16'):
    with pytest.raises(ValueError, match='Unknown --accelerator_type'):
      chips.from_accelerator_type(bad)


def test_device_kinds():
  assert chips.peak_flops('TPU v5 lite') == 197e12 and chips.hbm_gib('TPU v5 lite') == 16.0
  assert chips.peak_flops('TPU v5') == 459e12  # v5p's JAX name, after the 'lite' check
  assert chips.peak_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert chips.hbm_gib('NVIDIA H200') == 141.0
  assert chips.peak_flops('cpu') is None and chips.hbm_gib('cpu') is None
