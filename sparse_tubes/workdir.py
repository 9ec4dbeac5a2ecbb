"""A run's workdir: the config it was trained with and what `convert` wrote beside it.

    WORKDIR/config.json, config.py     the run's config (`save_workdir`)
    WORKDIR/converted.json             written by `convert`: the source, which dataset's head holds
                                       the checkpoint's classifier, class names (`read_converted`)
    WORKDIR/checkpoints/               the checkpoint store (checkpoints.py)
    WORKDIR/eval/                      evaluation results (commands/evaluate.py)
"""
import json
import os

import jax
import ml_collections

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
  None (configs here never hold lists)."""
  return ml_collections.ConfigDict(_tuples(json.loads(text)))


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def has_workdir_config(workdir: str) -> bool:
  return bool(workdir) and os.path.exists(os.path.join(workdir, WORKDIR_CONFIG))


def load_workdir(workdir: str, **overrides) -> ml_collections.ConfigDict:
  """The config that `train` or `convert` wrote into `workdir`, locked; `overrides` as in
  `config.load` (dotted names with '__' for dots)."""
  path = os.path.join(workdir, WORKDIR_CONFIG)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: give --config=CONFIG.py, or a workdir written by '
                            '`train` or `convert`.')
  with open(path) as f:
    config = config_from_json(f.read())
  for key, value in defaults.base().items():  # A key added since the workdir was written.
    if key not in config:
      config[key] = value
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
  with open(os.path.join(workdir, WORKDIR_CONFIG), 'w') as f:
    f.write(config_to_json(config))
  py = os.path.join(workdir, 'config.py')
  with open(py, 'w') as f:
    f.write(SNAPSHOT.format(command=command, path=py, workdir=workdir))



def read_converted(workdir: str) -> dict | None:
  """converted.json of a workdir `convert` wrote, or None."""
  path = os.path.join(workdir, CONVERTED)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_converted(workdir: str, info: dict) -> None:
  with open(os.path.join(workdir, CONVERTED), 'w') as f:
    json.dump(info, f, indent=2)


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
