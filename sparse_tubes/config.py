"""Config checks that run before anything is built or compiled.

Configs are Python files with `get_config(arg)` (big_vision's habit): `--config=path.py:key=value`
reaches `arg`, `--config.some.field=value` overrides a field. Every error names the config key and
the fix.
"""
import difflib
import math
import os

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


def load_error(spec: str, error: BaseException) -> str:
  """One line for a config file that does not load: the file, the line (the deepest frame in that
  file, or the syntax error's) and the error, e.g.
    Config file configs/x.py, line 12: NameError: name 'zoo' is not defined"""
  import traceback
  path = spec.partition(':')[0]
  line = None
  if isinstance(error, SyntaxError) and error.filename and os.path.abspath(
      error.filename) == os.path.abspath(path):
    line = error.lineno
  else:
    for frame in traceback.extract_tb(error.__traceback__):
      if os.path.abspath(frame.filename) == os.path.abspath(path):
        line = frame.lineno
  text = error.msg if isinstance(error, SyntaxError) else str(error).strip().splitlines()
  text = text if isinstance(text, str) else (text[0] if text else '')
  where = f'{path}, line {line}' if line else path
  return f'Config file {where}: {type(error).__name__}: {text}'.rstrip(': ')
