"""One run and its workdir: what train, evaluate, predict, convert and info share.

  config       the config of a workdir (config.json + a config.py that loads it), or a file's
  data         the data dir, the datasets' TFDS infos and their class counts
  model        the mesh, the logical-axis rules and the model's shapes and shardings
  checkpoints  the layout of WORKDIR/checkpoints/<step>/ and the files beside it:

    WORKDIR/config.json, config.py     the run's config (`save_workdir`)
    WORKDIR/converted.json             written by `convert`: the source, which dataset's head holds
                                       the checkpoint's classifier, class names (`read_converted`)
    WORKDIR/checkpoints/<step>/
      params                           the model alone: what evaluation, `init_from` and converted
                                       checkpoints need (`restore_params`, `read_params`)
      train_state                      step + optimizer state (absent in converted checkpoints)
      data_<name>                      each train iterator's position (Grain)
    WORKDIR/damaged_checkpoints/<step> a checkpoint `train` could not read, moved aside (kept)

The commands use this module and none of each other.
"""
import dataclasses
import json
import os
import shutil
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from sparse_tubes import config as config_lib
from sparse_tubes import defaults
from sparse_tubes import zoo
from sparse_tubes.data import builtin, pipeline
from sparse_tubes.train import sharding, state as state_lib

WORKDIR_CONFIG = 'config.json'
CONVERTED = 'converted.json'


# ------------------------------------------------------------------------------------ config

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

from sparse_tubes import run


def get_config(arg=None):
  del arg
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config.json')) as f:
    return run.config_from_json(f.read())
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


# -------------------------------------------------------------------------------------- data

def data_dir(config) -> str:
  return builtin.resolve_data_dir(config.data_dir)


def dataset_infos(config) -> tuple[str, dict[str, pipeline.DatasetInfo]]:
  """(data dir, {dataset: DatasetInfo}); builds the built-in dataset if needed and fails with the
  fix when a dataset is missing."""
  root = data_dir(config)
  infos = {}
  for name, ds in config.datasets.items():
    builtin.ensure_built(ds.tfds_name, root)
    infos[name] = pipeline.dataset_info(ds, root)
  return root, infos


def train_iterators(config, data_dir: str) -> dict:
  """{dataset: this process's endless train iterator}, each at the start of its shuffled order."""
  return {n: pipeline.train_iterator(ds, data_dir=data_dir, seed=config.seed,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), grain_cfg=config.grain,
                                     name=n)
          for n, ds in config.datasets.items()}


def num_classes(config, infos: dict | None = None) -> dict[str, int]:
  """Classes per dataset: from `infos` (the data itself) when given, else `zoo.NUM_CLASSES` for
  the known names (no data needed), else the prepared dataset's TFDS info."""
  out = {}
  for name, ds in config.datasets.items():
    if infos is not None:
      out[name] = infos[name].num_classes
    elif ds.tfds_name in zoo.NUM_CLASSES:
      out[name] = zoo.NUM_CLASSES[ds.tfds_name]
    else:
      try:
        out[name] = pipeline.dataset_info(ds, data_dir(config)).num_classes
      except Exception as e:  # noqa: BLE001 - any failure means: we cannot know the class count
        raise ValueError(
            f'config.datasets.{name}.tfds_name={ds.tfds_name!r}: unknown number of classes. '
            f'Prepare the dataset, or add it to sparse_tubes.zoo.NUM_CLASSES. ({e})') from None
  return out


# ------------------------------------------------------------------------------------- model

def mesh_and_rules(config) -> tuple[jax.sharding.Mesh, tuple]:
  """The device mesh of `config.mesh` and the logical-axis rules of `config.sharding_rules`."""
  return sharding.make_mesh(config.mesh), sharding.rules_tuple(config.sharding_rules)


def model_spec(config, classes: dict[str, int], mesh, rules) -> state_lib.ModelSpec:
  """The model's graphdef, abstract parameters and their shardings; nothing allocated."""
  return state_lib.model_spec(config.model, classes, mesh, rules)


