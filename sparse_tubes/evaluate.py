"""`python -m sparse_tubes evaluate`: multi-view evaluation of a checkpoint (evaluator.py) on every
dataset of `config.eval_datasets`; results go to WORKDIR/eval_results.json and TensorBoard."""
import json
import os

import jax

from sparse_tubes import config as config_lib
from sparse_tubes import run
from sparse_tubes.evaluator import Evaluator
from sparse_tubes.train import metrics


def evaluate(config, workdir: str, *, step: int | None = None) -> dict:
  """Evaluates the latest (or given) checkpoint on every dataset of `config.eval_datasets`."""
  config_lib.validate(config)
  data_dir, infos = run.dataset_infos(config)
  restored = run.restore_params(config, workdir, step, run.num_classes(config, infos))
  step = restored.step

  results = Evaluator(config, restored.spec, restored.mesh, restored.rules, data_dir,
                      infos)(restored.params)
  writer = metrics.MetricWriter(os.path.join(workdir, 'tensorboard'))
  writer.write_scalars(step, Evaluator.scalars(results))
  writer.close()
  summary = {'step': step, 'checkpoint_dir': restored.directory,
             'tensorboard_dir': os.path.join(os.path.abspath(workdir), 'tensorboard'),
             'datasets': results}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'eval_results.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  return summary


def results_table(summary: dict) -> str:
  rows = [('dataset', 'top-1', 'top-5', 'chance', 'videos', 'views (TxS)')]
  for name, r in summary['datasets'].items():
    rows.append((name, f"{100 * r['top1']:.1f}%", f"{100 * r['top5']:.1f}%",
                 f"{100 / r['num_classes']:.1f}%", str(r['num_videos']), r['views_per_video']))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  fmt = lambda row: '  '.join(c.ljust(w) for c, w in zip(row, widths))
  lines = [f"Evaluation of step {summary['step']}", fmt(rows[0]), fmt(['-' * w for w in widths])]
  lines += [fmt(r) for r in rows[1:]]
  lines += [f"checkpoints: {summary['checkpoint_dir']}",
            f"tensorboard: {summary['tensorboard_dir']}  (tensorboard --logdir <that>)"]
  return '\n'.join(lines)
