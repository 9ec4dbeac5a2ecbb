"""Accuracy against views, from one pass (`evaluate --view_grid`).

Papers quote one view grid (ViViT and TubeViT 4x3, TimeSformer 1x3); serving wants the whole
trade-off. For a dataset evaluated with T temporal x S spatial views, this pass gives top-1, top-5
and mean per-class accuracy for every sub-grid t x s (1 <= t <= T, 1 <= s <= S) with its cost,
t * s x the GFLOPs of one view.

Which views a sub-grid uses. A t x s sub-grid is exactly what `evaluate` computes with
eval_temporal_views=t and eval_spatial_views=s: its clips are the t evenly spread clips of the data
pipeline (the centre clip for t = 1, the first and last for t = 2, ...), its crops the s evenly
spread crops (the centre crop for s = 1, the two ends for s = 2, ...). These are not subsets of the
T x S views: with T = 4 the clips start at 0, 1/3, 2/3 and 1 of the video's free range, the single
clip at 1/2. So the pass runs every distinct view the sub-grids need, once: a clip position is
identified by its fraction of the free range (i / (t - 1) for clip i of t; the centre clip of t = 1,
which rounds down, by itself), a crop position likewise. T = 4 needs 6 clip positions (1/2
rounded down, 0, 1, 1/2, 1/3, 2/3), S = 3 four crop positions: 24 views per video for all twelve
sub-grids, where twelve separate evaluations would run 60 and the 4x3 evaluation alone 12. For
segment sampling (SSv2) clip i of t takes the frame at (i + 0.5) / t of each segment. Each
sub-grid's scores are summed in the order `evaluate` sums them, so its numbers equal those of a
separate evaluation at that grid (tests/test_view_grid.py checks every sub-grid).

Whole-video evaluation (eval_temporal_views=0) has no sub-grids and is refused. Every host runs
its share of the views and gets every view's logits (as in multiview.py); the per-view logits
are kept on the host, float32, videos x clip positions x crop positions x classes.
"""
import dataclasses
import fractions
import math
import os

import grain
import jax
import numpy as np

from sparse_tubes import atomic
from sparse_tubes.data import pipeline, transforms
from sparse_tubes.models import costs
from sparse_tubes.multiview import Predictions, class_table, softmax, topk_accuracy
from sparse_tubes.train import sharding


@dataclasses.dataclass(frozen=True)
class Positions:
  """The distinct view positions of one axis (clips or crops) that the sub-grids 1..n need."""
  members: tuple       # per position: the ((views, index), ...) that sample it
  slot: dict           # (views, index) -> position

  def __len__(self):
    return len(self.members)

  def of(self, views: int) -> list[int]:
    """The positions of the `views`-view sub-grid, in view order."""
    return [self.slot[(views, i)] for i in range(views)]


def positions(n: int, centre_rounds_down: bool, *, segment: bool = False) -> Positions:
  """Groups the (views, index) of grids 1..n by where they sample. stride clips and crops:
  index i of v views sits at i / (v - 1) of the free range (np.linspace), one view at the centre
  rounded down (its own position: it differs from 1/2 rounded by one when the range is odd);
  segment clips: at (i + 0.5) / v of each segment."""
  groups = {}
  for v in range(1, n + 1):
    for i in range(v):
      if segment:
        key = fractions.Fraction(2 * i + 1, 2 * v)
      elif v == 1 and centre_rounds_down:
        key = 'centre'
      else:
        key = fractions.Fraction(i, v - 1)
      groups.setdefault(key, []).append((v, i))
  members = tuple(tuple(g) for g in groups.values())
  return Positions(members, {m: p for p, g in enumerate(members) for m in g})


@dataclasses.dataclass(frozen=True)
class Plan:
  temporal: Positions
  spatial: Positions

  @property
  def views_per_video(self) -> int:
    return len(self.temporal) * len(self.spatial)


def plan(ds_cfg, *, name: str = '') -> Plan:
  video = ds_cfg.kind == 'video'
  if video and ds_cfg.eval_temporal_views == 0:
    raise ValueError(
        f'--view_grid: config.datasets.{name or "<name>"}.eval_temporal_views=0 evaluates whole '
        'videos, which have no sub-grids: give it the largest grid to study, e.g. '
        f'--config.datasets.{name or "<name>"}.eval_temporal_views=4.')
  t = int(ds_cfg.eval_temporal_views) if video else 1
  return Plan(positions(t, True, segment=video and ds_cfg.sampling == 'segment'),
              positions(int(ds_cfg.eval_spatial_views), True))


def _same(parts, what: str, where: str):
  """Views grouped into one position must sample the same pixels. They do for every grid up to 12
  views over free ranges up to 3000 frames or pixels (checked exhaustively); this guards the
  rest."""
  if any(not np.array_equal(parts[0], p) for p in parts[1:]):
    raise RuntimeError(f'{where}: {what} that --view_grid takes as one position differ; evaluate '
                       'the larger grids separately.')


