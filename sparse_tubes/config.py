"""Config checks that run before anything is built or compiled.

Configs are Python files with `get_config(arg)` (big_vision's habit): `--config=path.py:key=value`
reaches `arg`, `--config.some.field=value` overrides a field. Every error names the config key and
the fix.
"""
import difflib
import math

import jax
import ml_collections

from sparse_tubes import defaults

DTYPES = ('float32', 'bfloat16')


def _unknown(key: str, known, where: str) -> ValueError:
  close = difflib.get_close_matches(key, list(known), n=1)
  hint = f'did you mean {where}{close[0]}?' if close else f'known keys: {", ".join(sorted(known))}.'
  return ValueError(f'Unknown config key {where}{key}; {hint}')


def check_override(config: ml_collections.ConfigDict, dotted: str) -> None:
  """Raises check_tree's "did you mean" error when a command-line override `--config.a.b=...`
  names no key of `config` (absl's parser would fail later, with a page of traceback)."""
  node, where = config, 'config.'
  for part in dotted.split('.'):
    if not isinstance(node, ml_collections.ConfigDict):
      return  # Inside a tuple or a value: absl's parser says what it accepts.
    if part not in node:
      raise _unknown(part, node.keys(), where)
    node, where = node[part], f'{where}{part}.'


def _type_ok(value, types) -> bool:
  if isinstance(value, bool):  # a bool is an int in Python, but not a valid int or float here
    return bool in types
  accepted = set(types) | ({int} if float in types else set()) | ({list} if tuple in types else set())
  return isinstance(value, tuple(accepted))


def check_tree(cfg, reference, where: str = 'config.') -> None:
  """Every key of `cfg` is in `reference` (else the closest one is named) and its value has the
  reference value's type (or one of defaults.TYPES); nested ConfigDicts are checked the same way.
  config.datasets is checked against defaults.dataset() per name; `cfg` may lack keys."""
  for key in cfg.keys():
    if key not in reference:
      raise _unknown(key, reference.keys(), where)
    value, ref = cfg[key], reference[key]
    name = f'{where}{key}'
    if name == 'config.datasets':
      for ds_name, ds in value.items():
        check_tree(ds, defaults.dataset(), f'{name}.{ds_name}.')
      continue
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ValueError(f'{name} = {value!r} must be a dict of {", ".join(sorted(ref.keys()))}.')
      check_tree(value, ref, name + '.')
      continue
    types = defaults.TYPES.get(name.removeprefix('config.'), (type(ref),))
    if not _type_ok(value, types):
      want = ' or '.join('None' if t is defaults.NoneType else t.__name__ for t in types)
      raise ValueError(f'{name} = {value!r} ({type(value).__name__}): expected {want}, as the '
                       f'default {ref!r}.')


