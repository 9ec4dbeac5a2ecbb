"""The checkpoint store of a workdir (WORKDIR/checkpoints/<step>/):

    params              the model alone: what evaluation, `init_from` and converted checkpoints need
                        (`restore_params`, `read_params`)
    params_ema          the parameters' moving average, same tree (config.ema_decay > 0 only);
                        `restore_params(params='ema')` reads it instead of params
    train_state         step + optimizer state (absent in converted checkpoints)
    data_<name>         each train iterator's position (Grain)
  and WORKDIR/damaged_checkpoints/<step>, a checkpoint `train` could not read, moved aside (kept).

A checkpoint is moved aside only when it cannot be read as it was saved (its own metadata), never
because the run's config differs from the one that wrote it (workdir.check_resume refuses such a
config first; a difference it does not know stops here, one line, nothing moved). A save that
fails (read-only, full disk, no permission, quota) stops training within that save with
StorageError: the directory and the error in one line, the partial step removed, the earlier ones
kept; free space is checked before training and before each save where the file system says it.
"""
import dataclasses
import errno
import json
import os
import shutil
import time
import uuid

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from sparse_tubes.train import sharding, state as state_lib


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


class CheckpointError(RuntimeError):
  """A checkpoint step cannot be read; the message says which, why, and what to do."""


class StorageError(RuntimeError):
  """A checkpoint cannot be written (read-only, full, no permission, quota): training stops."""


TMP_MARK = '.orbax-checkpoint-tmp'  # Orbax writes step N into N.orbax-checkpoint-tmp-<id>, renamed.


