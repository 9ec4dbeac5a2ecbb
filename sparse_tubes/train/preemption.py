"""Preemption: SIGTERM (what TPU/GPU schedulers send before taking the machines back) becomes a
checkpoint and a clean stop; the next `train` resumes from it (run.Checkpointer)."""
import signal

import jax
from absl import logging
from jax.experimental import multihost_utils


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
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # Preemption service not set up (no jax.distributed.initialize).
        return False
    return self.flag

  def restore_handler(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
