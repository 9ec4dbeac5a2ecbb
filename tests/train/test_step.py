"""Gradient accumulation: a step split into micro-batches makes the same update as the whole batch."""
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
