"""Preemption: SIGTERM (what TPU/GPU schedulers send before taking the machines back) becomes a
checkpoint and a clean stop; the next `train` resumes from it (run.Checkpointer).

One process: a Python SIGTERM handler sets a flag, checked after every step.

Several processes: the signal may reach any one host (or all, at slightly different steps), and
every host must save the same step, or the checkpoint is torn. JAX's preemption service, started by
`jax.distributed.initialize` (on CPU/gloo processes too), does the agreement: its own SIGTERM
handler in every process reports the notice to the coordinator, which tells all hosts; each host
posts the step it is at and all of them stop at max + 1. `reached_preemption_sync_point(step)` is
called after every step; until a notice arrives it is a local flag check (~20 us on CPU, no
device sync, no message), so training keeps its asynchronous dispatch.
"""
import signal

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionGuard:
  """Turns SIGTERM into a save-and-exit at a step every process agrees on (`reached`)."""

  def __init__(self):
    self.flag = False
    self._previous = None
    self._multihost = jax.process_count() > 1
    if not self._multihost:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handler)
      except ValueError:  # Not the main thread (e.g. inside a notebook executor): no handler.
        self._previous = None

  def _handler(self, signum, frame):
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self.flag = True

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
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
