"""TubeViT image-to-video scaling (§3.6): the gated connection starts as the identity, the small
model's tubes go into the large model (projected), and freezing keeps parameters still."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparse_tubes.models import scaling
from sparse_tubes.pretrained import init as init_lib
from sparse_tubes.train import optim
from tests.pretrained import vit_helpers as H

TUBES = (((4, 8, 8), (4, 8, 8), (0, 0, 0)), ((1, 8, 8), (4, 8, 8), (0, 0, 0)))


def cfg(**kw):
  return H.image_model_cfg(**{'name': 'tubevit', 'tubes': TUBES, 'image_tube': 1,
                              'posemb': 'sincos3d', 'head': 'map',
                              'input_shape': (4, H.SIZE, H.SIZE, 3), **kw})


def video(seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (2, 4, H.SIZE, H.SIZE, 3)).astype(np.float32)


def test_gate_layers_parse():
  assert scaling.gate_layers(2, 4) == (2, 3)
  assert scaling.gate_layers((3, 1), 4) == (1, 3)
  assert scaling.gate_layers((), 4) == ()
  with pytest.raises(ValueError, match='scaling_gate_layers'):
    scaling.gate_layers((5,), 4)


@pytest.mark.parametrize('scan', [False, True])
def test_gates_start_as_identity_and_then_add_z0(scan):
  plain = H.build(cfg(scan_layers=scan))
  gated = H.build(cfg(scan_layers=scan, scaling_gate_layers=1))
  p = H.params_of(plain)
  g = H.params_of(gated)
  np.testing.assert_array_equal(g['encoder']['gates']['alpha'], 0)
  g_new = {**p, 'encoder': {**p['encoder'], 'gates': g['encoder']['gates']}}
  H.load_into(gated, g_new)
  x = video()
  np.testing.assert_allclose(np.asarray(gated.representation(x)),
                             np.asarray(plain.representation(x)), atol=1e-6)
  # alpha moves: layer 1 adds tanh(alpha_1) z0; layer 0 is masked (not gated).
  g_new['encoder']['gates']['alpha'] = np.array([5.0, 0.5], np.float32)
  H.load_into(gated, g_new)
  assert np.abs(np.asarray(gated.representation(x)) - np.asarray(plain.representation(x))).max() > 1e-3
  g_new['encoder']['gates']['alpha'] = np.array([5.0, 0.0], np.float32)
  H.load_into(gated, g_new)
  np.testing.assert_allclose(np.asarray(gated.representation(x)),
                             np.asarray(plain.representation(x)), atol=1e-6)


def test_small_tubes_projected_into_the_large_model():
  small = H.build(cfg(hidden_size=16, num_heads=2, mlp_dim=32))
  large = H.build(cfg())
  sp, lp = H.params_of(small), H.params_of(large)
  new, report = init_lib.take_tubes(sp, lp, cfg(), kind='orthogonal', seed=0)
  assert report == ['tube 0: (4, 8, 8, 3, 16) from the small model, projected 16 -> 32 (orthogonal)']
  proj = init_lib.projection(16, 32, 'orthogonal', 0)
  np.testing.assert_allclose(proj @ proj.T, np.eye(16), atol=1e-6)
  H.load_into(large, new)
  x = video()
  # Tube 0 (4x8x8, stride 4x8x8) gives a (1, 4, 4) grid: its 16 tokens come first.
  small_tok = np.asarray(small.tokenizer(x).tokens)[:, :16]
  large_tok = np.asarray(large.tokenizer(x).tokens)[:, :16]
  np.testing.assert_allclose(large_tok, small_tok @ proj, atol=1e-5)
  np.testing.assert_array_equal(new['tokenizer']['convs'][1]['kernel'], lp['tokenizer']['convs'][1]['kernel'])


def test_freeze_masks_updates_weight_decay_and_clipping():
  params = {'encoder': {'blocks': {0: {'w': jnp.ones((2, 2))}, 1: {'w': jnp.ones((2, 2))}}},
            'tokenizer': {'kernel': jnp.ones((2, 2))}}
  from sparse_tubes import defaults
  opt = defaults.base().optimizer
  opt.update(dict(learning_rate=1.0, warmup_steps=0, schedule='constant', weight_decay=0.5,
                  grad_clip_norm=1.0))
  tx, _ = optim.make_optimizer(opt, 10)
  fz = defaults.base().freeze
  fz.layers_before = 1
  fz.patterns = ('^tokenizer/',)
  tx, names = optim.with_freeze(tx, params, fz)
  assert names == ['encoder/blocks/0/w', 'tokenizer/kernel']
  grads = {'encoder': {'blocks': {0: {'w': jnp.full((2, 2), 100.)}, 1: {'w': jnp.full((2, 2), .1)}}},
           'tokenizer': {'kernel': jnp.full((2, 2), 100.)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates['encoder']['blocks'][0]['w'], 0)
  np.testing.assert_array_equal(updates['tokenizer']['kernel'], 0)
  assert np.abs(np.asarray(updates['encoder']['blocks'][1]['w'])).min() > 0
  # The clip saw the trainable gradient alone (norm 0.2 < 1: unclipped) - Adam's first step is
  # then -lr * sign(g) - lr * wd * w = -1.5.
  np.testing.assert_allclose(updates['encoder']['blocks'][1]['w'], -1.5, rtol=1e-4)
  fz.patterns = ('^nothing_here',)
  fz.layers_before = 0
  with pytest.raises(ValueError, match='matches no parameter'):
    optim.with_freeze(optax.sgd(1.0), params, fz)
