"""Gradient accumulation: a step split into micro-batches makes the same update as the whole batch.
The moving average of the parameters (config.ema_decay): the average itself, and exact resume."""
import jax
import numpy as np
import pytest

from sparse_tubes import config as config_lib
from sparse_tubes import validation
from sparse_tubes.train import optim, sharding, state as state_lib, step as step_lib

CLASSES = {'shapes_video': 8, 'shapes_image': 3}


def one_step(config, microbatches: int):
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_tuple(config.sharding_rules)
  spec = state_lib.model_spec(config.model, CLASSES, mesh, rules)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  state = state_lib.init_state(config.model, CLASSES, spec, tx, mesh, config.seed)
  train_step = jax.jit(step_lib.make_train_step(
      spec.graphdef, tx, schedule, config.datasets, CLASSES, label_smoothing=0.1, seed=0,
      mixup_cfg=config.mixup, microbatches=microbatches))
  rng = np.random.default_rng(0)
  batch = {}
  for name, ds in config.datasets.items():
    shape = config_lib.input_shape(ds)
    batch[name] = {'inputs': rng.normal(size=(ds.batch_size, *shape)).astype(np.float32),
                   'label': rng.integers(0, CLASSES[name], ds.batch_size).astype(np.int32)}
  with jax.set_mesh(mesh):
    state, metrics = train_step(state, sharding.global_batch(batch, mesh, sharding.rules_tuple(
        config.sharding_rules)))
  return jax.device_get(state['params']), jax.device_get(metrics)


@pytest.mark.slow  # Two compiles of the step: ~35 s of CPU.
def test_microbatches_match_the_whole_batch(make_config):
  # Mixup on: partners and weights are drawn on the whole batch, before the split.
  config = make_config(mixup__mixup_alpha=0.3, model__num_layers=1)
  params1, metrics1 = one_step(config, 1)
  params4, metrics4 = one_step(config, 4)
  for key in ('train/loss', 'train/loss/shapes_video', 'train/accuracy/shapes_image',
              'train/grad_norm'):
    np.testing.assert_allclose(metrics4[key], metrics1[key], rtol=1e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params4, params1)
  assert not np.allclose(metrics1['train/loss'], 0)


def test_microbatches_must_divide_the_batch(make_config):
  with pytest.raises(ValueError, match=r'config.microbatches=3: .*batch_size=8'):
    validation.validate(make_config(microbatches=3))


def _batches(config, steps: int):
  rng = np.random.default_rng(1)
  out = []
  for _ in range(steps):
    batch = {}
    for name, ds in config.datasets.items():
      shape = config_lib.input_shape(ds)
      batch[name] = {'inputs': rng.normal(size=(ds.batch_size, *shape)).astype(np.float32),
                     'label': rng.integers(0, CLASSES[name], ds.batch_size).astype(np.int32)}
    out.append(batch)
  return out


def test_ema_is_the_moving_average_of_the_parameters(make_config):
  """After n steps the state's 'ema' is d^n p_0 + sum_k (1 - d) d^(n-k) p_k of the parameters p_k
  the steps gave (computed here in NumPy), sharded like the parameters."""
  decay = 0.7
  config = make_config(ema_decay=decay, model__num_layers=1)
  mesh, rules = sharding.mesh_and_rules(config)
  program = step_lib.build(config, CLASSES, mesh, rules, config.total_steps)
  state = program.init_state(config, CLASSES, mesh)
  assert all(jax.tree.leaves(jax.tree.map(lambda e, s: e.sharding == s, state['ema'],
                                          program.spec.param_shardings)))
  trajectory = [jax.device_get(state['params'])]
  with jax.set_mesh(mesh):
    for batch in _batches(config, 3):
      state, _ = program.step(state, sharding.global_batch(batch, mesh, rules))
      trajectory.append(jax.device_get(state['params']))  # copies: the step donates the state
  expected = trajectory[0]
  for p in trajectory[1:]:
    expected = jax.tree.map(lambda e, x: decay * e + (1 - decay) * x, expected, p)
  ema = jax.device_get(state['ema'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ema, expected)
  # Not the parameters themselves: they moved, the average lags behind.
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), ema, trajectory[-1])
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_ema_decay_is_validated(make_config):
  with pytest.raises(ValueError, match=r'config.ema_decay=1.0 must be in \[0, 1\)'):
    validation.validate(make_config(ema_decay=1.0))


@pytest.mark.slow  # Three short trainings: ~40 s of CPU.
def test_ema_resumes_exactly(make_config, tmp_path):
  """4 steps in one run, or 2 then 2 more after a restart: the same moving average, bit for bit;
  and evaluation restores it (--params=ema|raw|auto)."""
  from sparse_tubes import checkpoints as ckpt_lib
  from sparse_tubes.commands import train as train_cmd
  config = make_config(ema_decay=0.5, total_steps=4, checkpoint_every_steps=2,
                       optimizer__warmup_steps=1, async_checkpoints=False)
  once, twice = str(tmp_path / 'once'), str(tmp_path / 'twice')
  train_cmd.train(config, once)
  train_cmd.train(config, twice, stop_after_steps=2)
  assert ckpt_lib.Checkpointer(twice, read_only=True).latest_step() == 2
  train_cmd.train(config, twice)
  a = ckpt_lib.restore_params(config, once, 4, params='ema')
  b = ckpt_lib.restore_params(config, twice, 4, params='ema')
  assert a.kind == b.kind == 'ema'
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params), jax.device_get(b.params))
  raw = ckpt_lib.restore_params(config, once, 4, params='raw')
  assert raw.kind == 'raw' and ckpt_lib.restore_params(config, once, 4).kind == 'ema'
  diff = jax.tree.map(lambda x, y: np.abs(x - y).max(), jax.device_get(a.params),
                      jax.device_get(raw.params))
  assert max(jax.tree.leaves(diff)) > 0


def test_a_checkpoint_without_ema_resumes_with_one(make_config, tmp_path):
  """Turning config.ema_decay on for a run whose checkpoints have no params_ema: the average
  starts at the restored parameters (own buffers: the step donates both)."""
  from sparse_tubes import checkpoints as ckpt_lib
  config = make_config(ema_decay=0.9, model__num_layers=1)
  mesh, rules = sharding.mesh_and_rules(config)
  program = step_lib.build(config, CLASSES, mesh, rules, config.total_steps)
  state = program.init_state(config, CLASSES, mesh)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), use_async=False)
  ckpt.save(1, {k: v for k, v in state.items() if k != 'ema'})
  ckpt.close()
  assert not ckpt_lib.has_ema(str(tmp_path), 1)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  restored = ckpt.restore(1, program.abstract_state(mesh))
  ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored['ema']),
               jax.device_get(restored['params']))
  assert all(e is not p for e, p in zip(jax.tree.leaves(restored['ema']),
                                        jax.tree.leaves(restored['params'])))
