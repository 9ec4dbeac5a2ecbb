"""The model zoo as configurations of VideoViT: shapes, parameter paths, heads, scan/remat, variants,
and clear errors for combinations that do not exist."""
import functools
import glob
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from sparse_tubes import config as config_lib
from sparse_tubes import validation
from sparse_tubes.models import encoder, tokenizers
from sparse_tubes.models.video_vit import build_model

NUM_CLASSES = {'shapes_video': 8}
VIDEO = np.random.RandomState(0).uniform(-1, 1, (2, 4, 16, 16, 3)).astype(np.float32)
# Gradients are taken of <representation, PROBE>. Not of sum(representation ** 2): the
# representation leaves a LayerNorm, so that sum is constant (batch x hidden) and its gradients are
# rounding noise, which differs between two correct programs.
PROBE = np.random.RandomState(1).normal(size=(2, 16)).astype(np.float32)
CONFIGS = os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'synthetic')


def cfg(**kw):
  """A tiny TimeSformer-style model: 4x16x16 clips, 8x8 patches -> a 4x2x2 grid."""
  c = ml_collections.ConfigDict(dict(
      name='timesformer', hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32,
      tubes=(((1, 8, 8), (1, 8, 8), (0, 0, 0)),), image_tube=0, input_shape=(4, 16, 16, 3)))
  c.update(kw)
  return c


def abstract(**kw):
  return nnx.eval_shape(lambda: build_model(cfg(**kw), NUM_CLASSES, rngs=nnx.Rngs(0)))


