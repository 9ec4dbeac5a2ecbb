"""Logical axis names for parameters and activations ('batch', 'tokens', 'embed', 'mlp',
'heads', 'kv', 'vocab'). The config's `sharding_rules` map them onto the mesh axes ('data', 'fsdp',
'tensor'); with no mesh or no rules active everything here is a no-op, so the model runs unchanged on
one CPU.
"""
from collections.abc import Sequence

import jax
from flax import nnx

from sparse_tubes import compat

Names = Sequence[str | None]


def active_mesh_and_rules():
  """(mesh, rules) in effect here: the mesh of `jax.set_mesh` (None when none is set) and the
  rules of `nnx.logical_axis_rules`."""
  mesh = jax.sharding.get_abstract_mesh()
  return (None if mesh.empty else mesh), compat.logical_axis_rules()


def names(init, axis_names: Names):
  """`init` with logical axis names attached to the parameter it creates.

  flax 0.12 shards a named variable as soon as it is created ("eager sharding"), which needs a
  mesh and rules that resolve the names. Under `jax.set_mesh(mesh)` + `nnx.logical_axis_rules(rules)`
  (e.g. inside `nnx.get_abstract_model`) we let it; otherwise the names are only recorded, for
  `nnx.get_partition_spec` / `nnx.get_named_sharding` to use later.
  """
  mesh, rules = active_mesh_and_rules()
  eager = nnx.using_eager_sharding() and mesh is not None and bool(rules)
  return nnx.with_partitioning(init, tuple(axis_names), eager_sharding=eager)


def logical_to_mesh(axis_names: Names, rules) -> jax.sharding.PartitionSpec:
  """PartitionSpec for logical names: each name takes the first rule whose mesh axes are still free.

  With the base rules ('batch' -> ('data','fsdp'), 'embed' -> 'fsdp'), an activation
  ('batch','tokens','embed') is sharded over ('data','fsdp') on batch and replicated on embed: a
  mesh axis may shard one dimension only (as MaxText and flax.linen resolve it).
  """
  used, spec = set(), []
  for name in axis_names:
    choice = None
    for logical, mesh_axes in rules:
      if name is None or logical != name:
        continue
      axes = (mesh_axes,) if isinstance(mesh_axes, str) or mesh_axes is None else tuple(mesh_axes)
      if not used.intersection(a for a in axes if a is not None):
        choice = mesh_axes
        used.update(a for a in axes if a is not None)
        break
    spec.append(choice)
  return jax.sharding.PartitionSpec(*spec)


def constrain(x: jax.Array, axis_names: Names) -> jax.Array:
  """`with_sharding_constraint` by logical names; a no-op without an active mesh and rules.

  The mesh must be set with `jax.set_mesh(mesh)` (the legacy `with mesh:` is not visible here).
  Names without a rule stay unsharded.
  """
  mesh, rules = active_mesh_and_rules()
  if mesh is None or not rules:
    return x
  spec = logical_to_mesh(axis_names, rules)
  if mesh.are_all_axes_explicit:
    return jax.sharding.reshard(x, spec)
  return jax.lax.with_sharding_constraint(x, spec)


BTE = ('batch', 'tokens', 'embed')  # the activations that matter: (batch, tokens, hidden)
