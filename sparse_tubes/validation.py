"""Static checks of a whole config against the code that will run it (data pipeline, tokenizers,
mesh and sharding rules), before anything is compiled: one error naming the key and the fix.
config.py checks the config's own tree; this module needs the libraries, so it sits above them."""
import math

import jax
import ml_collections

from sparse_tubes import config as config_lib
from sparse_tubes import defaults
from sparse_tubes.data import pipeline
from sparse_tubes.models import tokenizers
from sparse_tubes.train import sharding


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
             process_count: int | None = None) -> None:
  """Static checks: keys, datasets, batch divisibility, mesh, tubes against clip sizes."""

  num_devices = num_devices or jax.device_count()
  process_count = process_count or jax.process_count()
  config_lib.check_tree(config, defaults.base())
  model = config_lib.model_config(config.model)
  if not config.datasets:
    raise ValueError('config.datasets is empty: add at least one dataset, e.g. '
                     "c.datasets.shapes_video = defaults.dataset(tfds_name='moving_shapes/video').")
  for name, ds in config.datasets.items():
    pipeline.validate(ds, name=name, process_count=process_count)
    if ds.loss_weight < 0:
      raise ValueError(f'config.datasets.{name}.loss_weight={ds.loss_weight} must be >= 0.')

  for name in config.eval_datasets:
    if name not in config.datasets:
      raise ValueError(f'config.eval_datasets names {name!r}, which is not in config.datasets '
                       f'({", ".join(config.datasets)}).')

  for axis_names in dict(sharding.rules_tuple(config.sharding_rules)).values():
    for a in ((axis_names,) if isinstance(axis_names, str) else axis_names or ()):
      if a not in sharding.MESH_AXES:
        raise ValueError(f'config.sharding_rules maps to mesh axis {a!r}; mesh axes are '
                         f'{sharding.MESH_AXES}.')
  shape = sharding.mesh_shape(config.mesh, num_devices)
  dp = math.prod(s for a, s in zip(sharding.MESH_AXES, shape) if a in sharding.batch_axes(config.sharding_rules))
  for name, ds in config.datasets.items():
    for key in ('batch_size', 'eval_batch_size'):
      b = ds[key]
      if b <= 0 or b % dp or b % process_count:
        raise ValueError(
            f'config.datasets.{name}.{key}={b} must be a positive multiple of the data-parallel size '
            f'{dp} (mesh {dict(zip(sharding.MESH_AXES, shape))}) and of the process count '
            f'{process_count}. Use e.g. {key}={max(dp, process_count) * max(1, b // max(dp, process_count))}.')

  m = config.microbatches
  for name, ds in config.datasets.items():
    if m < 1 or ds.batch_size % (m * dp):
      raise ValueError(
          f'config.microbatches={m}: config.datasets.{name}.batch_size={ds.batch_size} must split into '
          f'{m} micro-batches that each divide over the data-parallel size {dp}; use a batch size '
          f'that is a multiple of {max(m, 1) * dp}, or fewer micro-batches.')

  for name, ds in config.datasets.items():
    try:
      tokenizers.validate_tubes(model, config_lib.input_shape(ds))
    except ValueError as e:
      raise ValueError(f'config.datasets.{name} ({config_lib.input_shape(ds)}): {e}') from None

  for key in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
              'max_nonfinite_skips', 'prefetch_batches'):
    if config[key] < 1:
      raise ValueError(f'config.{key}={config[key]} must be >= 1 (e.g. config.{key}='
                       f'{defaults.base()[key]}).')
  if config.eval_every_steps < 0:
    raise ValueError(f'config.eval_every_steps={config.eval_every_steps} must be >= 0 (0: no eval '
                     'while training).')
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f'config.ema_decay={config.ema_decay} must be in [0, 1): 0 turns the moving '
                     'average off, e.g. 0.9999 averages over about the last 10000 steps.')
  if config.on_nonfinite not in ('stop', 'skip'):
    raise ValueError(f"config.on_nonfinite={config.on_nonfinite!r}: use 'stop' or 'skip'.")
  if config.num_epochs < 0 or (config.num_epochs == 0 and config.total_steps <= 0):
    raise ValueError(f'config.total_steps={config.total_steps} / config.num_epochs='
                     f'{config.num_epochs}: set a positive total_steps, or num_epochs > 0.')
  if not config.num_epochs and config.optimizer.warmup_steps >= config.total_steps:
    raise ValueError(f'config.optimizer.warmup_steps={config.optimizer.warmup_steps} must be smaller '
                     f'than config.total_steps={config.total_steps}.')
