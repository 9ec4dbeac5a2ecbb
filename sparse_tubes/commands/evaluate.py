"""`python -m sparse_tubes evaluate`: multi-view evaluation (multiview.py) of a workdir's
checkpoints on every dataset of `config.eval_datasets`, each head on its own dataset.

  evaluate --workdir=DIR [--config=...] [--checkpoint=latest|STEP|all|watch] [--force]
           [--watch_timeout=S] [--save_predictions=FILE.npz] [--params=auto|ema|raw]
           [--view_grid] [--reference_ids=FILE]

  latest  the newest checkpoint (default; --step=N is the same as --checkpoint=N)
  STEP    that step
  all     every checkpoint, oldest first; steps whose results are already on disk are skipped
          (--force evaluates them again)
  watch   a continuous evaluator beside a training job (another process, slice or machine reading
          the same workdir): evaluates each checkpoint once Orbax has finalized it (a save in
          progress is a temporary directory until it is renamed), skips a checkpoint that keep-N
          deleted before it was read, and exits once the final step (config.total_steps or
          num_epochs) is evaluated, or after --watch_timeout seconds without a new checkpoint.

Per checkpoint and dataset, in DIR/eval/:
  <dataset>_<split>_step<N>.json          the results (top-1/top-5 over videos and single views,
                                          mean per-class accuracy, videos and views counted,
                                          corrupt videos)
  <dataset>_<split>_step<N>_classes.csv   class, name, videos, top-1
  <dataset>_<split>_step<N>_confusion.png (<= 100 classes; needs matplotlib) or
  <dataset>_<split>_step<N>_confused.csv  the most-confused (label, predicted) pairs
and TensorBoard scalars in DIR/tensorboard/eval at the checkpoint's step; DIR/eval_results.json
holds the last evaluation's summary. Every file is written whole or not at all (atomic.py): a result
that does not parse (a kill mid-write by an older version) is evaluated again, not skipped. One
`evaluate` per workdir and dataset at a time (WORKDIR/evaluate_<dataset>.lock, like train.lock):
a second one says which process holds it. A workdir that does not exist is an error, never created.

docs/evaluation_extras.md describes these options:
  --params=auto|ema|raw   auto (default): the parameters' moving average when the checkpoint has
                          one (config.ema_decay), else the weights; ema: the average (an error
                          without one); raw: the weights. The results say which ('params').
  --view_grid             also, from one more pass, every sub-grid t x s of the dataset's views
                          (view_grid.py): <dataset>_<split>_step<N>_views.json and _views.png
                          (top-1, top-5, mean per-class against GFLOPs per video)
  --reference_ids=FILE    the ids of an official split (one per line, or an official Kinetics CSV):
                          accuracy on the videos evaluated here AND listed, the count of listed
                          ones missing; <...>_reference_ids.txt (the ids evaluated) and
                          <...>_reference_missing.txt
"""
import contextlib
import csv
import json
import os
import time

import jax
from jax.experimental import multihost_utils
import numpy as np
from flax import nnx

from sparse_tubes import atomic
from sparse_tubes import config as config_lib
from sparse_tubes import validation
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes import multiview
from sparse_tubes import view_grid as view_grid_lib
from sparse_tubes.data import sources
from sparse_tubes.multiview import CONFUSION_PNG_MAX_CLASSES, Evaluator, class_table
from sparse_tubes.train import metrics, workdir_lock

MODES = ('latest', 'all', 'watch')


def eval_dir(workdir: str) -> str:
  return os.path.join(workdir, 'eval')


def result_path(workdir: str, dataset: str, split: str, step: int, suffix: str = '.json') -> str:
  return os.path.join(eval_dir(workdir), f'{dataset}_{split}_step{step}{suffix}')


finalized_steps = ckpt_lib.finalized_steps


def _complete(path: str) -> bool:
  """Whether a result JSON is there and parses (not one a kill cut short)."""
  try:
    with open(path) as f:
      json.load(f)
    return True
  except (OSError, ValueError):
    return False


def _agreed(steps: list[int]) -> list[int]:
  """Process 0's list of steps, on every process: all of them must evaluate the same checkpoints
  (each evaluation is a collective), whatever each one saw of the file system."""
  if jax.process_count() == 1:
    return steps
  buf = np.full(256, -1, np.int64)
  buf[:len(steps[:256])] = steps[:256]
  return [int(s) for s in multihost_utils.broadcast_one_to_all(buf) if s != -1]


