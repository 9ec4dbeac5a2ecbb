"""Preemption: SIGTERM (what TPU/GPU schedulers send before taking the machines back) and Ctrl-C
(SIGINT) become a checkpoint and a clean stop; the next `train` resumes from it (checkpoints.py).

One process: a Python handler sets a flag, checked after every step. A second Ctrl-C does not wait
for that save: it removes the save in progress (an Orbax temporary directory, never a complete
checkpoint) and exits at once with status 130, leaving every complete checkpoint as it was.

Several processes: the signal may reach any one host (or all, at slightly different steps), and
every host must save the same step, or the checkpoint is torn. JAX's preemption service, started by
`jax.distributed.initialize` (on CPU/gloo processes too), does the agreement: its own SIGTERM
handler in every process reports the notice to the coordinator, which tells all hosts; each host
posts the step it is at and all of them stop at max + 1. `reached_preemption_sync_point(step)` is
called after every step; until a notice arrives it is a local flag check (~20 us on CPU, no
device sync, no message), so training keeps its asynchronous dispatch. Ctrl-C on a multi-process
run keeps Python's default (KeyboardInterrupt): a terminal reaches one process only.
"""
import os
import signal
import sys

import jax
from absl import logging
from jax.experimental import multihost_utils

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for a Ctrl-C.


class PreemptionGuard:
  """Turns SIGTERM and Ctrl-C into a save-and-exit at a step every process agrees on (`reached`);
  `on_abort` runs before a second Ctrl-C exits (the loop removes the save in progress)."""

  def __init__(self, on_abort=None):
    self.flag = False
    self.interrupted = False  # By Ctrl-C (the command exits 130), not by SIGTERM.
    self.on_abort = on_abort
    self._previous = {}
    self._multihost = jax.process_count() > 1
    if not self._multihost:
      for sig, handler in ((signal.SIGTERM, self._handler), (signal.SIGINT, self._interrupt)):
        try:
          self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # Not the main thread (e.g. inside a notebook executor): no handler.
          pass

  def _handler(self, signum, frame):
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self.flag = True

  def _interrupt(self, signum, frame):
    if self.interrupted:
      print('Ctrl-C again: stopping now without a checkpoint; the last complete checkpoint is '
            'kept.', file=sys.stderr, flush=True)
      # That line is the last word: the asynchronous checkpoint machinery, torn down mid-save by
      # on_abort and os._exit, may still print tracebacks from its threads. Nothing after it reaches
      # the terminal.
      try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
      except OSError:
        pass
      try:
        if self.on_abort is not None:
          self.on_abort()
      finally:
        os._exit(INTERRUPTED_EXIT)  # At once: no waiting on background saves or threads.
    print('Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again stops at once, '
          'without it).', file=sys.stderr, flush=True)
    self.flag = self.interrupted = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step`. Call it after every step, on every process."""
    if not self._multihost:
      return self.flag
    try:
      reached = multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError as e:  # jax.distributed started with jax_enable_preemption_service=False.
      logging.warning('No preemption service (%s): SIGTERM will stop this run without a '
                      'checkpoint.', e)
      self._multihost = False
      return False
    if reached:
      logging.warning('Preemption notice: every process saves step %d and stops.', step)
    return reached

  def restore_handler(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, signal.SIG_DFL if previous is None else previous)
    self._previous = {}