def paths(model):
  return {'/'.join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def logits_shape(model, x=VIDEO):
  return nnx.eval_shape(lambda m, x: m(x, dataset='shapes_video'), model, x).shape


@pytest.mark.parametrize('kw', [
    dict(attention='space'), dict(attention='joint'), dict(attention='divided'),
    dict(attention='axial'), dict(attention='local_global'),
    dict(name='vivit', attention='factorised_self_attention', head='gap'),
    dict(name='vivit', attention='factorised_dot_product', head='map'),
    dict(name='vivit', encoder='factorised', temporal_layers=1),
    dict(name='vivit', encoder='factorised', spatial_pool='gap', head='gap'),
    dict(name='tubevit', tube_variant='interpolated'),
    dict(name='tubevit', tube_variant='space_to_depth', head='token'),
], ids=str)
def test_every_family_builds_and_runs_on_videos_and_images(kw):
  model = abstract(**kw)
  assert logits_shape(model) == (2, 8)
  if kw.get('encoder') is None:
    assert logits_shape(model, VIDEO[:, 0]) == (2, 8)   # the 2D-patch tube takes images


def test_parameter_paths_are_readable_per_pattern():
  p = paths(abstract(attention='divided'))
  b = 'encoder/blocks/0/'
  for name, shape in [('cls_token', (1, 1, 16)), ('posemb/space', (2, 2, 16)),
                      ('posemb/time', (4, 16)), ('posemb/cls', (16,)),
                      (b + 'temporal_norm/scale', (16,)), (b + 'temporal_attention/query', (16, 2, 8)),
                      (b + 'temporal_fc/kernel', (16, 16)), (b + 'norm1/scale', (16,)),
                      (b + 'attention/out', (2, 8, 16)), (b + 'mlp/fc1/kernel', (16, 32)),
                      ('encoder/norm/scale', (16,)), ('heads/shapes_video/kernel', (16, 8))]:
    assert p[name] == shape, name
  p = paths(abstract(attention='axial'))
  assert {'encoder/blocks/0/width_fc/kernel', 'encoder/blocks/0/temporal_fc/kernel'} <= set(p)
  p = paths(abstract(attention='space'))
  assert 'posemb/time' not in p and not any('temporal' in k for k in p)   # as the official code
  p = paths(abstract(name='vivit', attention='factorised_self_attention', head='gap'))
  assert 'encoder/blocks/1/temporal_attention/key' in p and not any('_fc' in k for k in p)
  assert 'cls_token' not in p
  p = paths(abstract(name='vivit', encoder='factorised', temporal_layers=3))
  assert {'spatial_cls_token', 'cls_token', 'spatial_encoder/blocks/1/attention/query',
          'temporal_encoder/blocks/2/attention/query', 'posemb/tables/0', 'posemb/cls'} <= set(p)
  p = paths(abstract(scan_layers=True, num_layers=3))
  assert p['encoder/blocks/attention/query'] == (3, 16, 2, 8)      # leading layer axis


def test_param_counts_follow_the_patterns():
  def count(**kw):
    return sum(int(np.prod(s)) for s in paths(abstract(**kw)).values())
  d, layers = 16, 2
  attn, fc, ln = 4 * d * d + 4 * d, d * d + d, 2 * d
  joint = count(attention='joint')
  assert count(attention='divided') - joint == layers * (attn + fc + ln)
  assert count(attention='axial') - joint == 2 * layers * (attn + fc + ln)
  assert count(attention='local_global') == count(attention='divided')
  assert count(attention='space') == joint - 4 * d                 # no time embedding


def test_space_to_depth_computes_the_unfolded_convolution():
  tube = ((2, 4, 4), (2, 4, 4), (0, 0, 0))
  plain = tokenizers.SparseTubes((tube,), 8, image_tube=None, rngs=nnx.Rngs(0))
  s2d = tokenizers.SparseTubes((tube,), 8, image_tube=None, variant='space_to_depth',
                               fold=(1, 2, 2), rngs=nnx.Rngs(0))
  assert s2d.convs[0].kernel.shape == (2, 2, 2, 12, 8)
  # Unfolded kernel K[t, 2i+dh, 2j+dw, c] = K'[t, i, j, (dh, dw, c)].
  k = s2d.convs[0].kernel[...].reshape(2, 2, 2, 2, 2, 3, 8)
  plain.convs[0].kernel[...] = k.transpose(0, 1, 3, 2, 4, 5, 6).reshape(2, 4, 4, 3, 8)
  tokens = nnx.jit(lambda tok, x: tok(x).tokens)
  np.testing.assert_allclose(tokens(s2d, VIDEO), tokens(plain, VIDEO), rtol=1e-5, atol=1e-5)


def test_interpolated_kernel_is_one_kernel_resized_per_tube():
  tubes = (((4, 4, 4), (4, 8, 8), (0, 0, 0)), ((1, 8, 8), (4, 8, 8), (0, 0, 0)))
  tok = tokenizers.SparseTubes(tubes, 8, image_tube=1, variant='interpolated',
                               interpolated_kernel=(4, 4, 4), rngs=nnx.Rngs(0))
  assert tok.kernel.shape == (4, 4, 4, 3, 8) and not hasattr(tok, 'convs')
  np.testing.assert_allclose(tok.tube_kernel(0), tok.kernel[...], rtol=1e-6)   # same shape: as is
  assert tok.tube_kernel(1).shape == (1, 8, 8, 3, 8)
  # A constant kernel stays constant, scaled by prod(base) / prod(kernel): a constant input gives
  # the same response through every tube.
  tok.kernel[...] = jnp.ones_like(tok.kernel[...])
  np.testing.assert_allclose(tok.tube_kernel(1), np.full((1, 8, 8, 3, 8), 64 / 64), rtol=1e-6)
  tube = ((2, 4, 4), (4, 8, 8), (0, 0, 0))
  tok2 = tokenizers.SparseTubes((tube,), 8, image_tube=None, variant='interpolated',
                                interpolated_kernel=(4, 4, 4), rngs=nnx.Rngs(0))
  tok2.kernel[...] = jnp.ones_like(tok2.kernel[...])
  np.testing.assert_allclose(tok2.tube_kernel(0), np.full((2, 4, 4, 3, 8), 2.0), rtol=1e-6)
  assert nnx.eval_shape(lambda t: t(VIDEO).tokens, tok).shape == (2, 1 * 2 * 2 + 1 * 2 * 2, 8)


@functools.cache
def _pair(**kw):
  a = build_model(cfg(**kw), NUM_CLASSES, rngs=nnx.Rngs(0))
  b = build_model(cfg(scan_layers=True, **kw), NUM_CLASSES, rngs=nnx.Rngs(0))
  return a, b


@pytest.mark.parametrize('attention', ['divided', 'joint'])
def test_scan_equals_no_scan_with_the_same_params(attention):
  plain, scanned = _pair(attention=attention, dropout=0.1, stochastic_depth=0.2)
  blocks = nnx.state(plain.encoder.blocks)
  stacked = nnx.state(scanned.encoder.blocks)
  for a, b in zip(jax.tree.leaves(jax.tree.map(lambda *x: jnp.stack(x), *blocks.values())),
                  jax.tree.leaves(stacked)):
    np.testing.assert_array_equal(a, b)   # the scanned params are the unscanned ones, stacked
  def loss(m, key):
    return jnp.sum(m.representation(VIDEO, train=True, rngs=nnx.Rngs(dropout=key)) * PROBE)
  step = nnx.jit(nnx.value_and_grad(loss))
  (l1, g1), (l2, g2) = step(plain, jax.random.key(0)), step(scanned, jax.random.key(0))
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  np.testing.assert_allclose(g1['encoder']['blocks'][1]['attention']['query'][...],
                             g2['encoder']['blocks']['attention']['query'][...][1],
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('policy', ['full', 'dots_saveable'])
def test_remat_policies_same_values_and_grads(policy):
  plain = build_model(cfg(attention='divided'), NUM_CLASSES, rngs=nnx.Rngs(0))
  remat = build_model(cfg(attention='divided', remat=policy), NUM_CLASSES, rngs=nnx.Rngs(0))
  def loss(m):
    return jnp.sum(m.representation(VIDEO) * PROBE)
  (l1, g1), (l2, g2) = (nnx.jit(nnx.value_and_grad(loss))(m) for m in (plain, remat))
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_scan_keeps_the_program_size_constant_in_depth():
  def hlo_size(num_layers, scan):
    graphdef, params = nnx.split(nnx.eval_shape(
        lambda: build_model(cfg(attention='divided', num_layers=num_layers, scan_layers=scan),
                            NUM_CLASSES, rngs=nnx.Rngs(0))))
    def loss(params, x):
      return jnp.sum(nnx.merge(graphdef, params)(x, dataset='shapes_video'))
    return len(jax.jit(jax.grad(loss)).lower(params, VIDEO).as_text())
  scanned = hlo_size(2, True), hlo_size(8, True)
  unrolled = hlo_size(2, False), hlo_size(8, False)
  assert scanned[1] < 1.1 * scanned[0]
  assert unrolled[1] > 2.5 * unrolled[0]


def test_class_token_and_pools():
  for head in ('token', 'gap', 'map'):
    assert logits_shape(abstract(attention='divided', head=head)) == (2, 8)
  # TimeSformer: the class token takes its own space entry, no time embedding.
  model = build_model(cfg(attention='joint'), NUM_CLASSES, rngs=nnx.Rngs(0))
  rep = nnx.jit(lambda m: m.representation(VIDEO))(model)
  def bump(m):
    # Not a constant: LayerNorm would cancel a shift shared by every channel.
    m.posemb.time[...] = m.posemb.time[...] + np.linspace(0, 1, m.posemb.time.shape[-1])
    return m
  rep2 = nnx.jit(lambda m: bump(m).representation(VIDEO))(model)
  assert not np.allclose(rep, rep2)   # (sanity: time embeddings reach the patches)


def test_config_errors_name_the_keys():
  sparse = (((4, 8, 8), (4, 8, 8), (0, 0, 0)), ((1, 8, 8), (4, 8, 8), (0, 0, 0)))
  with pytest.raises(ValueError, match=r"config\.model\.attention = 'divided'.*config\.model\.tubes"):
    abstract(attention='divided', tubes=sparse, image_tube=1)
  with pytest.raises(ValueError, match=r"config\.model\.encoder = 'factorised'.*config\.model\.tubes"):
    abstract(name='vivit', encoder='factorised', tubes=sparse, image_tube=1, posemb='sincos3d')
  with pytest.raises(ValueError, match=r"config\.model\.head = 'gap' or 'map'"):
    abstract(name='vivit', attention='factorised_self_attention', head='token')
  with pytest.raises(ValueError, match=r"config\.model\.encoder = 'factorised'.*attention = 'joint'"):
    abstract(name='vivit', encoder='factorised', attention='divided')
  with pytest.raises(ValueError, match=r'config\.model\.remat'):
    abstract(remat='sometimes')
  with pytest.raises(ValueError, match=r'config\.model\.tube_variant'):
    abstract(tube_variant='fft')
  with pytest.raises(ValueError, match=r"space_to_depth.*config\.model\.tubes\[0\]"):
    abstract(tube_variant='space_to_depth', tubes=(((1, 3, 3), (1, 3, 3), (0, 0, 0)),))
  no_image = abstract(name='vivit', tubes=(((2, 8, 8), (2, 8, 8), (0, 0, 0)),), image_tube=None)
  with pytest.raises(ValueError, match=r'no image path \(config\.model\.image_tube = None\)'):
    logits_shape(no_image, VIDEO[:, 0])


def test_zoo_config_files_validate_and_build():
  specs = ['tubevit_tiny.py', 'timesformer_tiny.py'] + [
      f'timesformer_tiny.py:attention={a}' for a in ('joint', 'space', 'local_global', 'axial')] + [
      f'vivit_tiny.py:model={m}' for m in ('m1', 'm2', 'm3', 'm4')]
  assert sorted(glob.glob(os.path.join(CONFIGS, '*_tiny.py'))) == sorted(
      os.path.join(CONFIGS, f) for f in ('tubevit_tiny.py', 'timesformer_tiny.py', 'vivit_tiny.py'))
  for spec in specs:
    f = os.path.join(CONFIGS, spec)
    c = config_lib.load(f)
    validation.validate(c, num_devices=1, process_count=1)
    model = nnx.eval_shape(lambda: build_model(c.model, {'shapes_video': 8, 'shapes_image': 3},
                                               rngs=nnx.Rngs(0)))
    x = np.zeros((1, 8, 32, 32, 3), np.float32)
    assert nnx.eval_shape(lambda m: m(x, dataset='shapes_video'), model).shape == (1, 8), f


def test_layer_norm_eps_and_exact_gelu_options():
  model = abstract(layer_norm_eps=1e-12, gelu_approximate=True)
  block = model.encoder.blocks[0]
  assert block.norm1.epsilon == 1e-12 and block.mlp.gelu_approximate
  assert not abstract().encoder.blocks[0].mlp.gelu_approximate
  assert encoder.remat_policy(True) == 'full' and encoder.remat_policy(False) == 'none'