def parse_checkpoint(value: str | None, step: int | None = None) -> str | int:
  """--checkpoint (and the older --step) -> 'latest' | 'all' | 'watch' | a step."""
  if step is not None:
    if value not in (None, 'latest', str(step)):
      raise ValueError(f'--step={step} and --checkpoint={value} disagree: give one of them.')
    return int(step)
  value = value or 'latest'
  if value in MODES:
    return value
  if value.isdigit():
    return int(value)
  raise ValueError(f'--checkpoint={value!r}: use latest, all, watch or a step number.')


class _Run:
  """One workdir's evaluation: the compiled Evaluator (built once), the writers, the files."""

  def __init__(self, config, workdir: str, save_predictions: str | None, *, params: str = 'auto',
               view_grid: bool = False, reference_ids: str | None = None):
    validation.validate(config)
    self.config, self.workdir, self.save_predictions = config, workdir, save_predictions
    if params not in ckpt_lib.PARAMS:
      raise ValueError(f'--params={params}: use one of {", ".join(ckpt_lib.PARAMS)}.')
    self.params, self.view_grid = params, view_grid
    # Bad options fail here, before anything is restored or compiled.
    self.reference = (reference_ids, multiview.read_reference_ids(reference_ids)) \
        if reference_ids else None
    if view_grid:
      for n in list(config.eval_datasets) or sorted(config.datasets):
        view_grid_lib.plan(config.datasets[n], name=n)
    self.data_dir, self.infos = sources.dataset_infos(config)
    self.classes = sources.num_classes(config, self.infos)
    self.evaluator = None
    self._writer = None  # Created with the first result: a typo'd --workdir stays uncreated.

  @property
  def writer(self) -> metrics.MetricWriter:
    if self._writer is None:
      self._writer = metrics.MetricWriter(os.path.join(self.workdir, 'tensorboard', 'eval'))
    return self._writer

  def final_step(self) -> int:
    return config_lib.total_steps(self.config, {
        n: i.num_examples[self.config.datasets[n].train_split] for n, i in self.infos.items()})

  def done(self, step: int) -> bool:
    names = list(self.config.eval_datasets) or sorted(self.config.datasets)
    return all(_complete(result_path(self.workdir, n, self.config.datasets[n].eval_split, step))
               for n in names)

  def __call__(self, step: int | None) -> dict:
    restored = ckpt_lib.restore_params(self.config, self.workdir, step, self.classes, self.params)
    if self.evaluator is None:  # compiled once, for every checkpoint of the run
      self.evaluator = Evaluator(self.config, restored.spec, restored.mesh, restored.rules,
                                 self.data_dir, self.infos)
    results, predictions = self.evaluator(restored.params, with_predictions=True)
    step = restored.step
    evaluated = {}
    if self.reference:
      path, ids = self.reference
      for name, res in results.items():
        res['reference'], evaluated[name] = multiview.reference_results(
            predictions[name], ids, res['num_classes'])
        res['reference']['file'] = os.path.abspath(path)
        split = res['split']
        res['reference']['ids_file'] = os.path.abspath(
            result_path(self.workdir, name, split, step, '_reference_ids.txt'))
        res['reference']['missing_file'] = os.path.abspath(
            result_path(self.workdir, name, split, step, '_reference_missing.txt'))
    if self.view_grid:
      self._view_grids(restored, results)
    summary = {'step': step, 'params': restored.kind, 'checkpoint_dir': restored.directory,
               'tensorboard_dir': os.path.abspath(self.writer.logdir),
               'eval_dir': os.path.abspath(eval_dir(self.workdir)), 'datasets': results}
    self.writer.write_scalars(step, Evaluator.scalars(results))
    self.writer.flush()
    if jax.process_index() == 0:
      self._write(step, summary, predictions, evaluated)
    return summary

  def _view_grids(self, restored, results: dict):
    """`--view_grid`: one more pass per dataset, over every view position of its sub-grids."""
    ev = self.evaluator
    with jax.set_mesh(ev.mesh), nnx.logical_axis_rules(ev.rules):
      for name, res in results.items():
        res['view_grid'] = view_grid_lib.evaluate_grid(
            ev.steps[name], restored.params, self.config.datasets[name], data_dir=self.data_dir,
            mesh=ev.mesh, rules=ev.rules, name=name,
            gflops=view_grid_lib.gflops_per_view(self.config, name, res['num_classes']))

  def _write(self, step: int, summary: dict, predictions: dict, evaluated: dict):
    os.makedirs(eval_dir(self.workdir), exist_ok=True)
    for name, res in summary['datasets'].items():
      pred, names = predictions[name], self.infos[name].class_names
      split = res['split']
      if 'reference' in res:  # the ids evaluated, and the listed ones this copy lacks
        done = set(evaluated[name])
        atomic.write_text(res['reference']['ids_file'], ''.join(f'{i}\n' for i in evaluated[name]))
        atomic.write_text(res['reference']['missing_file'],
                          ''.join(f'{i}\n' for i in self.reference[1] if i not in done))
      if 'view_grid' in res:
        grid = res['view_grid']
        grid['plot'] = view_grid_lib.plot(
            grid, result_path(self.workdir, name, split, step, '_views.png'),
            f'{name} ({split}), step {step}, {summary["params"]} params')
        atomic.write_text(result_path(self.workdir, name, split, step, '_views.json'),
                          json.dumps({'step': step, 'dataset': name, 'split': split,
                                      'params': summary['params'], **grid}, indent=2))
      count, correct, confusion = class_table(pred, res['num_classes'])
      with atomic.open_atomic(result_path(self.workdir, name, split, step, '_classes.csv'),
                              newline='') as f:
        w = csv.writer(f)
        w.writerow(['class', 'name', 'videos', 'top1'])
        for c in range(res['num_classes']):
          w.writerow([c, names[c], int(count[c]), f'{correct[c] / count[c]:.4f}' if count[c] else ''])
      res = dict(res)
      if res['num_classes'] <= CONFUSION_PNG_MAX_CLASSES:
        res['confusion_png'] = _confusion_png(
            confusion, names, result_path(self.workdir, name, split, step, '_confusion.png'),
            f'{name} ({split}), step {step}')
      else:
        with atomic.open_atomic(result_path(self.workdir, name, split, step, '_confused.csv'),
                                newline='') as f:
          w = csv.writer(f)
          w.writerow(['label', 'predicted', 'videos'])
          w.writerows([p['label'], p['predicted'], p['videos']] for p in res['most_confused'])
      atomic.write_text(result_path(self.workdir, name, split, step),
                        json.dumps({'step': step, 'dataset': name, 'params': summary['params'],
                                    **res}, indent=2))
    atomic.write_text(os.path.join(self.workdir, 'eval_results.json'), json.dumps(summary, indent=2))
    if self.save_predictions:
      save_predictions(self.save_predictions, predictions, step)

  def close(self):
    if self._writer is not None:
      self._writer.close()