def finalized_steps(workdir: str) -> list[int]:
  """Steps whose checkpoint Orbax has finished writing (a save in progress is a temporary
  directory, renamed when complete), oldest first; [] without creating anything."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(ocp.path.step.checkpoint_steps(directory))


def state_bytes(tree) -> int:
  """Bytes of the arrays a checkpoint of `tree` writes, before compression (all hosts)."""
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, 'dtype'))


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
  kill mid-save leaves the previous checkpoints intact (tests/test_checkpoints.py kills a run
  to check). Saves are asynchronous: training continues while the arrays are written.
  """

  def __init__(self, workdir: str = '', *, keep: int = 3, use_async: bool = True,
               read_only: bool = False, directory: str = ''):
    self.directory = directory or checkpoint_dir(workdir)
    # Readers (evaluate) open the directory without creating it and never save or delete.
    # A writer removes the temporary directories a killed save left (never a complete step).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        enable_async_checkpointing=use_async and not read_only,
        cleanup_tmp_directories=not read_only)
    self._saving = None  # The step of an asynchronous save not yet known to be complete.
    self._failed = False
    if not read_only:  # Saves a kill or a second Ctrl-C cut short: never a complete step.
      self.discard_partial()
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
      if item in ('params', 'params_ema', 'train_state'):
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
          if self.reads_as_saved(step):  # Readable under its own metadata: the config differs.
            raise CheckpointError(
                f'Checkpoint step {step} in {self.directory} reads as it was saved, but not into '
                f'the model and optimizer of this config ({reason}): the config differs from the '
                'one it was trained with. Nothing was moved. Train this config in another '
                '--workdir, or start one from these weights with --config.init_from.kind='
                f'checkpoint --config.init_from.path={os.path.dirname(self.directory)}.') from None
      if reason is None:
        return step, state
      where = self.move_aside(step)
      log(f'Checkpoint step {step} in {self.directory} is unreadable ({reason}); moved to {where}, '
          'trying the previous step.')
    return None, None

  def reads_as_saved(self, step: int) -> bool:
    """Whether step `step` reads with its own metadata (shapes, tree): its params finite and its
    train state (if any) whole. False: the files are damaged."""
    if self.verify(step, deep=True) is not None:
      return False
    path = os.path.join(self.directory, str(step), 'train_state')
    if os.path.isdir(path):
      try:
        tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              tree)
        self.manager.restore(step, args=ocp.args.Composite(
            train_state=ocp.args.StandardRestore(target)))
      except Exception:  # noqa: BLE001 - unreadable as saved: damaged
        return False
    return True

  def check_space(self, state, step: int | None = None) -> None:
    """StorageError unless the checkpoint directory takes a file and has room for a checkpoint of
    `state` (its arrays' bytes, + 10%; where the file system reports its free space: not on
    gs:// and other remote stores). Process 0 checks; every process stops with it."""
    error = ''
    if jax.process_index() == 0 and '://' not in self.directory:
      what = f'checkpoint step {step}' if step is not None else 'checkpoints'
      probe = os.path.join(self.directory, f'.write_test_{uuid.uuid4().hex}')
      try:  # A read-only or foreign directory fails here, before Orbax starts its threads.
        os.makedirs(self.directory, exist_ok=True)
        with open(probe, 'w') as f:
          f.write('ok')
        os.remove(probe)
        need, free = 1.1 * state_bytes(state), shutil.disk_usage(self.directory).free
        if free < need:
          raise OSError(errno.ENOSPC, f'{free / 2**20:.1f} MiB free, a checkpoint needs about '
                        f'{need / 2**20:.1f} MiB')
      except OSError as e:
        error = (f'Cannot write {what} in {self.directory}: {_oserror(e)}. '
                 + self._kept_hint())
    if jax.process_count() > 1:
      ok = multihost_utils.broadcast_one_to_all(int(not error))
      if not ok and not error:
        error = f'Cannot write {self.directory} (process 0 found it full or not writable).'
    if error:
      raise StorageError(error)

  def _kept_hint(self) -> str:
    kept = [s for s in self.all_steps() if s != self._saving]
    return ((f'Earlier checkpoints are kept (steps {kept}); ' if kept else 'No checkpoint was '
             'saved; ') + 'free space or fix the permissions there (or give another --workdir), '
            'then `train` again' + (f' resumes from step {kept[-1]}.' if kept else '.'))

  def poll(self) -> None:
    """StorageError once the asynchronous save in progress has failed; no wait (call it after every
    step: a failed background save stops training at once, not at the next save)."""
    if self._saving is None:
      return
    try:
      self.manager.check_for_errors()
      if self.manager.is_saving_in_progress():
        return
      self.manager.wait_until_finished()  # Done: returns at once, raising what the save raised.
    except Exception as e:  # noqa: BLE001 - any failure of the background save
      raise self._save_failed(e) from None
    self._saving = None

  def _save_failed(self, error: BaseException) -> StorageError:
    """The partial step removed, the error in one line."""
    step, self._failed = self._saving, True
    self.discard_partial(step)
    self._saving = None
    return StorageError(f'Could not save checkpoint step {step} in {self.directory}: '
                        f'{_oserror(error)}. The partial step was removed. ' + self._kept_hint())

  def discard_partial(self, step: int | None = None) -> None:
    """Removes Orbax's temporary directories (of `step`, or all): a save that did not complete,
    never a complete checkpoint. Process 0 removes."""
    if jax.process_index() != 0 or '://' in self.directory or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if TMP_MARK in name and (step is None or name.split('.')[0] == str(step)):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def save(self, step: int, state, iterators: dict | None = None, *, force: bool = False) -> bool:
    if self._saving is not None:  # Orbax would wait for it too; its failure is said first.
      try:
        self.manager.wait_until_finished()
      except Exception as e:  # noqa: BLE001 - the previous background save failed
        raise self._save_failed(e) from None
      self._saving = None
    self.check_space(state, step)
    items = {'params': ocp.args.StandardSave(state['params']),
             'train_state': ocp.args.StandardSave({'step': state['step'],
                                                   'opt_state': state['opt_state']})}
    if 'ema' in state:
      items['params_ema'] = ocp.args.StandardSave(state['ema'])
    for name, it in (iterators or {}).items():
      items[f'data_{name}'] = grain.checkpoint.CheckpointSave(it)
    self._saving = step
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
      if not self.manager.is_saving_in_progress():  # Synchronous (or already done).
        self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - the storage refused the save
      raise self._save_failed(e) from None
    if not saved:
      self._saving = None
    return saved

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
    unless examples were skipped as corrupt before the checkpoint.

    An abstract state with 'ema' (config.ema_decay > 0) restores the checkpoint's params_ema; a
    checkpoint saved without one (older, or trained without EMA so far) starts the average at the
    restored parameters."""
    items = {'params': ocp.args.StandardRestore(abstract_state['params']),
             'train_state': ocp.args.StandardRestore({'step': abstract_state['step'],
                                                      'opt_state': abstract_state['opt_state']})}
    ema = 'ema' in abstract_state
    saved_ema = os.path.isdir(os.path.join(self.directory, str(step), 'params_ema'))
    if ema and saved_ema:
      items['params_ema'] = ocp.args.StandardRestore(abstract_state['ema'])
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
    state = {'params': restored['params'], **restored['train_state']}
    if ema:
      if saved_ema:
        state['ema'] = restored['params_ema']
      else:
        state['ema'] = state_lib.fresh_ema(state['params'])
        if index == 0:
          logging.warning('Checkpoint %d has no params_ema (saved without config.ema_decay): the '
                          'moving average starts at its parameters.', step)
    return state

  def restore_params(self, step: int, abstract_params, item: str = 'params'):
    """The model's parameters alone (item 'params', or 'params_ema' for their moving average),
    onto the shardings of `abstract_params` (None: whole arrays on this host's first device,
    whatever devices saved them)."""
    if abstract_params is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      tree = ocp.StandardCheckpointer().metadata(
          os.path.join(self.directory, str(step), item)).item_metadata.tree
      abstract_params = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract_params)}))
    return restored[item]

  def close(self):
    """Waits for the save in progress (StorageError if it fails), then closes Orbax's threads
    and event loops in order. After a failed save, closes without waiting on it."""
    if self._failed:
      try:
        self.manager.close()
      except Exception:  # noqa: BLE001 - already reported as a StorageError
        pass
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - the last save failed in the background
      error = self._save_failed(e) if self._saving is not None else None
      try:
        self.manager.close()
      except Exception:  # noqa: BLE001
        pass
      if error is not None:
        raise error from None
      raise
    self._saving = None
    self.manager.close()


def _oserror(e: BaseException) -> str:
  """'Read-only file system' out of an OSError (or the first line of another error)."""
  if isinstance(e, OSError) and e.strerror:
    return f'{e.strerror} ({errno.errorcode.get(e.errno, e.errno)})'
  return _why(e)


def checkpoint_heads(workdir: str, step: int) -> dict[str, int]:
  """{dataset: num_classes} of a checkpoint's heads, read from its metadata (no data needed)."""
  path = os.path.join(checkpoint_dir(workdir), str(step), 'params')
  tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  return {name: int(h['bias'].shape[0]) for name, h in tree['heads'].items()}


