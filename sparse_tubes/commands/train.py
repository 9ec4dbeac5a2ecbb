"""`train`: the training loop. Data -> the jitted step (train/step.py:build) -> metrics,
checkpoints, resumption, preemption, periodic evaluation.

  python -m sparse_tubes train --config=CONFIG.py[:arg] --workdir=DIR [--config.field=value]
"""
import contextlib
import os
import re
import sys

import jax
from absl import logging
from clu import parameter_overview
from flax import nnx

from sparse_tubes import config as config_lib
from sparse_tubes import validation
from sparse_tubes import distributed
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes.data import sources
from sparse_tubes import workdir as workdir_lib
from sparse_tubes.multiview import Evaluator
from sparse_tubes.pretrained import init as init_lib
from sparse_tubes.train import metrics, nonfinite, preemption, prefetch, sharding
from sparse_tubes.train import state as state_lib
from sparse_tubes.train import step as step_lib, workdir_lock


def _size(tree, name: str) -> int:
  node = tree
  for part in name.split('/'):
    node = node[int(part) if part.isdigit() and int(part) in node else part]
  return int(node.size)


def _print(line: str):
  """Progress lines and results: printed by process 0 only (the others would repeat them); every
  process logs its own warnings and errors, with its index (distributed.prefix_logs)."""
  if jax.process_index() == 0:
    print(line, flush=True)


def _group(names) -> str:
  """'encoder/blocks/0 (12 arrays), ..., tokenizer/convs/3/kernel' for the log."""
  groups = {}
  for n in names:
    m = re.match(r'((?:spatial_|temporal_)?encoder/blocks/\d+)/', n)
    key = m.group(1) if m else n
    groups[key] = groups.get(key, 0) + 1
  return ', '.join(f'{k} ({v} arrays)' if v > 1 else k for k, v in groups.items())


def train(config, workdir: str, *, stop_after_steps: int | None = None) -> dict:
  """Trains until `config.total_steps` (or until `stop_after_steps` more steps, which tests use to
  simulate a job that stops). Resumes from the latest readable checkpoint in `workdir`, which it
  holds alone (workdir_lock) for the whole run. Raises nonfinite.NonFiniteError when the loss
  diverges (config.on_nonfinite)."""
  validation.validate(config)
  with workdir_lock.hold(workdir):
    return _train(config, workdir, stop_after_steps)


