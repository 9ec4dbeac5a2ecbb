"""A run's workdir: the config it was trained with and what `convert` wrote beside it.

    WORKDIR/config.json, config.py     the run's config (`save_workdir`)
    WORKDIR/converted.json             written by `convert`: the source, which dataset's head holds
                                       the checkpoint's classifier, class names (`read_converted`)
    WORKDIR/checkpoints/               the checkpoint store (checkpoints.py)
    WORKDIR/eval/                      evaluation results (commands/evaluate.py)
"""
import json
import os
import time

import jax
import ml_collections

from sparse_tubes import atomic
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes import config as config_lib
from sparse_tubes import defaults
from sparse_tubes.data import pipeline, sources

WORKDIR_CONFIG = 'config.json'
CONVERTED = 'converted.json'


def _tuples(value):
  """JSON arrays back to the tuples configs use (tubes, shapes, sharding rules, ranges)."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def config_from_json(text: str) -> ml_collections.ConfigDict:
  """The ConfigDict of `config_to_json` text: nested dicts become ConfigDicts, arrays tuples, null
  None (configs here never hold lists). Keys added to the defaults since the text was written
  (e.g. config.mesh.slices) get their default, at any depth, so code reads every key as config.x;
  both load_workdir and a workdir's config.py read config.json through here."""
  config = ml_collections.ConfigDict(_tuples(json.loads(text)))
  fill_defaults(config, defaults.base())
  for ds in config.datasets.values():
    fill_defaults(ds, defaults.dataset())
  return config


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def has_workdir_config(workdir: str) -> bool:
  return bool(workdir) and os.path.exists(os.path.join(workdir, WORKDIR_CONFIG))


def fill_defaults(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> None:
  """Sets each key of `reference` that `config` lacks, in nested ConfigDicts too, to its value."""
  for key, value in reference.items():
    if key not in config:
      config[key] = value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key],
                                                                      ml_collections.ConfigDict):
      fill_defaults(config[key], value)


def load_workdir(workdir: str, **overrides) -> ml_collections.ConfigDict:
  """The config that `train` or `convert` wrote into `workdir`, locked; `overrides` as in
  `config.load` (dotted names with '__' for dots)."""
  path = os.path.join(workdir, WORKDIR_CONFIG)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: give --config=CONFIG.py, or a workdir written by '
                            '`train` or `convert`.')
  with open(path) as f:
    config = config_from_json(f.read())
  config.lock()
  return config_lib.override(config, **overrides)


def resolve_config(config, workdir: str, **overrides) -> ml_collections.ConfigDict:
  """`config` (a file's, already loaded) if given, else the config saved in `workdir`."""
  if config is not None:
    return config_lib.override(config, **overrides)
  if not has_workdir_config(workdir):
    raise FileNotFoundError(f'--config is required here (e.g. --config=configs/synthetic/'
                            f'tubevit_tiny.py), unless --workdir holds the config.json that `train` '
                            f'or `convert` wrote; {workdir} has none.')
  return load_workdir(workdir, **overrides)


# --------------------------------------------------------------------------- the resume contract
# `train` on a workdir with checkpoints resumes them, so the config it was trained with
# (config.json) is a contract: a change that alters what the checkpoint holds (the parameter tree,
# the heads, the optimizer state's structure) cannot resume it, and is refused before anything is
# restored or written. Every other change resumes, and is recorded in config_changes.jsonl.
CHANGES = 'config_changes.jsonl'
# config.model keys that change how the model runs, not which parameters it has.
_RUNTIME_MODEL_KEYS = ('dropout', 'stochastic_depth', 'dtype', 'remat', 'attention_impl')


def _flat(config) -> dict:
  """{'model.hidden_size': 24, ...} of a config as config.json holds it (tuples as lists)."""
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        walk(value, f'{prefix}{key}.')
      else:
        out[f'{prefix}{key}'] = value
  walk(json.loads(config_to_json(config)) if not isinstance(config, dict) else config, '')
  return out