# ------------------------------------------------------------------------------- checkpoints

def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


class CheckpointError(RuntimeError):
  """A checkpoint step cannot be read; the message says which, why, and what to do."""


def _why(e: BaseException) -> str:
  """One line out of a (possibly 700-line TensorStore) exception."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  text = lines[0] if lines else ''
  return f'{type(e).__name__}: {text[:200]}' if text else type(e).__name__


@jax.jit
def _all_finite(tree):
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.stack(leaves).all() if leaves else jnp.array(True)


def all_finite(tree) -> bool:
  """Whether every floating-point array of `tree` is finite (one small device reduction)."""
  return bool(_all_finite(tree))


class Checkpointer:
  """Orbax checkpoints of one workdir: model + optimizer state and every data iterator's
  position, saved together (the layout in the module docstring).

  Orbax writes each step into a temporary directory and renames it when complete, so a crash or a
  kill mid-save leaves the previous checkpoints intact (tests/train/test_checkpoint.py kills a run
  to check). Saves are asynchronous: training continues while the arrays are written.
  """

  def __init__(self, workdir: str = '', *, keep: int = 3, use_async: bool = True,
               read_only: bool = False, directory: str = ''):
    self.directory = directory or checkpoint_dir(workdir)
    # Readers (evaluate) open the directory without creating it and never save or delete.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        enable_async_checkpointing=use_async and not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def verify(self, step: int, *, deep: bool = False) -> str | None:
    """Why step `step` cannot be restored, or None when it can. Checks the files Orbax and Grain
    parse (each item's _METADATA, each iterator's JSON); `deep` also reads the parameters and
    checks they are finite (what a truncated array file or a diverged run breaks)."""
    path = os.path.join(self.directory, str(step))
    if not os.path.isdir(path):
      return f'{path} does not exist'
    items = os.listdir(path)
    if 'params' not in items:
      return f'{path} has no params'
    for item in sorted(items):
      where = os.path.join(path, item)
      if item in ('params', 'train_state'):
        meta = os.path.join(where, '_METADATA')
        if not os.path.exists(meta):
          return f'{item}/_METADATA is missing'
        try:
          with open(meta) as f:
            json.load(f)
        except ValueError as e:
          return f'{item}/_METADATA is not valid JSON ({e})'
      elif item.startswith('data_') and os.path.isdir(where):
        for name in os.listdir(where):
          if name.endswith('.json'):
            try:
              with open(os.path.join(where, name)) as f:
                json.load(f)
            except ValueError:
              return f'{item}/{name} (the data iterator position) is empty or not valid JSON'
    if deep:
      try:
        params = self.restore_params(step, None)
      except Exception as e:  # noqa: BLE001 - whatever the reader says, the step is unreadable
        return f'its params do not read: {_why(e)}'
      if not all_finite(params):
        return 'its params hold NaN or Inf'
    return None

  def readable_steps(self, *, deep: bool = True) -> list[int]:
    """The steps that `verify` passes, oldest first (deep: reads every step's parameters)."""
    return [s for s in self.all_steps() if self.verify(s, deep=deep) is None]

  def move_aside(self, step: int) -> str:
    """Moves an unreadable step out of the way (to WORKDIR/damaged_checkpoints/<step>, kept for
    inspection, never deleted) so newer saves can take its number; returns where it went. Every
    process calls it; process 0 moves."""
    target = os.path.join(os.path.dirname(self.directory), 'damaged_checkpoints', str(step))
    if os.path.exists(target):
      target += f'.{int(time.time())}'
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'move_aside_{step}')
    self.manager.reload()
    return target

  def restore_latest(self, abstract_state, iterators: dict | None = None, *, log=print):
    """(step, state) of the newest step that restores and holds finite parameters, or
    (None, None) when there is no checkpoint. A newer unreadable step is named in one line (which
    and why) and moved aside; training goes on from the previous one."""
    for step in sorted(self.all_steps(), reverse=True):
      reason = self.verify(step)
      if reason is None:
        try:
          state = self.restore(step, abstract_state, iterators)
          if not all_finite(state['params']):
            reason = 'its params hold NaN or Inf'
        except Exception as e:  # noqa: BLE001 - any reader failure means: this step is unreadable
          reason = _why(e)
      if reason is None:
        return step, state
      where = self.move_aside(step)
      log(f'Checkpoint step {step} in {self.directory} is unreadable ({reason}); moved to {where}, '
          'trying the previous step.')
    return None, None

  def save(self, step: int, state, iterators: dict | None = None, *, force: bool = False) -> bool:
    items = {'params': ocp.args.StandardSave(state['params']),
             'train_state': ocp.args.StandardSave({'step': state['step'],
                                                   'opt_state': state['opt_state']})}
    for name, it in (iterators or {}).items():
      items[f'data_{name}'] = grain.checkpoint.CheckpointSave(it)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def save_params(self, step: int, params) -> bool:
    """A model-only checkpoint (e.g. converted from published weights)."""
    return self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                             force=True)

  def restore(self, step: int, abstract_state, iterators: dict | None = None):
    """Restores the full train state onto the shardings of `abstract_state`; iterators are set in
    place.

    The arrays are resharded onto whatever mesh `abstract_state` is on, so a run can resume on a
    different slice (other mesh shape, other device count). Each data iterator's state is saved
    per process (`data_<name>/process_<i>-of-<n>.json`); when the process count changed, those
    states do not apply, and every iterator continues from the same position of the global
    (shuffled) example order instead: `step` batches drawn, step x batch_size examples, exact
    unless examples were skipped as corrupt before the checkpoint."""
    items = {'params': ocp.args.StandardRestore(abstract_state['params']),
             'train_state': ocp.args.StandardRestore({'step': abstract_state['step'],
                                                      'opt_state': abstract_state['opt_state']})}
    index, count = jax.process_index(), jax.process_count()
    repositioned, saved_by = {}, set()
    for name, it in (iterators or {}).items():
      saved = os.path.join(self.directory, str(step), f'data_{name}')
      files = os.listdir(saved) if os.path.isdir(saved) else []
      if f'process_{index}-of-{count}.json' in files:
        items[f'data_{name}'] = grain.checkpoint.CheckpointRestore(it)
      else:
        repositioned[name] = it
        saved_by |= {f[:-len('.json')].split('-of-')[-1] for f in files if f.endswith('.json')}
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    for it in repositioned.values():
      grain.experimental.set_next_index(it, step)  # One batch per step: `step` batches drawn.
    if repositioned and index == 0:
      logging.warning(
          'Checkpoint %d: data iterator states of %s were saved by %s processes, this run has %d: '
          'they continue from global example %d x batch_size of the shuffled order (exact unless '
          'examples were skipped as corrupt before it).', step, ', '.join(sorted(repositioned)),
          '/'.join(sorted(saved_by)) or 'no', count, step)
    return {'params': restored['params'], **restored['train_state']}

  def restore_params(self, step: int, abstract_params):
    """The model's parameters alone, onto the shardings of `abstract_params` (None: whole arrays on
    this host's first device, whatever devices saved them)."""
    if abstract_params is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      tree = ocp.StandardCheckpointer().metadata(
          os.path.join(self.directory, str(step), 'params')).item_metadata.tree
      abstract_params = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    return restored['params']

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def checkpoint_heads(workdir: str, step: int) -> dict[str, int]:
  """{dataset: num_classes} of a checkpoint's heads, read from its metadata (no data needed)."""
  path = os.path.join(checkpoint_dir(workdir), str(step), 'params')
  tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  return {name: int(h['bias'].shape[0]) for name, h in tree['heads'].items()}