@dataclasses.dataclass(frozen=True)
class _GridView(grain.transforms.Map):
  """View index -> one decoded view: video index // views_per_video, then clip position, then
  crop position; indices past the end are padding (mask False)."""
  spec: object          # pipeline.Spec
  source: object
  stats: pipeline.DataStats
  plan: Plan

  def map(self, index):
    s, p = self.spec, self.plan
    shape = ((s.num_frames,) if s.kind == 'video' else ()) + (s.crop_size, s.crop_size, 3)
    out = {'inputs': np.zeros(shape, np.uint8), 'label': np.int32(0), 'video_id': np.int32(-1),
           'view': np.int32(0), 'mask': np.False_, 'key': np.zeros(pipeline.KEY_BYTES, np.uint8)}
    video_id, view = divmod(int(index), p.views_per_video)
    if video_id >= len(self.source):
      return out
    clip, crop = divmod(view, len(p.spatial))
    element = self.source[video_id]
    out.update(label=np.int32(element['label']), video_id=np.int32(video_id), view=np.int32(view),
               key=pipeline.example_key(element))
    where = f'{s.tfds_name}:{s.split} video {video_id}'
    try:
      if s.kind == 'video':
        n = len(element['video'])
        if n == 0:
          raise transforms.DecodeError('video has no frames')
        # The frames each member grid samples here: pipeline.frame_indices, the eval's own rule.
        picks = [pipeline.frame_indices(
            dataclasses.replace(s, temporal_views=v), n, None, i) for v, i in p.temporal.members[clip]]
        _same(picks, 'clips', where)
        frames = transforms.EncodedClip(element['video'], picks[0]).decode()
      else:
        frames = transforms.EncodedClip(element['image']).decode()
    except transforms.DecodeError as e:
      pipeline.warn_corrupt(s, element, e)
      self.stats.add(1)
      return out
    crops = [transforms.eval_spatial(frames, min_resize=s.min_resize, crop_size=s.crop_size,
                                     view=i, num_views=v) for v, i in p.spatial.members[crop]]
    _same(crops, 'crops', where)
    out.update(inputs=crops[0] if s.kind == 'video' else crops[0][0], mask=np.True_)
    return out


def grid_batches(ds_cfg, plan_: Plan, *, data_dir: str, process_index: int, process_count: int,
                 read_threads: int = 4, name: str = ''):
  """(batches, num_videos, stats): this host's share of every video's grid views, padded so
  every host yields the same number of full batches (as pipeline.eval_batches)."""
  pipeline.validate(ds_cfg, name=name, process_count=process_count)
  spec = pipeline.Spec.from_config(ds_cfg, ds_cfg.eval_split)
  source = pipeline.data_source(ds_cfg, data_dir, ds_cfg.eval_split, name=name)
  local_batch = ds_cfg.eval_batch_size // process_count
  total = len(source) * plan_.views_per_video
  padded = math.ceil(total / (local_batch * process_count)) * local_batch * process_count
  stats = pipeline.DataStats()
  ds = grain.MapDataset.range(padded)[process_index::process_count]
  ds = ds.map(_GridView(spec, source, stats, plan_))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=2 * local_batch))
  ds = ds.batch(local_batch).map(pipeline.Normalize(spec.normalization))
  return ds, len(source), stats


def gflops_per_view(config, name: str, num_classes: int) -> float:
  """Forward GFLOPs of one view (models/costs.py's closed form: multiply-adds, the papers'
  convention)."""
  ds = config.datasets[name]
  return costs.analytic_macs(config.model, costs.input_shape(ds), num_classes)['total'] / 1e9


