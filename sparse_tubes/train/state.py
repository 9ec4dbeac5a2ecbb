"""Train state: a plain dict {'step', 'params', 'opt_state'} of arrays, created in its sharded layout,
and 'ema' (the exponential moving average of the parameters, sharded like them) when
config.ema_decay > 0.

The model is an NNX module only while it is built and applied: `nnx.split` gives a static graphdef
and the parameters as a pure dict, which is what jit, optax and Orbax handle best.
"""
import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sparse_tubes import compat
from sparse_tubes.models import video_vit
from sparse_tubes.train import sharding


@dataclasses.dataclass
class ModelSpec:
  graphdef: nnx.GraphDef
  abstract_params: dict        # ShapeDtypeStructs
  param_shardings: dict        # NamedShardings, same tree


def _init_fn(model_cfg, num_classes, seed):
  def init():
    rngs = compat.host_counted_rngs(params=seed)  # a traced build, linear in the model's size
    model = video_vit.build_model(model_cfg, num_classes, rngs=rngs)
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return init


def model_spec(model_cfg, num_classes: Mapping[str, int], mesh, rules) -> ModelSpec:
  """Shapes and shardings of the model, with nothing allocated."""
  graphdef, abstract_state = video_vit.abstract_model(model_cfg, num_classes)
  with nnx.use_eager_sharding(False):
    shardings = sharding.state_shardings(abstract_state, mesh, rules)
  return ModelSpec(graphdef, nnx.to_pure_dict(abstract_state), shardings)


def state_shardings(spec: ModelSpec, tx: optax.GradientTransformation, mesh, ema: bool = False):
  """Optimizer moments and the EMA follow their parameter's sharding; scalars are replicated."""
  abstract_opt = jax.eval_shape(tx.init, spec.abstract_params)
  # optax states mirror the param tree inside (mu, nu, trace); match those subtrees structurally.
  params_treedef = jax.tree.structure(spec.abstract_params)

  def shard_subtree(x):
    if jax.tree.structure(x) == params_treedef:
      return spec.param_shardings
    return jax.tree.map(lambda _: sharding.replicated(mesh), x)

  opt_sh = jax.tree.map(shard_subtree, abstract_opt,
                        is_leaf=lambda x: jax.tree.structure(x) == params_treedef)
  out = {'step': sharding.replicated(mesh), 'params': spec.param_shardings, 'opt_state': opt_sh}
  return {**out, 'ema': spec.param_shardings} if ema else out


def abstract_params(spec: ModelSpec):
  """ShapeDtypeStructs carrying the parameters' shardings: a restore target."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      spec.abstract_params, spec.param_shardings)


def abstract_state(spec: ModelSpec, tx, mesh, ema: bool = False):
  shardings = state_shardings(spec, tx, mesh, ema)
  shapes = {'step': jax.ShapeDtypeStruct((), jnp.int32), 'params': spec.abstract_params,
            'opt_state': jax.eval_shape(tx.init, spec.abstract_params)}
  if ema:
    shapes['ema'] = spec.abstract_params
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def init_state(model_cfg, num_classes, spec: ModelSpec, tx, mesh, seed: int, ema: bool = False):
  """Parameters are created directly in their sharded layout (jit with out_shardings): no host
  ever holds the full unsharded model. The EMA starts at the parameters (`fresh_ema` again once
  config.init_from has replaced them)."""
  shardings = state_shardings(spec, tx, mesh, ema)
  init_params = _init_fn(model_cfg, num_classes, seed)

  def init():
    params = init_params()
    state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}
    return {**state, 'ema': params} if ema else state

  with nnx.use_eager_sharding(False):
    return jax.jit(init, out_shardings=shardings)()


def fresh_ema(params):
  """An EMA that starts at `params`: copies on the same shardings (not the same buffers, which the
  train step donates)."""
  return jax.tree.map(jnp.copy, params)


def param_count(abstract_params) -> int:
  return sum(x.size for x in jax.tree.leaves(abstract_params))
