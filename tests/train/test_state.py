"""The train state's shapes and shardings, with nothing allocated: optimizer moments follow their
parameter's sharding, scalars are replicated, the EMA mirrors the parameters."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sparse_tubes import defaults
from sparse_tubes.train import sharding, state as state_lib

CLASSES = {'shapes_video': 8}
RULES = sharding.rules_tuple(defaults.base().sharding_rules)


def tiny_model():
  return ml_collections.ConfigDict(dict(
      name='timesformer', hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
      tubes=(((1, 8, 8), (1, 8, 8), (0, 0, 0)),), image_tube=0, input_shape=(4, 16, 16, 3)))


def mesh():
  return jax.make_mesh((1, 1, 1), sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def test_model_spec_and_abstract_state():
  m = mesh()
  spec = state_lib.model_spec(tiny_model(), CLASSES, m, RULES)
  leaves = jax.tree.leaves(spec.abstract_params)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert jax.tree.structure(spec.param_shardings) == jax.tree.structure(spec.abstract_params)
  head = spec.abstract_params['heads']['shapes_video']['kernel']
  assert head.shape == (16, 8)
  assert state_lib.param_count(spec.abstract_params) == sum(int(np.prod(x.shape)) for x in leaves)

  tx = optax.adam(1e-3)
  state = state_lib.abstract_state(spec, tx, m, ema=True)
  assert sorted(state) == ['ema', 'opt_state', 'params', 'step']
  assert state['step'].shape == () and state['step'].dtype == jnp.int32
  # Adam's mu and nu are parameter-shaped trees with the parameters' shardings; its count is a
  # replicated scalar.
  adam = state['opt_state'][0]
  for moments in (adam.mu, adam.nu):
    assert jax.tree.map(lambda x: x.sharding, moments) == spec.param_shardings
  assert adam.count.sharding == sharding.replicated(m)
  assert jax.tree.map(lambda x: x.shape, state['ema']) == jax.tree.map(
      lambda x: x.shape, spec.abstract_params)
  assert 'ema' not in state_lib.abstract_state(spec, tx, m)
  targets = state_lib.abstract_params(spec)
  assert jax.tree.map(lambda x: x.sharding, targets) == spec.param_shardings


def test_fresh_ema_copies_the_buffers():
  params = {'w': jnp.arange(4.0), 'b': {'x': jnp.ones(2)}}
  ema = state_lib.fresh_ema(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ema)):
    np.testing.assert_array_equal(a, b)
    assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()  # the step donates params