def has_train_state(workdir: str, step: int) -> bool:
  """Whether step `step` can be resumed (converted checkpoints hold the model only)."""
  return os.path.exists(os.path.join(checkpoint_dir(workdir), str(step), 'train_state'))


@dataclasses.dataclass(frozen=True)
class Restored:
  """A checkpoint's model on the config's mesh (`restore_params`)."""
  params: dict                      # on spec.param_shardings
  spec: state_lib.ModelSpec
  num_classes: dict[str, int]       # the heads restored
  step: int
  mesh: jax.sharding.Mesh
  rules: tuple
  directory: str                    # WORKDIR/checkpoints


def restore_params(config, workdir: str, step: int | None = None,
                   classes: dict[str, int] | None = None) -> Restored:
  """The model of the latest (or given) checkpoint of `workdir`, on the config's mesh. The heads
  are the checkpoint's own (its metadata) unless `classes` ({dataset: classes}) says which to
  expect."""
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    given, step = step, ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {ckpt.directory}. Train first: python -m '
                              f'sparse_tubes train --config=... --workdir={workdir} (or convert '
                              'a published checkpoint into it).')
    if step not in ckpt.all_steps():
      raise FileNotFoundError(f'--step={step}: no such checkpoint in {ckpt.directory}; its steps '
                              f'are {ckpt.all_steps()}.')

    def unreadable(reason):
      readable = [s for s in ckpt.readable_steps() if s != step]
      hint = (f'give --step=N, one of the readable steps {readable}' if readable
              else 'no step there is readable: train again')
      which = 'the given' if given is not None else 'the latest'
      return CheckpointError(f'Checkpoint step {step} ({which}) in {ckpt.directory} is unreadable '
                             f'({reason}): {hint}.')

    reason = ckpt.verify(step)
    if reason:
      raise unreadable(reason)
    mesh, rules = mesh_and_rules(config)
    try:
      classes = classes if classes is not None else checkpoint_heads(workdir, step)
      spec = model_spec(config, classes, mesh, rules)
      params = ckpt.restore_params(step, state_lib.abstract_params(spec))
    except Exception:  # noqa: BLE001
      reason = ckpt.verify(step, deep=True)
      if reason is None:  # The files read as saved: the config is at fault, not the checkpoint.
        raise
      raise unreadable(reason) from None
  finally:
    ckpt.close()
  return Restored(params=params, spec=spec, num_classes=classes, step=step, mesh=mesh,
                  rules=rules, directory=ckpt.directory)


