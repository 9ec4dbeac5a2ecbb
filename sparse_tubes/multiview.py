"""Multi-view evaluation: T temporal clips x S spatial crops per video (or, with
eval_temporal_views=0, non-overlapping clips over the whole video), the views' logits (or softmax,
`eval_aggregation`) averaged per video. ViViT and TubeViT evaluate with 4x3 views, TimeSformer base
with 1x3 (Bertasius et al. 2021, Table 3 and §4). The training loop keeps an `Evaluator` for
periodic evaluation; the `evaluate` command builds one for its checkpoints.

Every host computes every view's logits (the eval step's outputs are replicated) and aggregates
them itself, so the numbers do not depend on the batch size, the number of devices or processes.
Each view is counted once: a view seen twice, or one missing (other than those of videos that
failed to decode), is an error, not a number.
"""
import dataclasses
import os

import jax
import numpy as np
from absl import logging
from flax import nnx

from sparse_tubes.data import pipeline
from sparse_tubes.train import sharding, step as step_lib

CONFUSION_PNG_MAX_CLASSES = 100  # larger datasets get a table of the most-confused pairs
CONFUSED_PAIRS = 20


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """(n,) bool: the label is among the k highest scores (ties broken by the lower index)."""
  k = min(k, scores.shape[-1])
  top = np.argsort(-scores, axis=-1, kind='stable')[:, :k]
  return np.any(top == labels[:, None], axis=-1)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  return float(np.mean(topk_correct(logits, labels, k)))


def softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@dataclasses.dataclass
class Predictions:
  """Per-video results of one dataset: the aggregated scores of the videos evaluated (those with
  at least one decoded view), by their index in the split."""
  index: np.ndarray    # (n,) position in the split
  key: list            # (n,) the dataset's id of each video ('video_id' or 'id')
  label: np.ndarray    # (n,)
  scores: np.ndarray   # (n, classes) mean logits or mean softmax, as `aggregation` says
  aggregation: str


def class_table(pred: Predictions, num_classes: int):
  """Per-class video counts and top-1 correct counts, and the confusion matrix (label, predicted)."""
  predicted = np.argmax(pred.scores, -1)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (pred.label, predicted), 1)
  return confusion.sum(1), np.diag(confusion), confusion


def most_confused(confusion: np.ndarray, names, n: int = CONFUSED_PAIRS) -> list[dict]:
  """The n largest off-diagonal entries of the confusion matrix, as (label, predicted, videos)."""
  off = confusion * (1 - np.eye(len(confusion), dtype=np.int64))
  order = np.argsort(-off, axis=None, kind='stable')[:n]
  return [{'label': names[i], 'predicted': names[j], 'videos': int(off[i, j])}
          for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j] > 0]


def read_reference_ids(path: str) -> list[str]:
  """`evaluate --reference_ids=FILE`: the video ids of an official split, one per line (blank
  lines and '#' comments skipped), or an official Kinetics CSV (header label,youtube_id,
  time_start,time_end,split), whose rows name clips as the Kinetics builder does
  (youtube_id_start_end). Duplicates count once; the order is kept."""
  import csv
  from sparse_tubes.data import kinetics
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--reference_ids={path}: no such file (give one video id per line).')
  with open(path, newline='') as f:
    text = f.read()
  lines = [l.strip() for l in text.splitlines()]
  header = lines[0].split(',') if lines else []
  if {'youtube_id', 'time_start', 'time_end'} <= set(header):
    ids = [kinetics.clip_name(r['youtube_id'], r['time_start'], r['time_end'])
           for r in csv.DictReader(text.splitlines())]
  else:
    ids = [l for l in lines if l and not l.startswith('#')]
  if not ids:
    raise ValueError(f'--reference_ids={path} lists no video ids (one id per line).')
  return list(dict.fromkeys(ids))


def reference_results(pred: Predictions, ids: list[str], num_classes: int) -> tuple[dict, list]:
  """Accuracy on the videos both evaluated here and named by the reference list `ids` (so two
  copies of a dataset, each missing other videos, compare like for like); returns (results, the
  ids evaluated, in the reference's order). `missing`: reference ids this evaluation has no
  score for (absent from the split, or no view decoded); `not_in_reference`: videos evaluated here
  that the list leaves out (not counted)."""
  row = {k: i for i, k in enumerate(pred.key)}
  common = [i for i in ids if i in row]
  out = {'reference_ids': len(ids), 'evaluated': len(common), 'missing': len(ids) - len(common),
         'missing_fraction': (len(ids) - len(common)) / len(ids),
         'not_in_reference': len(set(row) - set(ids))}
  if common:
    rows = np.array([row[i] for i in common])
    sub = dataclasses.replace(pred, index=pred.index[rows], key=common, label=pred.label[rows],
                              scores=pred.scores[rows])
    per_class, correct, _ = class_table(sub, num_classes)
    present = per_class > 0
    out.update(top1=topk_accuracy(sub.scores, sub.label, 1),
               top5=topk_accuracy(sub.scores, sub.label, 5),
               mean_class_accuracy=float(np.mean(correct[present] / per_class[present])))
  return out, common


