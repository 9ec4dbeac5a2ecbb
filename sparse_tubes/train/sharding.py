"""Device mesh and the logical-to-mesh sharding rules (MaxText's discipline).

Parameters and activations carry logical axis names ('batch', 'embed', 'mlp', 'heads', 'kv',
'tokens', 'vocab'); `config.sharding_rules` maps each name to mesh axes ('data', 'fsdp', 'tensor').
Changing the parallelism of a run is a config edit, never a model edit.

Multislice: `config.mesh.slices` TPU slices joined over the data-centre network (DCN) split the
'data' axis only. The mesh is JAX's hybrid mesh (`mesh_utils.create_hybrid_device_mesh`): each slice
holds data/slices x fsdp x tensor devices on its own fast interconnect (ICI), whole FSDP and tensor
groups, and the outer factor of 'data' runs across slices. So the sharding rules stay as they are
(the batch over ('data', 'fsdp') is also over the slices) and the only cross-slice traffic of a
step is the data-parallel gradient reduction.
"""
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')


def num_slices(mesh_cfg) -> int:
  return int(mesh_cfg.slices)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves `config.mesh` (one entry may be -1) against the number of devices (of all slices)."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}.')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'config.mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f'config.mesh={dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not '
                       f'divisible by the fixed axes (product {known}). Change config.mesh.')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f'config.mesh={dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but '
                     f'{num_devices} are present. Set one axis to -1 to take the rest.')
  slices = num_slices(mesh_cfg)
  if slices < 1 or num_devices % slices:
    raise ValueError(f'config.mesh.slices={slices} must be >= 1 and divide the {num_devices} devices '
                     '(every slice has as many chips).')
  if sizes[0] % slices:
    per_slice = num_devices // slices
    fit = slices * max(1, per_slice // (sizes[1] * sizes[2]))
    raise ValueError(
        f'config.mesh.slices={slices}: only the data axis spans slices, so config.mesh.data '
        f'(here {sizes[0]}, mesh {dict(zip(MESH_AXES, sizes))}) must be a multiple of {slices}, and '
        f'each slice holds data/{slices} x fsdp x tensor = {per_slice} devices. E.g. '
        f'config.mesh.data={fit} with config.mesh.fsdp=-1 (FSDP within each slice).')
  return tuple(sizes)


def slice_shapes(mesh_cfg, num_devices: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(per-slice ICI shape, DCN shape) of the mesh: the slices split the data axis."""
  data, fsdp, tensor = mesh_shape(mesh_cfg, num_devices)
  slices = num_slices(mesh_cfg)
  return (data // slices, fsdp, tensor), (slices, 1, 1)


def slice_of(device) -> int:
  """The slice a device is in: its `slice_index` on TPU. Elsewhere (CPU, GPU; their devices carry
  slice_index 0 or none) each process stands for a slice, as create_hybrid_device_mesh takes it with
  process_is_granule=True: how launch/local.py emulates slices."""
  if device.platform == 'tpu':   # compile-only (ahead-of-time) TPU devices may carry no slice_index
    return getattr(device, 'slice_index', 0)
  return device.process_index


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_cfg, len(devices))
  slices = num_slices(mesh_cfg)
  on_tpu = devices[0].platform == 'tpu'
  found = len({slice_of(d) for d in devices})
  if slices == 1 and on_tpu and found > 1:
    raise ValueError(f'The {len(devices)} devices are on {found} TPU slices (slice_index) but '
                     f'config.mesh.slices=1: set config.mesh.slices={found} so that only the data '
                     'axis crosses the data-centre network.')
  # Auto axes: jit with explicit in/out shardings, GSPMD propagates the rest.
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if slices == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  if found != slices:
    unit = 'TPU slices (slice_index)' if on_tpu else 'processes (on CPU and GPU one slice each)'
    raise ValueError(f'config.mesh.slices={slices} but the {len(devices)} devices are on {found} '
                     f'{unit}. Set config.mesh.slices={found}.')
  ici, dcn = slice_shapes(mesh_cfg, len(devices))
  grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not on_tpu,
                                              allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


def rules_tuple(rules) -> tuple:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def batch_axes(rules) -> tuple[str, ...]:
  axes = dict(rules_tuple(rules)).get('batch')
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Leading axis split over the mesh axes that 'batch' maps to; the rest replicated."""
  return NamedSharding(mesh, P(batch_axes(rules) or None, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(abstract_state: nnx.State, mesh: Mesh, rules):
  """NamedShardings for an (abstract) nnx.State, from the logical names on each Variable."""
  with nnx.logical_axis_rules(rules_tuple(rules)):
    return nnx.to_pure_dict(nnx.get_named_sharding(abstract_state, mesh))


def global_batch(local: dict, mesh: Mesh, rules) -> dict:
  """Host-local numpy arrays -> global jax.Arrays sharded along the batch axes."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, np.ndim(x)), x),
      local)


def mesh_and_rules(config) -> tuple[Mesh, tuple]:
  """The device mesh of `config.mesh` and the logical-axis rules of `config.sharding_rules`."""
  return make_mesh(config.mesh), rules_tuple(config.sharding_rules)
