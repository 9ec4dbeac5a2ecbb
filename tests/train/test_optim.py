import jax.numpy as jnp
import numpy as np
import pytest

from sparse_tubes import defaults
from sparse_tubes.train import optim


def opt_cfg(**kw):
  c = defaults.base().optimizer
  c.update(kw)
  return c


def test_warmup_then_cosine():
  sched = optim.make_schedule(opt_cfg(learning_rate=1.0, warmup_steps=10), total_steps=110)
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(0.5)
  assert float(sched(10)) == pytest.approx(1.0)
  assert float(sched(60)) == pytest.approx(0.5, abs=1e-6)   # Half-way through the cosine.
  assert float(sched(110)) == pytest.approx(0.0, abs=1e-6)


def test_step_schedule_drops_tenfold():
  sched = optim.make_schedule(opt_cfg(learning_rate=1.0, warmup_steps=0, schedule='step'), 100)
  assert float(sched(10)) == pytest.approx(1.0)
  assert float(sched(80)) == pytest.approx(0.1)
  assert float(sched(99)) == pytest.approx(0.01)


def test_weight_decay_skips_vectors():
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))}
  zeros = {'kernel': jnp.zeros((2, 2)), 'bias': jnp.zeros((2,))}
  # Zero gradients: the only update left is the decay, which must touch the matrix alone.
  tx, _ = optim.make_optimizer(opt_cfg(learning_rate=1.0, warmup_steps=0, schedule='constant',
                                       weight_decay=0.5, grad_clip_norm=0.0), 10)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.5 * np.ones((2, 2)))
  np.testing.assert_allclose(updates['bias'], 0.0)


def test_clipping_bounds_update():
  tx, _ = optim.make_optimizer(opt_cfg(name='sgd', learning_rate=1.0, warmup_steps=0, momentum=0.0,
                                       schedule='constant', grad_clip_norm=1.0), 10)
  params = {'w': jnp.zeros((4,))}
  updates, _ = tx.update({'w': jnp.full((4,), 100.0)}, tx.init(params), params)
  assert float(jnp.linalg.norm(updates['w'])) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize('key,value', [('name', 'lamb9'), ('schedule', 'exp')])
def test_unknown_names_are_errors(key, value):
  with pytest.raises(ValueError, match=f'config.optimizer.{key}'):
    optim.make_optimizer(opt_cfg(**{key: value}), 10)