def _confusion_png(confusion: np.ndarray, names, path: str, title: str) -> str:
  """The confusion matrix (rows: label, columns: predicted) as a PNG; '' without matplotlib."""
  try:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
  except ImportError:
    return ''  # optional: pip install matplotlib (in the `test` extra)
  n = len(confusion)
  size = min(4 + 0.25 * n, 30)
  fig, ax = plt.subplots(figsize=(size, size))
  ax.imshow(confusion, cmap='Blues')
  ticks = np.arange(n)
  ax.set_xticks(ticks, [str(s) for s in names], rotation=90, fontsize=max(4, 10 - n // 15))
  ax.set_yticks(ticks, [str(s) for s in names], fontsize=max(4, 10 - n // 15))
  ax.set_xlabel('predicted')
  ax.set_ylabel('label')
  ax.set_title(title)
  fig.tight_layout()
  with atomic.open_atomic(path, 'wb') as f:
    fig.savefig(f, dpi=80, format='png')
  plt.close(fig)
  return os.path.abspath(path)


def save_predictions(path: str, predictions: dict, step: int) -> str:
  """Per-video aggregated scores of each dataset, for error analysis and ensembling: an .npz with,
  per dataset D, D/index (position in the split), D/id (the dataset's video id), D/label and
  D/scores (videos, classes: mean logits or mean softmax, D/aggregation says). With several
  checkpoints (all, watch) the step goes into the name: FILE_step<N>.npz."""
  arrays = {}
  for name, p in predictions.items():
    arrays.update({f'{name}/index': p.index, f'{name}/id': np.array(p.key), f'{name}/label': p.label,
                   f'{name}/scores': p.scores, f'{name}/aggregation': np.array(p.aggregation)})
  arrays['step'] = np.array(step)
  path = path if path.endswith('.npz') else path + '.npz'  # What np.savez(path) would write.
  with atomic.open_atomic(path, 'wb') as f:
    np.savez(f, **arrays)
  return path


def _check_workdir(workdir: str) -> None:
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'--workdir={workdir} does not exist: give the workdir `train` or '
                            '`convert` wrote.')


@contextlib.contextmanager
def _locked(config, workdir: str):
  """The evaluate lock of every dataset this run evaluates (workdir_lock.eval_lock), in name
  order (two evaluators with overlapping datasets cannot each hold one and wait for the other)."""
  names = sorted(config.eval_datasets or config.datasets)
  with contextlib.ExitStack() as stack:
    for name in names:
      stack.enter_context(workdir_lock.hold(workdir, name=workdir_lock.eval_lock(name),
                                            command=f'evaluate (dataset {name})'))
    yield


def evaluate(config, workdir: str, *, step: int | None = None,
             save_predictions: str | None = None, params: str = 'auto', view_grid: bool = False,
             reference_ids: str | None = None) -> dict:
  """Evaluates the latest (or given) checkpoint on every dataset of `config.eval_datasets`."""
  _check_workdir(workdir)
  with _locked(config, workdir):
    job = _Run(config, workdir, save_predictions, params=params, view_grid=view_grid,
               reference_ids=reference_ids)
    try:
      return job(step)
    finally:
      job.close()


def evaluate_checkpoints(config, workdir: str, checkpoint: str | int = 'latest', *,
                         force: bool = False, watch_timeout: float = 3600.0,
                         poll_s: float = 5.0, save_predictions: str | None = None,
                         on_result=None, **extras) -> list[dict]:
  """--checkpoint=latest|STEP|all|watch; returns the summaries of the checkpoints evaluated, oldest
  first, and hands each to `on_result` as it is done (the command prints its table)."""
  if checkpoint not in MODES and not isinstance(checkpoint, int):
    checkpoint = parse_checkpoint(str(checkpoint))
  _check_workdir(workdir)
  with _locked(config, workdir):
    return _evaluate_checkpoints(config, workdir, checkpoint, force=force,
                                 watch_timeout=watch_timeout, poll_s=poll_s,
                                 save_predictions=save_predictions, on_result=on_result,
                                 **extras)


def _evaluate_checkpoints(config, workdir, checkpoint, *, force, watch_timeout, poll_s,
                          save_predictions, on_result, **extras) -> list[dict]:
  """extras: params, view_grid, reference_ids (as `evaluate`)."""
  job = _Run(config, workdir, None, **extras)
  summaries = []

  def one(step):
    if save_predictions and checkpoint in ('all', 'watch'):
      root, ext = os.path.splitext(save_predictions)
      job.save_predictions = f'{root}_step{step}{ext or ".npz"}'
    else:
      job.save_predictions = save_predictions
    summary = job(step)
    summaries.append(summary)
    if on_result:
      on_result(summary)

  try:
    if checkpoint == 'latest' or isinstance(checkpoint, int):
      one(None if checkpoint == 'latest' else checkpoint)
    elif checkpoint == 'all':
      steps = finalized_steps(workdir)
      if not steps:
        ckpt_lib.restore_params(config, workdir)  # raises the "Train first" error
      todo = _agreed([s for s in steps if force or not job.done(s)])
      for s in steps:
        if s not in todo:
          print(f'step {s}: already evaluated ({eval_dir(workdir)}); --force evaluates it again',
                flush=True)
      for s in todo:
        _guarded(one, s, workdir)
    else:
      _watch(job, one, workdir, force=force, timeout=watch_timeout, poll_s=poll_s)
  finally:
    job.close()
  return summaries


def _guarded(one, step: int, workdir: str) -> bool:
  """Evaluates `step`; a checkpoint deleted meanwhile (keep-N) is skipped with a line."""
  try:
    one(step)
    return True
  except Exception:  # noqa: BLE001 - re-raised unless the checkpoint is gone
    # A deletion in progress may still show the step for a moment: look again before failing.
    for _ in range(3):
      if step not in finalized_steps(workdir):
        break
      time.sleep(1.0)
    else:
      raise
    print(f'step {step}: checkpoint deleted before it could be evaluated (the training keeps '
          f'config.keep_checkpoints); skipped', flush=True)
    return False


def _watch(job: _Run, one, workdir: str, *, force: bool, timeout: float, poll_s: float):
  final = job.final_step()
  seen, last_new = set(), time.monotonic()
  print(f'Watching {ckpt_lib.checkpoint_dir(workdir)} until step {final} (or {timeout:.0f} s without a '
        'new checkpoint)', flush=True)
  while True:
    new = [s for s in finalized_steps(workdir) if s not in seen]
    # -s - 2 marks a step already evaluated (its results on disk): seen, not evaluated again.
    new = _agreed([s if force or not job.done(s) else -s - 2 for s in new])
    if new:
      last_new = time.monotonic()
    # Oldest first: keep-N deletes the oldest, so one may go while an earlier one is evaluated;
    # _guarded then skips it.
    for s in new:
      if s < -1:
        s = -s - 2
        print(f'step {s}: already evaluated; skipped', flush=True)
      else:
        _guarded(one, s, workdir)
      seen.add(s)
      if s >= final:
        print(f'Evaluated the final step {final}; done.', flush=True)
        return
    if time.monotonic() - last_new > timeout:
      print(f'No new checkpoint for {timeout:.0f} s (--watch_timeout); stopping.', flush=True)
      return
    time.sleep(poll_s)


def results_table(summary: dict) -> str:
  rows = [('dataset', 'top-1', 'top-5', 'view top-1', 'class-mean', 'chance', 'videos', 'views')]
  for name, r in summary['datasets'].items():
    videos = f"{r['num_videos']}/{r['split_size']}" + (
        f" ({r['corrupt_videos']} corrupt)" if r['corrupt_videos'] else '')
    rows.append((name, f"{100 * r['top1']:.1f}%", f"{100 * r['top5']:.1f}%",
                 f"{100 * r['view_top1']:.1f}%", f"{100 * r['mean_class_accuracy']:.1f}%",
                 f"{100 / r['num_classes']:.1f}%", videos,
                 f"{r['num_views']} ({r['views_per_video']}, {r['aggregation']})"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  fmt = lambda row: '  '.join(c.ljust(w) for c, w in zip(row, widths))
  which = ' (the moving average of the parameters)' if summary.get('params') == 'ema' else ''
  lines = [f"Evaluation of step {summary['step']}{which}", fmt(rows[0]),
           fmt(['-' * w for w in widths])]
  lines += [fmt(r) for r in rows[1:]]
  for name, r in summary['datasets'].items():
    ref = r.get('reference')
    if ref:
      acc = (f"top-1 {100 * ref['top1']:.1f}%, top-5 {100 * ref['top5']:.1f}%, class-mean "
             f"{100 * ref['mean_class_accuracy']:.1f}%" if ref['evaluated'] else 'no video')
      lines.append(f"{name} on the reference list ({ref['reference_ids']} ids): {acc} over "
                   f"{ref['evaluated']} videos; {ref['missing']} missing "
                   f"({100 * ref['missing_fraction']:.1f}%), {ref['not_in_reference']} evaluated "
                   'videos not on the list')
    if r.get('view_grid'):
      lines.append(view_grid_lib.table(name, r['view_grid']))
  lines += [f"checkpoints: {summary['checkpoint_dir']}",
            f"results:     {summary['eval_dir']}",
            f"tensorboard: {summary['tensorboard_dir']}  (tensorboard --logdir <that>)"]
  return '\n'.join(lines)


def main(flags, args):
  from absl import app
  from sparse_tubes.commands import config_and_workdir, start_distributed
  start_distributed(flags)
  config, workdir = config_and_workdir(flags)
  try:
    checkpoint = parse_checkpoint(flags.checkpoint, flags.step)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  try:
    evaluate_checkpoints(config, workdir, checkpoint, force=flags.force,
                         watch_timeout=flags.watch_timeout, save_predictions=flags.save_predictions,
                         on_result=lambda s: print(results_table(s), flush=True),
                         params=flags.params, view_grid=flags.view_grid,
                         reference_ids=flags.reference_ids)
  except (ckpt_lib.CheckpointError, FileNotFoundError, ValueError,
          workdir_lock.WorkdirLocked) as e:
    raise SystemExit(f'Error: {e}') from None