def write_params(workdir: str, params, *, step: int = 0) -> str:
  """A model-only checkpoint into a workdir that holds none yet; returns the checkpoint dir."""
  ckpt = Checkpointer(workdir, use_async=False)
  if ckpt.latest_step() is not None:
    ckpt.close()
    raise FileExistsError(f'{ckpt.directory} already holds checkpoints: convert into a new '
                          '--workdir.')
  ckpt.save_params(step, params)
  ckpt.close()
  return ckpt.directory


def read_params(path: str, step: int = -1) -> dict:
  """The `params` item of a checkpoint in a workdir (or in its checkpoints/ dir), as saved, as
  numpy arrays: what config.init_from reads. step -1: the latest."""
  directory = checkpoint_dir(path)
  if not os.path.isdir(directory):
    directory = os.path.abspath(path)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'config.init_from.path = {path!r}: no checkpoint directory there.')
  ckpt = Checkpointer(directory=directory, read_only=True)
  try:
    s = ckpt.latest_step() if step is None or step < 0 else step
    if s is None:
      raise FileNotFoundError(f'config.init_from.path = {path!r}: no checkpoint steps in '
                              f'{directory}.')
    params = ckpt.restore_params(s, None)
  finally:
    ckpt.close()
  return jax.tree.map(np.asarray, dict(params))


# ------------------------------------------------------------------ converted checkpoints

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
  if info is None or has_train_state(workdir, int(info.get('step', 0))):
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
      names = pipeline.dataset_info(config.datasets[dataset], data_dir(config)).class_names
      if len(names) == n:
        return list(names)
    except Exception:  # noqa: BLE001  data not prepared here: fall back to indices
      pass
  return [f'class_{i}' for i in range(n)]