def _breaks(key: str, old: dict, new: dict) -> bool:
  """Whether changing `key` makes the saved checkpoint unreadable or meaningless to resume."""
  parts = key.split('.')
  if parts[0] == 'model':
    return parts[1] not in _RUNTIME_MODEL_KEYS
  if parts[0] == 'datasets':  # Another dataset under a head's name: other classes, other data.
    return parts[-1] in ('kind', 'tfds_name')
  if parts[0] == 'freeze':  # Frozen parameters change the optimizer's chain.
    return True
  if key == 'optimizer.name':
    return True
  if key == 'optimizer.grad_clip_norm':  # Clipping on or off adds or drops a link of the chain.
    return bool(old.get(key)) != bool(new.get(key))
  return False


def config_changes(saved, config) -> tuple[list[tuple], list[tuple]]:
  """(breaking, safe): the keys whose value differs between the config a workdir was trained with
  (`saved`, config.json's) and `config`, each as (key, old, new). A key config.json lacks (added
  to the defaults since it was written) has its default value; a dataset only one side has is one
  row, 'datasets.<name>': absent -> present (a head added) or back."""
  old, new = _flat(saved), _flat(config)
  fill = _flat(json.loads(config_to_json(defaults.base())))
  names = [{k.split('.')[1] for k in c if k.startswith('datasets.')} for c in (old, new)]
  for name in names[0] & names[1]:
    fill.update({f'datasets.{name}.{k}': v
                 for k, v in _flat(json.loads(config_to_json(defaults.dataset()))).items()})
  for side in (old, new):
    for key, value in fill.items():
      side.setdefault(key, value)
  breaking, safe = [], []
  for name in sorted(names[0] ^ names[1]):
    breaking.append((f'datasets.{name}', 'present' if name in names[0] else None,
                     'present' if name in names[1] else None))
  for key in sorted(set(old) | set(new)):
    if key.startswith('datasets.') and key.split('.')[1] in names[0] ^ names[1]:
      continue
    a, b = old.get(key), new.get(key)
    if a != b:
      (breaking if _breaks(key, old, new) else safe).append((key, a, b))
  return breaking, safe


class ConfigMismatch(ValueError):
  """`train` on a workdir whose checkpoints were trained with an incompatible config."""


def _value(v) -> str:
  return 'absent' if v is None else v if v == 'present' else json.dumps(v)


def check_resume(config, workdir: str, steps: list[int], *, log=print) -> list[tuple]:
  """Compares `config` with the config.json of a `workdir` that holds checkpoints (`steps`),
  before anything is restored or written. Raises ConfigMismatch (the differing keys, old -> new,
  and the two ways forward) for a change the checkpoints cannot resume with; returns the safe
  changes (also logged, with a warning for a batch size change) for `record_changes`."""
  path = os.path.join(workdir, WORKDIR_CONFIG)
  if not steps or not os.path.exists(path):
    return []
  with open(path) as f:
    saved = json.load(f)
  breaking, safe = config_changes(saved, config)
  if breaking:
    keys = '; '.join(f'config.{k}: {_value(a)} -> {_value(b)}' for k, a, b in breaking)
    raise ConfigMismatch(
        f'{os.path.abspath(workdir)} holds checkpoints (steps {steps}) trained with another '
        f'config, which they cannot resume with: {keys}. Nothing was changed there. Train this '
        f'config in another --workdir, or start a new run from these weights: --workdir=NEW_DIR '
        f'--config.init_from.kind=checkpoint --config.init_from.path={os.path.abspath(workdir)}'
        f' (config.init_from.keep_heads=True keeps the heads).')
  if safe:
    log(f'Resuming {os.path.abspath(workdir)} with config changes (recorded in {CHANGES}): '
        + '; '.join(f'config.{k}: {_value(a)} -> {_value(b)}' for k, a, b in safe))
  for key, a, b in safe:
    if key.startswith('datasets.') and key.endswith('.batch_size'):
      log(f'Warning: config.{key} changed {a} -> {b} on resume: the steps already taken saw '
          f'batches of {a}, the learning-rate schedule counts steps, so the run sees '
          f'{b / a if a else 0:.2g}x the planned examples from here on.')
  return safe