def _train(config, workdir: str, stop_after_steps: int | None) -> dict:
  init_lib.validate(config)
  if jax.process_count() > 1:
    distributed.prefix_logs()  # Also when jax.distributed was started by the caller.
  # The config the checkpoints were trained with is a contract: a change they cannot resume with
  # stops here, before anything is restored or written (config.json stays as it was).
  changes = workdir_lib.check_resume(config, workdir, ckpt_lib.finalized_steps(workdir), log=_print)
  mesh, rules = sharding.mesh_and_rules(config)
  data_dir, infos = sources.dataset_infos(config)
  num_classes = sources.num_classes(config, infos)
  total_steps = config_lib.total_steps(
      config, {n: i.num_examples[config.datasets[n].train_split] for n, i in infos.items()})
  os.makedirs(workdir, exist_ok=True)

  program = step_lib.build(config, num_classes, mesh, rules, total_steps)
  spec, tx, frozen = program.spec, program.tx, program.frozen
  if jax.process_index() == 0:  # The full parameter table, for reading after the fact.
    with open(os.path.join(workdir, 'parameters.txt'), 'w') as f:
      f.write(parameter_overview.get_parameter_overview(spec.abstract_params, include_stats=False))
  _print(f'{config.model.name}: {state_lib.param_count(spec.abstract_params):,} parameters; '
         f'mesh {dict(mesh.shape)}; {total_steps} steps; workdir {os.path.abspath(workdir)}')
  if frozen:
    n_frozen = sum(_size(spec.abstract_params, n) for n in frozen)
    line = (f'Frozen (config.freeze): {len(frozen)} parameter arrays, {n_frozen:,} of '
            f'{state_lib.param_count(spec.abstract_params):,} parameters: ' + _group(frozen))
    logging.info(line)
    _print(line)

  iterators = sources.train_iterators(config, data_dir)

  ckpt = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints,
                                 use_async=config.async_checkpoints)
  try:
    start, state = ckpt.restore_latest(program.abstract_state(mesh), iterators, log=_print)
  except BaseException:
    ckpt.close()
    raise
  if start is not None:
    _print(f'Resuming from step {start} in {ckpt.directory}')
  else:
    start = 0
    state = program.init_state(config, num_classes, mesh)
    state['params'], report = init_lib.apply(config, state['params'], spec.param_shardings)
    if program.ema:  # The average starts at the weights training starts from.
      state['ema'] = state_lib.fresh_ema(state['params'])
    for line in report:
      logging.info(line)
      _print(line)

  try:
    ckpt.check_space(state)  # A full or read-only disk says so now, not at the first save.
  except ckpt_lib.StorageError:
    ckpt.close()
    raise
  # Written once the checkpoints are known to fit this config and the disk to take new ones (a
  # refused run leaves config.json as it was).
  workdir_lib.save_workdir(config, workdir, command='train')
  workdir_lib.record_changes(workdir, start, changes)
  # Rows of the steps after `start` (an interrupted run's) are dropped: they are done again.
  writer = metrics.MetricWriter(os.path.join(workdir, 'tensorboard'), resume_step=start)
  if start == 0:
    writer.write_hparams({k: str(v) for k, v in config.items()})
  examples = sum(ds.batch_size for ds in config.datasets.values())
  progress = metrics.ReportProgress(total_steps, examples, start)
  profile = metrics.Profile(config.profile, os.path.join(workdir, 'tensorboard'))
  evaluator = None
  if config.eval_every_steps:
    evaluator = Evaluator(config, spec, mesh, rules, data_dir, infos)
  # Ctrl-C and SIGTERM save and stop from here on; a second Ctrl-C drops the save in progress.
  guard = preemption.PreemptionGuard(on_abort=ckpt.discard_partial)
  pending, last = [], {}
  watch, stop = nonfinite.Watch(config.on_nonfinite, config.max_nonfinite_skips), ''

  def drain():
    """Fetches, writes and checks the metrics of the steps since the last call."""
    nonlocal pending, last, stop
    if pending:
      rows = jax.device_get(pending)
      for s, m in rows:
        writer.write_scalars(s, m)
      last, pending = {k: float(v) for k, v in rows[-1][1].items()}, []
      stop = stop or watch.check(rows)
  end = total_steps if stop_after_steps is None else min(total_steps, start + stop_after_steps)
  step = start
  train_step = None

  # The next batches are read and sent to the devices while a step runs; checkpoints save the
  # iterators' positions as of the batches taken (feed.positions()), not their live state.
  feed = prefetch.Prefetcher(iterators, lambda b: sharding.global_batch(b, mesh, rules),
                             size=config.prefetch_batches, limit=max(end - step, 0))
  with _closed_on_error(guard, writer, ckpt), feed, jax.set_mesh(mesh), \
      nnx.logical_axis_rules(rules):
    while step < end:
      profile(step, block_on=state)
      batch = next(feed)
      if train_step is None:  # Compiled once, for the batches the feed gives.
        train_step = program.compile(state, batch)
      state, step_metrics = train_step(state, batch)
      step += 1
      pending.append((step, step_metrics))  # Fetched at log time: no host sync every step.
      ckpt.poll()  # A background save that failed stops the run now (StorageError).

      if step % config.log_every_steps == 0 or step == end:
        drain()
        perf = {f'perf/{k}': v for k, v in progress(step).items()}
        if config.on_nonfinite == 'skip':
          perf['train/skipped_total'] = watch.skipped
        writer.write_scalars(step, perf)
        writer.flush()  # Every log line is on disk: a killed run keeps its history.
        line = metrics.ReportProgress.line(step, total_steps, {**last, **perf})
        logging.info(line)
        _print(line)
        if stop:
          break

      if evaluator and (step % config.eval_every_steps == 0 or step == total_steps):
        scalars = evaluator.scalars(evaluator(state['params']))
        writer.write_scalars(step, scalars)
        _print(f'eval at step {step}: ' + ', '.join(f'{k} {v:.3f}' for k, v in scalars.items()))

      preempted = guard.reached(step)
      if step % config.checkpoint_every_steps == 0 or step == total_steps or preempted:
        drain()  # Never save past a non-finite step, nor non-finite parameters.
        if not stop and not ckpt_lib.all_finite(state['params']):
          stop = f'step {step}: the parameters hold NaN or Inf'
        if stop:
          break
        ckpt.save(step, state, feed.positions(), force=preempted)
        writer.flush()
      if preempted:
        if guard.interrupted:
          _print(f'Interrupted (Ctrl-C) at step {step}: checkpoint saved in {ckpt.directory}; '
                 '`train` again resumes here.')
        else:
          _print(f'Stopped by preemption at step {step}; the next `train` resumes here.')
        break

  drain()  # Steps after the last log line (a preemption) are written too.
  try:
    ckpt.close()  # Waits for the last save: StorageError if it failed.
  finally:
    guard.restore_handler()
    writer.close()
  summary = {'step': step, 'first_step_s': progress.first_step_s,
             'interrupted': guard.interrupted, **last}
  if stop:
    good = ckpt.latest_step()
    raise nonfinite.NonFiniteError(
        f'Training stopped at {stop}. The last good checkpoint is '
        + (f'step {good} in {ckpt.directory}' if good is not None else 'none (no step was saved)')
        + "; no checkpoint after it was saved. Lower config.optimizer.learning_rate (or check the "
        "data), or set config.on_nonfinite='skip', and train again: it resumes from there.")
  return summary


