"""Orbax checkpoints: model + optimizer state and every data iterator's position, saved together.

Orbax writes each step into a temporary directory and renames it when complete, so a crash or a
kill mid-save leaves the previous checkpoints intact (tests/train/test_checkpoint.py kills a run to
check). Saves are asynchronous: training continues while the arrays are written.
"""
import os
import signal

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


class Checkpointer:

  def __init__(self, workdir: str, *, keep: int = 3, use_async: bool = True, read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    # Readers (evaluate) open the directory without creating it and never save or delete.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        enable_async_checkpointing=use_async and not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  # Layout of one step: item 'params' (the model alone, what evaluation, `init_from` and converted
  # checkpoints need), item 'train_state' (step + optimizer state) and one 'data_<name>' item per
  # data iterator. Readers that want the model restore 'params' only.

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
    place."""
    items = {'params': ocp.args.StandardRestore(abstract_state['params']),
             'train_state': ocp.args.StandardRestore({'step': abstract_state['step'],
                                                      'opt_state': abstract_state['opt_state']})}
    for name, it in (iterators or {}).items():
      items[f'data_{name}'] = grain.checkpoint.CheckpointRestore(it)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return {'params': restored['params'], **restored['train_state']}

  def restore_params(self, step: int, abstract_params):
    """The model's parameters alone, onto the shardings of `abstract_params`."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    return restored['params']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


class PreemptionGuard:
  """Turns SIGTERM (what TPU/GPU schedulers send before preempting) into a save-and-exit.

  Multi-host runs agree on the step through JAX's preemption sync point so every host saves the
  same step; single-process runs use the signal flag alone.
  """

  def __init__(self):
    self.flag = False
    self._previous = None
    if jax.process_count() == 1:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handler)
      except ValueError:  # Not the main thread (e.g. inside a notebook executor): no handler.
        self._previous = None

  def _handler(self, signum, frame):
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self.flag = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # Preemption service not set up (no jax.distributed.initialize).
        return False
    return self.flag

  def restore_handler(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