def record_changes(workdir: str, step: int, changes: list[tuple]) -> None:
  """Appends the safe changes a resume went through with to WORKDIR/config_changes.jsonl."""
  if not changes or jax.process_index() != 0:
    return
  row = {'time': time.strftime('%Y-%m-%dT%H:%M:%S'), 'resumed_step': step,
         'changes': {k: {'old': a, 'new': b} for k, a, b in changes}}
  with open(os.path.join(workdir, CHANGES), 'a') as f:
    f.write(json.dumps(row) + '\n')


SNAPSHOT = '''"""The config of this workdir, as `{command}` wrote it (config.json beside this file).

  python -m sparse_tubes evaluate --config={path} --workdir={workdir} --config.some.field=value
"""
import os

from sparse_tubes import workdir


def get_config(arg=None):
  del arg
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config.json')) as f:
    return workdir.config_from_json(f.read())
'''


def save_workdir(config: ml_collections.ConfigDict, workdir: str, *, command: str = 'convert'):
  """Writes config.json and a config.py that loads it (so --config=WORKDIR/config.py takes
  --config.field overrides). Process 0 writes; the others only make sure the folder exists."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() != 0:
    return
  atomic.write_text(os.path.join(workdir, WORKDIR_CONFIG), config_to_json(config))
  py = os.path.join(workdir, 'config.py')
  # Paths go into a docstring: a backslash or a triple quote in them must not end or escape it.
  quote = lambda p: p.replace('\\', '\\\\').replace('"""', '\\"\\"\\"')
  atomic.write_text(py, SNAPSHOT.format(command=command, path=quote(py), workdir=quote(workdir)))



def read_converted(workdir: str) -> dict | None:
  """converted.json of a workdir `convert` wrote, or None."""
  path = os.path.join(workdir, CONVERTED)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_converted(workdir: str, info: dict) -> None:
  atomic.write_text(os.path.join(workdir, CONVERTED), json.dumps(info, indent=2))


def train_target(config, workdir: str):
  """(config, workdir) for `train --workdir=DIR` on a workdir `convert` wrote: its checkpoint
  holds parameters only (nothing to resume), so training starts from it
  (config.init_from = that checkpoint, heads kept) in DIR/finetune. Other workdirs: unchanged."""
  info = read_converted(workdir)
  if info is None or ckpt_lib.has_train_state(workdir, int(info.get('step', 0))):
    return config, workdir
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.init_from.update(kind='checkpoint', path=os.path.abspath(workdir),
                       step=int(info.get('step', 0)), keep_heads=True)
  cfg.lock()
  return cfg, os.path.join(workdir, 'finetune')


def choose_head(config, classes: dict[str, int], dataset: str | None = None) -> str:
  """The head (dataset) predict and export use: `dataset` (--dataset) if the checkpoint has it,
  else the first eval (else any) video dataset with a head, else the first head."""
  if dataset:
    if dataset not in classes:
      raise ValueError(f'--dataset={dataset!r}: the checkpoint has heads {sorted(classes)}.')
    return dataset
  names = list(config.eval_datasets) or sorted(config.datasets)
  video = [n for n in names if n in classes and config.datasets[n].kind == 'video']
  if video:
    return video[0]
  return sorted(classes)[0]


def class_names(config, workdir: str, dataset: str, n: int) -> list[str]:
  """Class names of a head: converted.json (the HF id2label), else the dataset's TFDS info when it
  is there, else 'class_<i>'."""
  labels = (read_converted(workdir) or {}).get('labels', {}).get(dataset)
  if labels and len(labels) == n:
    return list(labels)
  if dataset in config.datasets:
    try:
      names = pipeline.dataset_info(config.datasets[dataset], sources.data_dir(config)).class_names
      if len(names) == n:
        return list(names)
    except Exception:  # noqa: BLE001  data not prepared here: fall back to indices
      pass
  return [f'class_{i}' for i in range(n)]