@contextlib.contextmanager
def _closed_on_error(guard, writer, ckpt):
  """On an error (or a KeyboardInterrupt) in the loop: the signal handlers back, the metrics
  flushed, the checkpoint manager closed in order (left open, its event loop prints "Event loop is
  closed" tracebacks at exit). The error itself goes on."""
  try:
    yield
  except BaseException:
    guard.restore_handler()
    with contextlib.suppress(Exception):
      writer.close()
    with contextlib.suppress(Exception):
      ckpt.close()
    raise


def main(flags, args):
  from sparse_tubes.commands import config_and_workdir, start_distributed
  start_distributed(flags)
  config, workdir = config_and_workdir(flags)
  config, target = workdir_lib.train_target(config, workdir)
  if target != workdir:
    print(f'{workdir} holds a converted checkpoint: training from it '
          f'(config.init_from.kind=checkpoint) into {target}', flush=True)
    workdir = target
  try:
    summary = train(config, workdir)
  except ckpt_lib.StorageError as e:
    # One line, then out at once: Orbax threads waiting on a directory that was never created
    # would hold the exit for minutes (their 300 s timeout).
    print(f'Error: {e}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
  except (nonfinite.NonFiniteError, workdir_lock.WorkdirLocked, ckpt_lib.CheckpointError,
          workdir_lib.ConfigMismatch) as e:
    raise SystemExit(f'Error: {e}') from None  # One line and a non-zero exit code.
  except KeyboardInterrupt:  # Before the loop took over Ctrl-C: nothing new was saved.
    print('Interrupted (Ctrl-C) before training started; no checkpoint was written.',
          file=sys.stderr, flush=True)
    raise SystemExit(preemption.INTERRUPTED_EXIT) from None
  if summary.get('interrupted'):
    raise SystemExit(preemption.INTERRUPTED_EXIT)
  print(f"Trained to step {summary['step']}; checkpoints in {os.path.join(workdir, 'checkpoints')}",
        flush=True)