def evaluate_dataset(eval_step, params, ds_cfg, *, data_dir, mesh, rules, num_videos: int,
                     name: str = '', with_predictions: bool = False, class_names=None):
  """Runs every view of the split and aggregates them per video; returns the results dict (and the
  `Predictions` when `with_predictions`)."""
  data = pipeline.eval_batches(ds_cfg, data_dir=data_dir, process_index=jax.process_index(),
                               process_count=jax.process_count(), name=name)
  expected = np.broadcast_to(np.asarray(data.views_per_video, np.int64), (data.num_videos,))
  aggregation = ds_cfg.eval_aggregation
  sums, counts = None, np.zeros(num_videos, np.int64)
  labels = np.full(num_videos, -1, np.int64)
  keys = np.zeros((num_videos, pipeline.KEY_BYTES), np.uint8)
  corrupt_views = np.zeros(num_videos, np.int64)
  view_top1 = view_top5 = 0
  for batch in data:
    out = jax.device_get(eval_step(params, sharding.global_batch(batch, mesh, rules)))
    keep = out['mask'].astype(bool)
    failed = ~keep & (out['video_id'] >= 0)  # views of videos that did not decode
    np.add.at(corrupt_views, out['video_id'][failed], 1)
    vid, label = out['video_id'][keep], out['label'][keep]
    logits = out['logits'][keep].astype(np.float64)
    if sums is None:
      sums = np.zeros((num_videos, out['logits'].shape[-1]), np.float64)
    np.add.at(sums, vid, softmax(logits) if aggregation == 'mean_softmax' else logits)
    np.add.at(counts, vid, 1)
    labels[out['video_id'][out['video_id'] >= 0]] = out['label'][out['video_id'] >= 0]
    keys[out['video_id'][out['video_id'] >= 0]] = out['key'][out['video_id'] >= 0]
    view_top1 += int(topk_correct(logits, label, 1).sum())
    view_top5 += int(topk_correct(logits, label, 5).sum())

  where = f'{ds_cfg.tfds_name}:{ds_cfg.eval_split}'
  seen = counts + corrupt_views
  if np.any(seen > expected):
    v = int(np.argmax(seen > expected))
    raise RuntimeError(f'{where}: video {v} got {seen[v]} views, expected {expected[v]}: views were '
                       'counted twice.')
  if np.any(seen < expected):
    v = int(np.argmax(seen < expected))
    raise RuntimeError(f'{where}: video {v} got {seen[v]} of its {expected[v]} views: views were '
                       'dropped.')
  ok = counts > 0
  if not ok.any():
    raise RuntimeError(f'No eval view of {where} could be decoded.')
  pred = Predictions(index=np.flatnonzero(ok), key=[pipeline.key_string(k) for k in keys[ok]],
                     label=labels[ok], scores=(sums[ok] / counts[ok, None]).astype(np.float32),
                     aggregation=aggregation)
  corrupt = np.flatnonzero(corrupt_views > 0)
  n_views = int(counts.sum())
  per_class, correct, confusion = class_table(pred, sums.shape[-1])
  names = class_names or [str(c) for c in range(sums.shape[-1])]
  present = per_class > 0
  if ds_cfg.kind != 'video':
    views = f'1x{ds_cfg.eval_spatial_views}'
  elif ds_cfg.eval_temporal_views == 0:
    views = f'full({expected.min()}-{expected.max()} views)x{ds_cfg.eval_spatial_views}'
  else:
    views = f'{ds_cfg.eval_temporal_views}x{ds_cfg.eval_spatial_views}'
  result = {
      'top1': topk_accuracy(pred.scores, pred.label, 1),
      'top5': topk_accuracy(pred.scores, pred.label, 5),
      'view_top1': view_top1 / n_views, 'view_top5': view_top5 / n_views,
      'mean_class_accuracy': float(np.mean(correct[present] / per_class[present])),
      'num_videos': int(ok.sum()), 'num_views': n_views, 'split_size': int(data.num_videos),
      'views_per_video': views, 'aggregation': aggregation,
      # Videos with a view that failed to decode: those with no decoded view are not counted above.
      'corrupt_videos': int(len(corrupt)),
      'corrupt': [{'index': int(i), 'id': pipeline.key_string(keys[i]),
                   'views_failed': int(corrupt_views[i])} for i in corrupt],
      'most_confused': most_confused(confusion, names),
  }
  return (result, pred) if with_predictions else result


class Evaluator:
  """Compiled eval steps for the datasets of `config.eval_datasets` (all by default): each head is
  evaluated on its own dataset."""

  def __init__(self, config, spec, mesh, rules, data_dir: str, infos: dict):
    self.config, self.mesh, self.rules, self.data_dir, self.infos = config, mesh, rules, data_dir, infos
    self.names = list(config.eval_datasets) or sorted(config.datasets)
    self.steps = {n: jax.jit(step_lib.make_eval_step(spec.graphdef, n),
                             out_shardings=sharding.replicated(mesh)) for n in self.names}

  def __call__(self, params, *, with_predictions: bool = False):
    """{dataset: results}; with `with_predictions`, also {dataset: Predictions}."""
    results, predictions = {}, {}
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      for name in self.names:
        ds = self.config.datasets[name]
        res, pred = evaluate_dataset(
            self.steps[name], params, ds, data_dir=self.data_dir, mesh=self.mesh, rules=self.rules,
            num_videos=self.infos[name].num_examples[ds.eval_split], name=name,
            with_predictions=True, class_names=self.infos[name].class_names)
        res['num_classes'] = self.infos[name].num_classes
        res['split'] = ds.eval_split
        results[name], predictions[name] = res, pred
        logging.info('eval %s: %s', name, res)
    return (results, predictions) if with_predictions else results

  @staticmethod
  def scalars(results: dict) -> dict:
    out = {}
    for name, r in results.items():
      out[f'eval/top1/{name}'], out[f'eval/top5/{name}'] = r['top1'], r['top5']
      out[f'eval/view_top1/{name}'] = r['view_top1']
      out[f'eval/mean_class_accuracy/{name}'] = r['mean_class_accuracy']
    return out