def _int_tuple(value, length: int | None, name: str, what: str):
  if (not isinstance(value, (tuple, list)) or (length is not None and len(value) != length)
      or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
    raise ValueError(f'{name} = {value!r}: expected {what}.')


def model_config(model_cfg) -> ml_collections.ConfigDict:
  """config.model completed with defaults.model() (so a partial dict from a test or converter
  works), checked (unknown keys, types, impossible combinations) and with posemb, head and
  attention = '' replaced by the name's defaults. The one place where defaults are applied."""
  cfg = model_cfg.to_dict() if isinstance(model_cfg, ml_collections.ConfigDict) else dict(model_cfg)
  reference = defaults.model()
  check_tree(cfg, reference, 'config.model.')
  m = defaults.model()
  m.update(cfg)
  check_model(m)
  for key, value in defaults.NAME_DEFAULTS[m.name].items():
    if not m[key]:
      m[key] = value
  _check_combinations(m)
  return m


def check_model(m) -> None:
  """Values of config.model that no model accepts (before name defaults are applied)."""
  # Imported late: keeps `config` light for the CLI.
  from sparse_tubes.models import attention, attention_patterns, encoder, tokenizers

  def choice(key, allowed):
    if m[key] not in allowed:
      raise ValueError(f'config.model.{key} = {m[key]!r}: use one of {tuple(allowed)}.')

  choice('name', defaults.NAME_DEFAULTS)
  for key in ('hidden_size', 'num_layers', 'num_heads', 'mlp_dim', 'in_channels'):
    if m[key] <= 0:
      raise ValueError(f'config.model.{key} = {m[key]} must be positive: set it in the config '
                       "(e.g. zoo.vit(c.model, 'B')).")
  if m.hidden_size % m.num_heads:
    raise ValueError(f'config.model.hidden_size = {m.hidden_size} must be a multiple of '
                     f'config.model.num_heads = {m.num_heads}.')
  if not m.tubes:
    raise ValueError('config.model.tubes is empty: give ((kernel), (stride), (offset)) per tube, '
                     'each (t, h, w).')
  for i, tube in enumerate(m.tubes):
    try:
      for part in tube if isinstance(tube, (tuple, list)) and len(tube) == 3 else (None,):
        _int_tuple(part, 3, '', '')
    except ValueError:
      raise ValueError(f'config.model.tubes[{i}] = {tube!r}: expected ((kernel), (stride), '
                       '(offset)), each 3 ints (t, h, w).') from None
  for key in ('space_to_depth', 'interpolated_kernel', 'global_stride'):
    _int_tuple(m[key], 3, f'config.model.{key}', '(t, h, w) ints')
  if m.local_window is not None:
    _int_tuple(m.local_window, 3, 'config.model.local_window', '(t, h, w) ints or None')
  if m.input_shape is not None:
    _int_tuple(m.input_shape, 4, 'config.model.input_shape', '(T, H, W, C) ints or None')
  if isinstance(m.scaling_gate_layers, (tuple, list)):
    _int_tuple(m.scaling_gate_layers, None, 'config.model.scaling_gate_layers',
               'layer indices, or an int k (layers k..L-1)')
  choice('posemb', ('',) + defaults.POSEMBS)
  choice('head', ('',) + defaults.POOLS)
  choice('attention', ('',) + tuple(attention_patterns.PATTERNS))
  choice('attention_impl', attention.IMPLS)
  choice('factorised_order', attention_patterns.ORDERS)
  choice('tube_variant', tokenizers.VARIANTS)
  choice('encoder', defaults.ENCODERS)
  choice('spatial_pool', ('token', 'gap'))
  choice('dtype', DTYPES)
  choice('space_cls_average', ('before_norm', 'after_norm'))
  encoder.remat_policy(m.remat)
  for key in ('dropout', 'stochastic_depth'):
    if not 0 <= m[key] < 1:
      raise ValueError(f'config.model.{key} = {m[key]} must be in [0, 1).')
  if m.head_mlp_dim < 0:
    raise ValueError(f'config.model.head_mlp_dim = {m.head_mlp_dim} must be >= 0 (0: no MLP).')
  if m.encoder == 'factorised' and m.temporal_layers <= 0:
    raise ValueError(f'config.model.temporal_layers = {m.temporal_layers} must be positive with '
                     "config.model.encoder = 'factorised'.")


def _check_combinations(m) -> None:
  """Combinations that cannot build (after name defaults)."""
  from sparse_tubes.models import attention_patterns
  grid_needed = [k for k, bad in (
      (f"config.model.attention = '{m.attention}'", m.attention != 'joint'),
      ("config.model.posemb = 'learned_space_time'", m.posemb == 'learned_space_time'),
      ("config.model.encoder = 'factorised'", m.encoder == 'factorised')) if bad]
  if grid_needed and len(m.tubes) != 1:
    raise ValueError(
        f'{grid_needed[0]} needs the tokens on one (time, height, width) grid, i.e. a single '
        f'dense tube, but config.model.tubes has {len(m.tubes)}: use one tube (2D patches '
        "(1,16,16) or tubelets (2,16,16), stride = kernel), or config.model.attention = 'joint' "
        "(TubeViT's sparse tubes).")
  if m.head == 'token' and m.attention in attention_patterns.NO_CLASS_TOKEN:
    raise ValueError(
        f"config.model.attention = '{m.attention}' (ViViT M3/M4) has no class token (ViViT "
        "§3.3): set config.model.head = 'gap' or 'map'.")
  if m.encoder == 'factorised' and m.attention != 'joint':
    raise ValueError(
        "config.model.encoder = 'factorised' (ViViT M2) attends jointly inside each encoder "
        f"(spatial per frame, then temporal): set config.model.attention = 'joint', not "
        f"'{m.attention}'.")
  if m.posemb != 'sincos3d' and m.input_shape is None:
    raise ValueError(f"config.model.posemb = '{m.posemb}' needs config.model.input_shape = "
                     '(T, H, W, C), the clip shape that sizes the learned tables.')
  if m.head_mlp_dim and m.head != 'map':
    raise ValueError(f'config.model.head_mlp_dim = {m.head_mlp_dim} is the MLP of the MAP head: '
                     f"set config.model.head = 'map' or head_mlp_dim = 0 (head is '{m.head}').")
  if m.local_window is not None and m.attention != 'local_global':
    raise ValueError(f'config.model.local_window = {m.local_window} only applies to '
                     f"config.model.attention = 'local_global', not '{m.attention}': remove it.")
  if m.scaling_gate_layers not in ((), 0) and m.encoder != 'single':
    raise ValueError('config.model.scaling_gate_layers (TubeViT §3.6) needs config.model.encoder '
                     "= 'single'.")
  if m.space_cls_average != 'before_norm' and m.attention != 'space':
    raise ValueError("config.model.space_cls_average only applies to config.model.attention = "
                     f"'space', not '{m.attention}': remove it.")


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
  check_tree(config, defaults.base())
  model = model_config(config.model)
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
      tokenizers.validate_tubes(model, input_shape(ds))
    except ValueError as e:
      raise ValueError(f'config.datasets.{name} ({input_shape(ds)}): {e}') from None

  for key in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
              'max_nonfinite_skips', 'prefetch_batches'):
    if config[key] < 1:
      raise ValueError(f'config.{key}={config[key]} must be >= 1 (e.g. config.{key}='
                       f'{defaults.base()[key]}).')
  if config.eval_every_steps < 0:
    raise ValueError(f'config.eval_every_steps={config.eval_every_steps} must be >= 0 (0: no eval '
                     'while training).')
  if config.on_nonfinite not in ('stop', 'skip'):
    raise ValueError(f"config.on_nonfinite={config.on_nonfinite!r}: use 'stop' or 'skip'.")
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
      where = 'config.' + ''.join(p + '.' for p in parents)
      raise KeyError(str(_unknown(leaf, node.keys(), where)))
    node[leaf] = value
  return config
