"""Config checks that run before anything is built or compiled.

Configs are Python files with `get_config(arg)` (big_vision's habit): `--config=path.py:key=value`
reaches `arg`, `--config.some.field=value` overrides a field. Every error names the config key and
the fix.
"""
import math

import jax
import ml_collections

from sparse_tubes import defaults

DTYPES = ('float32', 'bfloat16')


def _check_keys(cfg, reference, where: str):
  unknown = sorted(set(cfg.keys()) - set(reference.keys()))
  if unknown:
    raise ValueError(f'Unknown config key(s) {", ".join(where + k for k in unknown)}. Known keys: '
                     f'{", ".join(sorted(reference.keys()))}. Check the spelling in the config file.')


def input_shape(ds_cfg) -> tuple[int, ...]:
  """Shape of one example as the model sees it (no batch)."""
  if ds_cfg.kind == 'image':
    return (ds_cfg.crop_size, ds_cfg.crop_size, 3)
  return (ds_cfg.num_frames, ds_cfg.crop_size, ds_cfg.crop_size, 3)


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
             process_count: int | None = None) -> None:
  """Static checks: keys, datasets, batch divisibility, mesh, tubes against clip sizes."""
  # Imported late: keeps `config` light for the CLI.
  from sparse_tubes.data import pipeline
  from sparse_tubes.models import tokenizers
  from sparse_tubes.train import sharding

  num_devices = num_devices or jax.device_count()
  process_count = process_count or jax.process_count()
  _check_keys(config, defaults.base(), 'config.')
  if not config.datasets:
    raise ValueError('config.datasets is empty: add at least one dataset, e.g. '
                     "c.datasets.shapes_video = defaults.dataset(tfds_name='moving_shapes/video').")
  ref = defaults.dataset()
  for name, ds in config.datasets.items():
    _check_keys(ds, ref, f'config.datasets.{name}.')
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

  m = config.get('microbatches', 1)
  for name, ds in config.datasets.items():
    if m < 1 or ds.batch_size % (m * dp):
      raise ValueError(
          f'config.microbatches={m}: config.datasets.{name}.batch_size={ds.batch_size} must split into '
          f'{m} micro-batches that each divide over the data-parallel size {dp}; use a batch size '
          f'that is a multiple of {max(m, 1) * dp}, or fewer micro-batches.')

  if config.model.dtype not in DTYPES:
    raise ValueError(f'config.model.dtype={config.model.dtype!r}; choose one of {DTYPES}.')
  for name, ds in config.datasets.items():
    try:
      tokenizers.validate_tubes(config.model, input_shape(ds))
    except ValueError as e:
      raise ValueError(f'config.datasets.{name} ({input_shape(ds)}): {e}') from None

  if config.num_epochs < 0 or (config.num_epochs == 0 and config.total_steps <= 0):
    raise ValueError(f'config.total_steps={config.total_steps} / config.num_epochs='
                     f'{config.num_epochs}: set a positive total_steps, or num_epochs > 0.')
  if not config.num_epochs and config.optimizer.warmup_steps >= config.total_steps:
    raise ValueError(f'config.optimizer.warmup_steps={config.optimizer.warmup_steps} must be smaller '
                     f'than config.total_steps={config.total_steps}.')


def total_steps(config, num_train_examples: dict[str, int]) -> int:
  """config.total_steps, or config.num_epochs over the first dataset's train split."""
  if not config.num_epochs:
    return int(config.total_steps)
  name = sorted(config.datasets)[0]
  ds = config.datasets[name]
  steps = math.ceil(config.num_epochs * num_train_examples[name] / ds.batch_size)
  if config.optimizer.warmup_steps >= steps:
    raise ValueError(f'config.optimizer.warmup_steps={config.optimizer.warmup_steps} must be smaller '
                     f'than the {steps} steps of config.num_epochs={config.num_epochs}.')
  return steps


def load(spec: str, **overrides) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]` the way --config does, for scripts, notebooks and tests.

  `overrides` use dotted names with '__' for dots: load('c.py', model__num_layers=2).
  """
  import importlib.util
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_sparse_tubes_config', path)
  if module_spec is None:
    raise FileNotFoundError(f'Config file {path!r} not found.')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.lock()
  return override(config, **overrides)


def override(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """Sets dotted fields given with '__' for dots; a field that does not exist is an error."""
  for key, value in overrides.items():
    *parents, leaf = key.split('__')
    node = config
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f'config.{key.replace("__", ".")} does not exist.')
    node[leaf] = value
  return config


# ------------------------------------------------------------------ configs saved in a workdir

WORKDIR_CONFIG = 'config.json'


def _tuples(value):
  """JSON arrays back to the tuples configs use (tubes, shapes, sharding rules, ranges)."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def from_json(text: str) -> ml_collections.ConfigDict:
  """The ConfigDict of `config.to_json_best_effort()` text: nested dicts become ConfigDicts,
  arrays tuples, null None (configs here never hold lists)."""
  import json
  return ml_collections.ConfigDict(_tuples(json.loads(text)))


def to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def has_workdir_config(workdir: str) -> bool:
  import os
  return bool(workdir) and os.path.exists(os.path.join(workdir, WORKDIR_CONFIG))


def load_workdir(workdir: str, **overrides) -> ml_collections.ConfigDict:
  """The config that `train` or `convert` wrote into `workdir` (config.json), locked; `overrides`
  as in `load`."""
  import os
  path = os.path.join(workdir, WORKDIR_CONFIG)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: give --config=CONFIG.py, or a workdir written by '
                            '`train` or `convert`.')
  with open(path) as f:
    config = from_json(f.read())
  config.lock()
  return override(config, **overrides)


SNAPSHOT = '''"""The config of this workdir, as `{command}` wrote it (config.json beside this file).

  python -m sparse_tubes evaluate --config={path} --workdir={workdir} --config.some.field=value
"""
import os

from sparse_tubes import config as config_lib


def get_config(arg=None):
  del arg
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config.json')) as f:
    return config_lib.from_json(f.read())
'''


def save_workdir(config: ml_collections.ConfigDict, workdir: str, *, command: str = 'convert'):
  """Writes config.json and a config.py that loads it (so --config=WORKDIR/config.py takes
  --config.field overrides)."""
  import os
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, WORKDIR_CONFIG), 'w') as f:
    f.write(to_json(config))
  py = os.path.join(workdir, 'config.py')
  with open(py, 'w') as f:
    f.write(SNAPSHOT.format(command=command, path=py, workdir=workdir))
