import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from sparse_tubes.models import partitioning
from sparse_tubes.models.tokenizers import count_tokens
from sparse_tubes.models.video_vit import build_model

NUM_CLASSES = {'shapes_video': 4, 'shapes_image': 3}
TINY_CONFIG = pathlib.Path(__file__).parents[2] / 'configs' / 'synthetic' / 'tubevit_tiny.py'


def model_cfg(**kw):
  """The tiny config's tubes on a smaller encoder (fast tests)."""
  c = ml_collections.ConfigDict(dict(
      name='tubevit', hidden_size=24, num_layers=2, num_heads=2, mlp_dim=48, dropout=0.0,
      stochastic_depth=0.0, dtype='float32', remat=False, posemb='sincos3d', head='map',
      image_tube=3, attention_impl='auto', input_shape=(8, 32, 32, 3),
      tubes=(((8, 4, 4), (4, 16, 16), (0, 4, 4)),
             ((4, 8, 8), (4, 16, 16), (0, 0, 0)),
             ((2, 12, 12), (4, 16, 16), (0, 8, 8)),
             ((1, 8, 8), (8, 8, 8), (0, 0, 0)))))
  c.update(kw)
  return c


def make(seed=0, **kw):
  return build_model(model_cfg(**kw), NUM_CLASSES, rngs=nnx.Rngs(seed))


@functools.cache
def _shared(items):
  return make(**dict(items))


def shared(**kw):
  """One model per config for the whole module (initialising costs compiles); never mutate it."""
  return _shared(tuple(sorted(kw.items())))


# Jitted entry points: one compile per (config, input shape) instead of one per op (CPU tests).
@functools.partial(nnx.jit, static_argnames=('dataset', 'train'))
def forward(model, x, key=None, *, dataset, train=False):
  rngs = None if key is None else nnx.Rngs(dropout=key)
  return model(x, dataset=dataset, train=train, rngs=rngs)


@functools.partial(nnx.jit, static_argnames=('train',))
def representation(model, x, key=None, *, train=False):
  rngs = None if key is None else nnx.Rngs(dropout=key)
  return model.representation(x, train=train, rngs=rngs)


def value(v):
  return v.get_value() if isinstance(v, nnx.Variable) else v


VIDEO = np.random.RandomState(0).uniform(-1, 1, (2, 8, 32, 32, 3)).astype(np.float32)
IMAGE = np.random.RandomState(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)


def test_the_tiny_config_file_builds():
  spec = importlib.util.spec_from_file_location('tubevit_tiny', TINY_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config().model
  # Shapes only (no compile): the real config's model builds and runs on videos and images, and
  # count_tokens agrees with the tokens the tokenizer makes.
  model = nnx.eval_shape(lambda: build_model(cfg, NUM_CLASSES, rngs=nnx.Rngs(0)))
  for x in (VIDEO, IMAGE):
    tokens = nnx.eval_shape(lambda m, x: m.tokenizer(x).tokens, model, x)
    assert tokens.shape[1] == count_tokens(cfg, x.shape[1:])['total']
  logits = nnx.eval_shape(lambda m, x: m(x, dataset='shapes_video'), model, VIDEO)
  assert logits.shape == (2, 4) and logits.dtype == jnp.float32
  logits = nnx.eval_shape(lambda m, x: m(x, dataset='shapes_image'), model, IMAGE)
  assert logits.shape == (2, 3)


@pytest.mark.parametrize('head,posemb', [('map', 'sincos3d'), ('gap', 'learned')])
def test_shapes_video_and_image(head, posemb):
  model = shared(head=head, posemb=posemb)
  assert forward(model, VIDEO, dataset='shapes_video').shape == (2, 4)
  assert forward(model, IMAGE, dataset='shapes_image').shape == (2, 3)
  assert representation(model, VIDEO).shape == (2, 24)


def test_image_batch_uses_only_the_image_tube():
  model = shared()
  def loss(model):  # on the representation: the zero-initialised head would pass no gradient.
    # A random projection, not sum(r ** 2): that is constant after the final LayerNorm.
    r = model.representation(IMAGE)
    return jnp.sum(r * jax.random.normal(jax.random.key(1), r.shape))
  grads = nnx.jit(nnx.grad(loss))(model)
  norms = [float(jnp.abs(grads['tokenizer']['convs'][i]['kernel'][...]).sum()) for i in range(4)]
  assert norms[:3] == [0.0, 0.0, 0.0] and norms[3] > 0


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = shared(dtype='bfloat16')
  params = nnx.state(model, nnx.Param)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('float32')}
  logits = forward(model, VIDEO, dataset='shapes_video')
  assert logits.dtype == jnp.float32
  rep = representation(model, VIDEO)
  assert rep.dtype == jnp.bfloat16
  np.testing.assert_allclose(rep.astype(jnp.float32), representation(shared(), VIDEO), atol=0.15)


