"""Device mesh and the logical-to-mesh sharding rules (MaxText's discipline).

Parameters and activations carry logical axis names ('batch', 'embed', 'mlp', 'heads', 'kv',
'tokens', 'vocab'); `config.sharding_rules` maps each name to mesh axes ('data', 'fsdp', 'tensor').
Changing the parallelism of a run is a config edit, never a model edit.
"""
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves `config.mesh` (one entry may be -1) against the number of devices."""
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
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_cfg, len(devices))
  # Auto axes: jit with explicit in/out shardings, GSPMD propagates the rest.
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


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