def has_ema(workdir: str, step: int) -> bool:
  """Whether step `step` holds the parameters' moving average (trained with config.ema_decay)."""
  return os.path.isdir(os.path.join(checkpoint_dir(workdir), str(step), 'params_ema'))


PARAMS = ('auto', 'ema', 'raw')  # which parameters `restore_params` reads


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
  kind: str = 'raw'                 # 'ema': the parameters' moving average (params_ema)


def restore_params(config, workdir: str, step: int | None = None,
                   classes: dict[str, int] | None = None, params: str = 'auto') -> Restored:
  """The model of the latest (or given) checkpoint of `workdir`, on the config's mesh. The heads
  are the checkpoint's own (its metadata) unless `classes` ({dataset: classes}) says which to
  expect. `params`: 'raw' (the trained weights), 'ema' (their moving average; an error when the
  checkpoint has none) or 'auto' (the moving average when the checkpoint has one: what the EMA
  was kept for)."""
  if params not in PARAMS:
    raise ValueError(f'--params={params}: use one of {", ".join(PARAMS)}.')
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
    saved_ema = has_ema(workdir, step)
    if params == 'ema' and not saved_ema:
      raise CheckpointError(
          f'--params=ema: checkpoint step {step} in {ckpt.directory} holds no moving average (it '
          'was trained without config.ema_decay); evaluate its weights with --params=raw, or '
          'train with --config.ema_decay=0.999.')
    kind = 'ema' if params == 'ema' or (params == 'auto' and saved_ema) else 'raw'
    mesh, rules = sharding.mesh_and_rules(config)
    try:
      classes = classes if classes is not None else checkpoint_heads(workdir, step)
      spec = state_lib.model_spec(config.model, classes, mesh, rules)
      restored = ckpt.restore_params(step, state_lib.abstract_params(spec),
                                     'params_ema' if kind == 'ema' else 'params')
    except Exception:  # noqa: BLE001
      reason = ckpt.verify(step, deep=True)
      if reason is None:  # The files read as saved: the config is at fault, not the checkpoint.
        raise
      raise unreadable(reason) from None
  finally:
    ckpt.close()
  return Restored(params=restored, spec=spec, num_classes=classes, step=step, mesh=mesh,
                  rules=rules, directory=ckpt.directory, kind=kind)


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