def evaluate_grid(eval_step, params, ds_cfg, *, data_dir, mesh, rules, name: str = '',
                  gflops: float = 0.0, with_predictions: bool = False):
  """Runs every view position of the grid once; returns {'grid': [one row per sub-grid], ...}
  (and {(t, s): Predictions} when `with_predictions`)."""
  p = plan(ds_cfg, name=name)
  data, num_videos, _ = grid_batches(ds_cfg, p, data_dir=data_dir, name=name,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  nt, ns = len(p.temporal), len(p.spatial)
  logits = ok = None
  labels = np.full(num_videos, -1, np.int64)
  keys = np.zeros((num_videos, pipeline.KEY_BYTES), np.uint8)
  seen = np.zeros((num_videos, nt * ns), np.int64)
  for batch in data:
    out = jax.device_get(eval_step(params, sharding.global_batch(batch, mesh, rules)))
    if logits is None:
      logits = np.zeros((num_videos, nt * ns, out['logits'].shape[-1]), np.float32)
      ok = np.zeros((num_videos, nt * ns), bool)
    real = out['video_id'] >= 0
    vid, view = out['video_id'][real], out['view'][real]
    np.add.at(seen, (vid, view), 1)
    keep = out['mask'].astype(bool)
    logits[out['video_id'][keep], out['view'][keep]] = out['logits'][keep]
    ok[out['video_id'][keep], out['view'][keep]] = True
    labels[vid], keys[vid] = out['label'][real], out['key'][real]
  where = f'{ds_cfg.tfds_name}:{ds_cfg.eval_split}'
  if logits is None or np.any(seen != 1):
    raise RuntimeError(f'{where}: --view_grid did not see every view exactly once.')
  logits = logits.reshape(num_videos, nt, ns, -1)
  ok = ok.reshape(num_videos, nt, ns)
  aggregation = ds_cfg.eval_aggregation
  t_max = int(ds_cfg.eval_temporal_views) if ds_cfg.kind == 'video' else 1
  rows, preds = [], {}
  for t in range(1, t_max + 1):
    for s in range(1, int(ds_cfg.eval_spatial_views) + 1):
      # Summed view by view, temporal-major, in float64: the order multiview.evaluate_dataset
      # adds a video's views in, so the scores are bit for bit a separate evaluation's.
      sums = np.zeros((num_videos, logits.shape[-1]), np.float64)
      counts = np.zeros(num_videos, np.int64)
      view_correct = view_count = 0
      for a in p.temporal.of(t):
        for b in p.spatial.of(s):
          x = logits[:, a, b].astype(np.float64)
          good = ok[:, a, b]
          sums[good] += softmax(x[good]) if aggregation == 'mean_softmax' else x[good]
          counts += good
          view_correct += int((np.argmax(x[good], -1) == labels[good]).sum())
          view_count += int(good.sum())
      have = counts > 0
      pred = Predictions(index=np.flatnonzero(have),
                         key=[pipeline.key_string(k) for k in keys[have]], label=labels[have],
                         scores=(sums[have] / counts[have, None]).astype(np.float32),
                         aggregation=aggregation)
      per_class, correct, _ = class_table(pred, logits.shape[-1])
      present = per_class > 0
      rows.append({
          'temporal_views': t, 'spatial_views': s, 'views': t * s,
          'gflops_per_video': gflops * t * s,
          'top1': topk_accuracy(pred.scores, pred.label, 1),
          'top5': topk_accuracy(pred.scores, pred.label, 5),
          'view_top1': view_correct / max(view_count, 1),
          'mean_class_accuracy': float(np.mean(correct[present] / per_class[present])),
          'num_videos': int(have.sum())})
      preds[(t, s)] = pred
  result = {'max_grid': f'{t_max}x{ds_cfg.eval_spatial_views}', 'aggregation': aggregation,
            'gflops_per_view': gflops, 'views_run_per_video': p.views_per_video,
            'clip_positions': len(p.temporal), 'crop_positions': len(p.spatial),
            'split_size': num_videos, 'grid': rows}
  return (result, preds) if with_predictions else result


def table(name: str, result: dict) -> str:
  """The grid as printed text: one row per sub-grid."""
  run = result['views_run_per_video']
  lines = [f"{name}: accuracy against views ({run} view{'s' if run > 1 else ''} run per video "
           f"for every sub-grid of {result['max_grid']}; {result['gflops_per_view']:.3g} GFLOPs "
           'per view)',
           f"{'views':>7} {'GFLOPs/video':>13} {'top-1':>7} {'top-5':>7} {'class-mean':>11}"]
  for r in result['grid']:
    lines.append(f"{r['temporal_views']}x{r['spatial_views']:<5} {r['gflops_per_video']:>13.3g} "
                 f"{100 * r['top1']:>6.1f}% {100 * r['top5']:>6.1f}% "
                 f"{100 * r['mean_class_accuracy']:>10.1f}%")
  return '\n'.join(lines)


def plot(result: dict, path: str, title: str) -> str:
  """Top-1 against GFLOPs per video, one line per spatial view count, each point labelled t x s;
  '' without matplotlib (optional, as for the confusion PNG)."""
  try:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
  except ImportError:
    return ''
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for s in sorted({r['spatial_views'] for r in result['grid']}):
    rows = [r for r in result['grid'] if r['spatial_views'] == s]
    x = [r['gflops_per_video'] for r in rows]
    y = [100 * r['top1'] for r in rows]
    ax.plot(x, y, marker='o', label=f'{s} crop{"s" if s > 1 else ""}')
    for r, xi, yi in zip(rows, x, y):
      ax.annotate(f"{r['temporal_views']}x{s}", (xi, yi), textcoords='offset points',
                  xytext=(4, 4), fontsize=8)
  ax.set_xscale('log')
  ax.set_xlabel('GFLOPs per video')
  ax.set_ylabel('top-1 (%)')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  with atomic.open_atomic(path, 'wb') as f:
    fig.savefig(f, dpi=100, format='png')
  plt.close(fig)
  return os.path.abspath(path)