def test_deterministic_init():
  a, b, c = nnx.state(make(0)), nnx.state(make(0)), nnx.state(make(1))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_state_is_params_only_and_dropout_only_in_train():
  model = shared(dropout=0.2, stochastic_depth=0.1)
  assert not jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param)))
  eval_rep = representation(model, VIDEO)
  train_rep = representation(model, VIDEO, jax.random.key(0), train=True)
  assert not np.allclose(train_rep, eval_rep)
  np.testing.assert_array_equal(train_rep,
                                representation(model, VIDEO, jax.random.key(0), train=True))
  with pytest.raises(ValueError, match='rngs'):
    representation(model, VIDEO, train=True)


def test_functional_train_step_under_jit():
  graphdef, params = nnx.split(shared(dropout=0.2, stochastic_depth=0.1))
  @jax.jit
  def step(params, x, key):
    def loss(params):
      logits = nnx.merge(graphdef, params)(x, dataset='shapes_video', train=True,
                                           rngs=nnx.Rngs(dropout=key))
      return jnp.mean(logits ** 2) + jnp.mean(jax.nn.log_softmax(logits)[:, 0])
    return jax.value_and_grad(loss)(params)
  value, grads = step(params, VIDEO, jax.random.key(0))
  assert np.isfinite(value)
  assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_per_dataset_heads_and_unknown_dataset():
  model = shared()
  assert model.heads['shapes_video'].kernel.shape == (24, 4)
  assert model.heads['shapes_image'].kernel.shape == (24, 3)
  with pytest.raises(ValueError, match=r"'kinetics'.*\['shapes_image', 'shapes_video'\]"):
    forward(model, VIDEO, dataset='kinetics')


def test_config_errors():
  with pytest.raises(ValueError, match=r'config\.model\.name'):
    build_model(model_cfg(name='vivit3000'), NUM_CLASSES, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'config\.model\.posemb'):
    nnx.eval_shape(lambda: make(posemb='rope'))
  with pytest.raises(ValueError, match=r'config\.model\.tubes\[0\].*time'):
    nnx.eval_shape(lambda m, x: m(x, dataset='shapes_video'), shared(), VIDEO[:, :4])


def test_partition_spec_names():
  specs = nnx.get_partition_spec(nnx.state(nnx.eval_shape(make)))
  P = jax.sharding.PartitionSpec
  block = specs['encoder']['blocks'][0]
  expected = [
      (specs['tokenizer']['convs'][0]['kernel'], P(None, None, None, None, 'embed')),
      (specs['tokenizer']['convs'][0]['bias'], P('embed')),
      (block['attention']['query'], P('embed', 'heads', 'kv')),
      (block['attention']['query_bias'], P('heads', 'kv')),
      (block['attention']['out'], P('heads', 'kv', 'embed')),
      (block['mlp']['fc1']['kernel'], P('embed', 'mlp')),
      (block['mlp']['fc2']['kernel'], P('mlp', 'embed')),
      (block['norm1']['scale'], P('embed')),
      (specs['pool']['probe'], P(None, None, 'embed')),
      (specs['heads']['shapes_video']['kernel'], P('embed', 'vocab')),
      (specs['heads']['shapes_video']['bias'], P('vocab')),
  ]
  for spec, want in expected:
    assert value(spec) == want
  assert all(value(s) != P() for s in jax.tree.leaves(specs, is_leaf=lambda v: isinstance(
      v, nnx.Variable)))  # every parameter is named


def test_runs_under_mesh_and_logical_rules():
  rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'),
           ('kv', None), ('tokens', None), ('vocab', None))
  mesh = jax.make_mesh((1, 1, 1), ('data', 'fsdp', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  # A mesh axis shards one dimension only: 'embed' yields 'fsdp' to 'batch' on activations.
  assert partitioning.logical_to_mesh(partitioning.BTE, rules) == jax.sharding.PartitionSpec(
      ('data', 'fsdp'), None, None)
  model = shared()
  with nnx.logical_axis_rules(rules):
    _, abstract = nnx.get_abstract_model(lambda: make(), mesh)
    kernel = value(abstract['encoder']['blocks'][0]['mlp']['fc1']['kernel'])
    assert kernel.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
    with jax.set_mesh(mesh):
      logits = forward(model, VIDEO, dataset='shapes_video')
  np.testing.assert_allclose(logits, forward(model, VIDEO, dataset='shapes_video'), atol=1e-5)
