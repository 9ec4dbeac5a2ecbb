"""Multi-view evaluation: T temporal clips x S spatial crops per video, logits averaged per video
(ViViT/TubeViT evaluate with 4x3 views, TimeSformer base with 1x3). The training loop keeps an
`Evaluator` for periodic evaluation; the `evaluate` command builds one for a checkpoint."""
import jax
import numpy as np
from absl import logging
from flax import nnx

from sparse_tubes.data import pipeline
from sparse_tubes.train import sharding, step as step_lib


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  k = min(k, logits.shape[-1])
  top = np.argsort(-logits, axis=-1)[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def evaluate_dataset(eval_step, params, ds_cfg, *, data_dir, mesh, rules, num_videos: int,
                     name: str = ''):
  """Runs every view and averages the logits of each video's views."""
  sums, counts, labels = None, np.zeros(num_videos, np.int64), np.full(num_videos, -1, np.int64)
  views = 0
  data = pipeline.eval_batches(ds_cfg, data_dir=data_dir, process_index=jax.process_index(),
                               process_count=jax.process_count(), name=name)
  for batch in data:
    out = jax.device_get(eval_step(params, sharding.global_batch(batch, mesh, rules)))
    keep = out['mask'].astype(bool)
    logits, vid = out['logits'][keep], out['video_id'][keep]
    if sums is None:
      sums = np.zeros((num_videos, logits.shape[-1]), np.float64)
    np.add.at(sums, vid, logits)
    np.add.at(counts, vid, 1)
    labels[vid] = out['label'][keep]
    views += int(keep.sum())
  seen = counts > 0
  if not seen.any():
    raise RuntimeError(f'No eval views were produced for {ds_cfg.tfds_name}:{ds_cfg.eval_split}.')
  mean = sums[seen] / counts[seen, None]
  return {'top1': topk_accuracy(mean, labels[seen], 1), 'top5': topk_accuracy(mean, labels[seen], 5),
          'num_videos': int(seen.sum()), 'num_views': views,
          'views_per_video': f'{ds_cfg.eval_temporal_views}x{ds_cfg.eval_spatial_views}'
                             if ds_cfg.kind == 'video' else f'1x{ds_cfg.eval_spatial_views}',
          'skipped_corrupt': data.stats.skipped}


class Evaluator:
  """Compiled eval steps for the datasets of `config.eval_datasets` (all by default)."""

  def __init__(self, config, spec, mesh, rules, data_dir: str, infos: dict):
    self.config, self.mesh, self.rules, self.data_dir, self.infos = config, mesh, rules, data_dir, infos
    self.names = list(config.eval_datasets) or sorted(config.datasets)
    self.steps = {n: jax.jit(step_lib.make_eval_step(spec.graphdef, n),
                             out_shardings=sharding.replicated(mesh)) for n in self.names}

  def __call__(self, params) -> dict:
    results = {}
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      for name in self.names:
        ds = self.config.datasets[name]
        res = evaluate_dataset(self.steps[name], params, ds, data_dir=self.data_dir, mesh=self.mesh,
                               rules=self.rules, num_videos=self.infos[name].num_examples[ds.eval_split],
                               name=name)
        res['num_classes'] = self.infos[name].num_classes
        results[name] = res
        logging.info('eval %s: %s', name, res)
    return results

  @staticmethod
  def scalars(results: dict) -> dict:
    out = {}
    for name, r in results.items():
      out[f'eval/top1/{name}'], out[f'eval/top5/{name}'] = r['top1'], r['top5']
    return out
