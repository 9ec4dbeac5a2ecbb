"""Metric writing, progress lines and profiling.

clu.metric_writers imports TensorFlow at package import (and with TensorBoard that is ~1.5 GB), so
`MetricWriter` below keeps clu's MetricWriter interface (write_scalars / write_texts /
write_hparams / flush / close) over tensorboardX (<1 MB), plus a JSON-lines copy of every scalar
(`metrics.jsonl`) that scripts and tests can read without TensorBoard. Both live in
WORKDIR/tensorboard/; the train loop flushes them at every log line (`flush`), so a killed run keeps
every logged step, and a resumed run replaces the rows of the steps it does again (`resume_step`).
"""
import json
import os
import sys
import time
from collections.abc import Mapping

import jax
from absl import logging

from sparse_tubes import atomic


def _summary_writer():
  """tensorboardX.SummaryWriter, imported without torch. Where torch is installed (the [torch]
  extra), tensorboardX imports it at load only to accept torch tensors, which we never pass: 1.5 s
  of CPU and ~0.3 GB in every train and evaluate process. torch is hidden while tensorboardX loads
  (an entry of None in sys.modules makes `import torch` raise ImportError, which it expects)."""
  if 'tensorboardX.writer' in sys.modules or 'torch' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter


class MetricWriter:
  """TensorBoard event files + metrics.jsonl under `logdir`; only process 0 writes."""

  def __init__(self, logdir: str, enabled: bool | None = None, *, resume_step: int | None = None):
    """`resume_step`: the step a resumed run restored; metrics.jsonl rows after it (written by
    the run that stopped, for steps this one does again) are dropped, so every step has one row."""
    self.logdir = logdir
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = self._jsonl = None
    if self.enabled:
      SummaryWriter = _summary_writer()  # Imported here: only the writing process needs it.
      os.makedirs(logdir, exist_ok=True)
      path = os.path.join(logdir, 'metrics.jsonl')
      if resume_step is not None and os.path.exists(path):
        keep = [r for r in read_jsonl(logdir) if r.get('step', 0) <= resume_step]
        atomic.write_text(path, ''.join(json.dumps(r) + '\n' for r in keep))
      self._tb = SummaryWriter(logdir, flush_secs=30)
      self._jsonl = open(path, 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    if not self.enabled or not scalars:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')

  def write_texts(self, step: int, texts: Mapping[str, str]):
    if self.enabled:
      for k, v in texts.items():
        self._tb.add_text(k, v, step)

  def write_hparams(self, hparams: Mapping[str, object]):
    if self.enabled:
      self._tb.add_text('hparams', '\n'.join(f'    {k}: {v}' for k, v in sorted(hparams.items())), 0)

  def flush(self):
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self):
    if self.enabled:
      self.flush()
      self._tb.close()
      self._jsonl.close()
      self.enabled = False


def read_jsonl(logdir: str) -> list[dict]:
  """The rows of metrics.jsonl; a line cut short (a kill or a full disk mid-write) is skipped."""
  rows = []
  with open(os.path.join(logdir, 'metrics.jsonl')) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue
  return rows


def _hms(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


class ReportProgress:
  """Steps/s, examples/s and ETA, in the spirit of clu.periodic_actions.ReportProgress.

  The clock starts at the first `report` after the first step, so compilation does not distort
  the rate; it is reported separately as `first_step_s`.
  """

  def __init__(self, total_steps: int, examples_per_step: int, start_step: int):
    self.total, self.examples = total_steps, examples_per_step
    self.t0 = time.perf_counter()
    self.last_t, self.last_step = None, start_step
    self.first_step_s = None

  def __call__(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    if self.last_t is None:  # First report: the interval includes compilation.
      self.first_step_s = now - self.t0
      self.last_t, self.last_step = now, step
      return {}
    rate = (step - self.last_step) / max(now - self.last_t, 1e-9)
    self.last_t, self.last_step = now, step
    return {'steps_per_sec': rate, 'examples_per_sec': rate * self.examples,
            'eta_s': (self.total - step) / max(rate, 1e-9)}

  @staticmethod
  def line(step: int, total: int, scalars: Mapping[str, float]) -> str:
    parts = [f'step {step:>6d}/{total}', f"loss {scalars['train/loss']:.4f}"]
    for k in sorted(scalars):
      if k.startswith('train/accuracy/'):
        parts.append(f"acc[{k.rsplit('/', 1)[-1]}] {scalars[k]:.3f}")
    if 'train/learning_rate' in scalars:
      parts.append(f"lr {scalars['train/learning_rate']:.2e}")
    if 'perf/steps_per_sec' in scalars:
      parts.append(f"{scalars['perf/steps_per_sec']:.2f} steps/s")
      parts.append(f"{scalars['perf/examples_per_sec']:.0f} ex/s")
      parts.append(f"ETA {_hms(scalars['perf/eta_s'])}")
    return ' | '.join(parts)


class Profile:
  """Captures a jax.profiler trace (TensorBoard's profile plugin reads it) for a window of steps."""

  def __init__(self, cfg, logdir: str):
    self.enabled = bool(cfg.enabled) and jax.process_index() == 0
    self.start, self.stop = int(cfg.start_step), int(cfg.start_step) + int(cfg.num_steps)
    self.logdir, self.active = logdir, False

  def __call__(self, step: int, block_on=None):
    if not self.enabled:
      return
    if step == self.start and not self.active:
      jax.profiler.start_trace(self.logdir)
      self.active = True
    elif step >= self.stop and self.active:
      if block_on is not None:
        jax.block_until_ready(block_on)
      jax.profiler.stop_trace()
      self.active = False
      logging.info('Profile of steps %d-%d written under %s', self.start, self.stop, self.logdir)
