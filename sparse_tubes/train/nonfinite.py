"""What training does when a step's loss or gradient norm is not finite (config.on_nonfinite).

The jitted step reports `train/finite` with its other metrics; the loop fetches those at each log
line and before each checkpoint save (no extra host sync), and `Watch.check` reads them:
  'stop'  the first bad step stops training: the message names the step and the dataset(s) whose
          loss went bad; the loop adds the last good checkpoint and exits non-zero.
  'skip'  the step already dropped the bad update (parameters and optimizer state unchanged,
          `train/skipped` = 1); training stops after `config.max_nonfinite_skips` in a row.
A checkpoint is never saved with non-finite parameters (`run.all_finite` before each save), so
keep-N can only delete finite checkpoints older than finite ones.
"""
import numpy as np


class NonFiniteError(RuntimeError):
  """Training stopped on a non-finite loss or gradient; the message says where and what to do."""


class Watch:

  def __init__(self, policy: str, max_skips: int):
    self.policy, self.max_skips = policy, max_skips
    self.in_a_row = self.skipped = 0

  def check(self, rows) -> str:
    """'' when training may go on, else why it stops. `rows`: [(step, metrics)] fetched."""
    for step, m in rows:
      if float(m.get('train/finite', 1.0)) >= 1.0:
        self.in_a_row = 0
        continue
      bad = [k.rsplit('/', 1)[-1] for k in sorted(m)
             if k.startswith('train/loss/') and not np.isfinite(m[k])]
      what = (f"the loss of dataset {', '.join(bad)}" if bad else
              'the loss' if not np.isfinite(m['train/loss']) else 'the gradient norm')
      if self.policy != 'skip':
        return f'step {step}: {what} is not finite (NaN or Inf)'
      self.in_a_row += 1
      self.skipped += 1
      if self.in_a_row >= self.max_skips:
        return (f'{self.in_a_row} non-finite steps in a row up to step {step} (config.'
                f'max_nonfinite_skips={self.max_skips}), the last in {what}')
    return ''
