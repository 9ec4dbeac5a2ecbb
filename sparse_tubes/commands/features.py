"""`python -m sparse_tubes features`: per-video embeddings of a checkpoint, for retrieval,
clustering, linear probes or another model's input.

  features --workdir=DIR --split=DATASET[:SPLIT] --output=OUT_DIR [--per_view]
           [--videos_per_shard=N]
  features --workdir=DIR --input=VIDEO|FOLDER    --output=OUT_DIR [--per_view] [--dataset=NAME]
           [--fps=F] [--step=N] [--config=...]

The embedding of a video is the pooled representation the heads see (the pre-logits: class token,
mean token or MAP output, `VideoViT.representation`), computed for each eval view of the video
(`eval_temporal_views` x `eval_spatial_views` of the dataset, pre-processed exactly as evaluation
does) and averaged over its views: as `evaluate` averages logits, so a head applied to the mean
feature gives the mean of its views' logits. --per_view keeps every view's vector too.

  --split=DATASET[:SPLIT]  a dataset of the config (a prepared split; SPLIT defaults to its
                           eval_split), read through the evaluation pipeline: batches of
                           eval_batch_size views split over the devices and hosts like `evaluate`.
  --input=VIDEO|FOLDER     one video file, or every video file under a folder (recursively), decoded
                           with PyAV as `predict` does, through the head's dataset (--dataset).

OUT_DIR gets shards as they finish, `shard-00003-of-00010.npz`, each holding a run of videos, and,
when all are there, `features.npz` (all of them, in order) and `features.json` (what was run). A run
that stops resumes where it stopped: shards already written are skipped (they must be of the same
checkpoint and options, else the run stops and names the file). Arrays of features.npz:

  id        (n,) str    the dataset's video id ('video_id' or 'id'), or the file's path under FOLDER
  index     (n,) int    position in the split (or in the sorted file list)
  label     (n,) int    the split's label (-1 for files)
  features  (n, D) float32   mean over the video's views
  views     (n,) int    views averaged (those that decoded)
  with --per_view:
  view_features (m, D) float32, view_video (m,) int (row in the arrays above), view (m,) int:
            every decoded view, ordered by video then view (temporal-major, as evaluation).

Videos whose views all fail to decode are left out (features.json lists them).
"""
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sparse_tubes import atomic
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes import inference, validation
from sparse_tubes import workdir as workdir_lib
from sparse_tubes.data import pipeline, sources, video_io
from sparse_tubes.train import sharding

VIDEO_EXTENSIONS = ('.mp4', '.webm', '.mkv', '.avi', '.mov', '.m4v', '.mpg', '.mpeg', '.gif')
DEFAULT_VIDEOS_PER_SHARD = 1024


def shard_name(i: int, n: int) -> str:
  return f'shard-{i:05d}-of-{n:05d}.npz'


def views_name(ds) -> str:
  """'TxS' of a dataset's eval views ('full' for whole-video evaluation, 1 for images)."""
  if ds.kind != 'video':
    return f'1x{ds.eval_spatial_views}'
  return f"{ds.eval_temporal_views or 'full'}x{ds.eval_spatial_views}"


def parse_split(value: str, config) -> tuple[str, str]:
  """--split=DATASET[:SPLIT] -> (dataset, split)."""
  name, _, split = value.partition(':')
  if name not in config.datasets:
    raise ValueError(f'--split={value}: {name!r} is not a dataset of the config; its datasets are '
                     f'{sorted(config.datasets)} (give --split=NAME or NAME:SPLIT).')
  return name, split or config.datasets[name].eval_split


def list_videos(path: str) -> tuple[list[str], list[str]]:
  """(paths, ids) of a video file or of the video files under a folder (sorted; the id is the
  path relative to the folder)."""
  if os.path.isfile(path):
    return [path], [os.path.basename(path)]
  if not os.path.isdir(path):
    raise FileNotFoundError(f'--input={path}: no such file or folder.')
  found = []
  for root, _, files in os.walk(path):
    found += [os.path.join(root, f) for f in files if f.lower().endswith(VIDEO_EXTENSIONS)]
  if not found:
    raise FileNotFoundError(f'--input={path}: no video file ({", ".join(VIDEO_EXTENSIONS)}) under '
                            'this folder.')
  found.sort()
  return found, [os.path.relpath(p, path) for p in found]


# ----------------------------------------------------------------------------- output and resume

@dataclasses.dataclass
class Rows:
  """The features of one shard's videos, filled view by view."""
  start: int        # first video (index) of the shard
  ids: list
  labels: np.ndarray
  sums: np.ndarray | None = None
  counts: np.ndarray | None = None
  views: list | None = None   # (row, view, vector) of every view, with --per_view

  def add(self, rows: np.ndarray, view: np.ndarray, vectors: np.ndarray, per_view: bool):
    if self.sums is None:
      self.sums = np.zeros((len(self.ids), vectors.shape[-1]), np.float64)
      self.counts = np.zeros(len(self.ids), np.int64)
    np.add.at(self.sums, rows, vectors.astype(np.float64))
    np.add.at(self.counts, rows, 1)
    if per_view:
      self.views += list(zip(rows.tolist(), view.tolist(), vectors))

  def arrays(self, dim: int) -> dict:
    n = len(self.ids)
    sums = self.sums if self.sums is not None else np.zeros((n, dim))
    counts = self.counts if self.counts is not None else np.zeros(n, np.int64)
    ok = counts > 0
    out = {'id': np.array(self.ids, dtype=str)[ok], 'index': self.start + np.flatnonzero(ok),
           'label': self.labels[ok].astype(np.int64),
           'features': (sums[ok] / np.maximum(counts[ok], 1)[:, None]).astype(np.float32),
           'views': counts[ok]}
    if self.views is not None:
      keep = sorted(((r, v, x) for r, v, x in self.views if ok[r]), key=lambda t: t[:2])
      renumber = np.cumsum(ok) - 1
      out['view_features'] = (np.stack([x for *_, x in keep]).astype(np.float32) if keep
                              else np.zeros((0, dim), np.float32))
      out['view_video'] = np.array([renumber[r] for r, *_ in keep], np.int64)
      out['view'] = np.array([v for _, v, _ in keep], np.int64)
    out['failed'] = np.array([self.ids[i] for i in np.flatnonzero(~ok)], dtype=str)
    return out


def save_npz(path: str, arrays: dict) -> None:
  """Written under a temporary name, then renamed: a shard file is whole or absent."""
  with atomic.open_atomic(path, 'wb') as f:
    np.savez(f, **arrays)


def check_shard(path: str, meta: dict) -> bool:
  """True when `path` is a finished shard of this very run (skip it); False when absent."""
  if not os.path.exists(path):
    return False
  with np.load(path) as f:
    saved = json.loads(str(f['meta'])) if 'meta' in f else None
  if saved != meta:
    raise ValueError(f'{path} was written by another run ({saved}), not this one ({meta}): give '
                     'another --output, or delete the folder to start again.')
  return True


def merge(output: str, names: list[str], per_view: bool) -> dict:
  """features.npz: the shards' arrays concatenated, in order."""
  parts = [dict(np.load(os.path.join(output, n))) for n in names]
  out = {}
  keys = ['id', 'index', 'label', 'features', 'views'] + (['view_features', 'view', 'view_video']
                                                           if per_view else [])
  offset = 0
  for p in parts:
    if per_view:
      p['view_video'] = p['view_video'] + offset
    offset += len(p['id'])
  for k in keys:
    out[k] = np.concatenate([p[k] for p in parts])
  save_npz(os.path.join(output, 'features.npz'), out)
  return {'failed': [str(x) for p in parts for x in p['failed']]}


class Progress:
  """One line per shard, and a line updated in place per batch on a terminal."""

  def __init__(self, total: int):
    self.total, self.done, self.start = total, 0, time.perf_counter()
    self.live = sys.stdout.isatty()

  def batch(self, shard: str, videos: int):
    if self.live:
      print(f'\r  {shard}: {videos} videos ...', end='', flush=True)

  def shard(self, shard: str, videos: int, seconds: float, skipped: bool = False):
    self.done += videos
    rate = videos / max(seconds, 1e-9)
    what = 'present, skipped' if skipped else f'{videos} videos in {seconds:.1f} s ({rate:.1f}/s)'
    print(f'\r{shard}: {what}; {self.done}/{self.total} videos '
          f'({100 * self.done / max(self.total, 1):.0f}%)', flush=True)


# ------------------------------------------------------------------------------ a prepared split

def _features_step(graphdef):
  def step(params, batch):
    f = nnx.merge(graphdef, params).representation(batch['inputs'], train=False)
    return {**{k: v for k, v in batch.items() if k != 'inputs'},
            'features': f.astype(jnp.float32)}
  return step


def split_features(config, workdir: str, dataset: str, split: str, output: str, *,
                   step: int | None = None, per_view: bool = False,
                   videos_per_shard: int = DEFAULT_VIDEOS_PER_SHARD) -> dict:
  """Features of every video of a prepared split, in shards of `videos_per_shard` videos, every
  host running its share of each batch (like evaluate); process 0 writes."""
  validation.validate(config)
  ds = ml_collections.ConfigDict(config.datasets[dataset].to_dict())
  ds.eval_split = split
  data_dir, infos = sources.dataset_infos(config)
  if split not in infos[dataset].num_examples:
    raise ValueError(f'--split={dataset}:{split}: {ds.tfds_name} has splits '
                     f'{sorted(infos[dataset].num_examples)}.')
  num_videos = infos[dataset].num_examples[split]
  restored = ckpt_lib.restore_params(config, workdir, step)
  mesh, rules = restored.mesh, restored.rules
  fn = jax.jit(_features_step(restored.spec.graphdef), out_shardings=sharding.replicated(mesh))
  meta = {'source': f'{dataset}:{split}', 'tfds_name': ds.tfds_name, 'step': restored.step,
          'per_view': per_view, 'videos_per_shard': videos_per_shard,
          'views': views_name(ds)}
  shards = max(1, -(-num_videos // videos_per_shard))
  names = [shard_name(i, shards) for i in range(shards)]
  progress = Progress(num_videos)
  if jax.process_index() == 0:
    os.makedirs(output, exist_ok=True)
  dim = int(config.model.hidden_size)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    for i, name in enumerate(names):
      start, stop = i * videos_per_shard, min(num_videos, (i + 1) * videos_per_shard)
      path = os.path.join(output, name)
      if _agreed_present(path, meta):
        progress.shard(name, stop - start, 0.0, skipped=True)
        continue
      t0 = time.perf_counter()
      data = pipeline.eval_batches(ds, data_dir=data_dir, process_index=jax.process_index(),
                                   process_count=jax.process_count(), name=dataset,
                                   videos=(start, stop))
      rows = Rows(start, [''] * (stop - start), np.full(stop - start, -1, np.int64),
                  views=[] if per_view else None)
      for batch in data:
        out = jax.device_get(fn(restored.params, sharding.global_batch(batch, mesh, rules)))
        vid = out['video_id']
        real = (vid >= start) & (vid < stop)
        for r in np.flatnonzero(real):
          rows.ids[vid[r] - start] = pipeline.key_string(out['key'][r])
          rows.labels[vid[r] - start] = out['label'][r]
        keep = real & out['mask'].astype(bool)
        rows.add(vid[keep] - start, out['view'][keep], out['features'][keep], per_view)
        progress.batch(name, int(np.count_nonzero(rows.counts)) if rows.counts is not None else 0)
      arrays = rows.arrays(dim)
      arrays['meta'] = np.array(json.dumps(meta))
      if jax.process_index() == 0:
        save_npz(path, arrays)
      progress.shard(name, stop - start, time.perf_counter() - t0)
  summary = {**meta, 'videos': num_videos, 'shards': shards, 'dim': dim}
  if jax.process_index() == 0:
    summary.update(merge(output, names, per_view))
    _write_json(os.path.join(output, 'features.json'), summary)
  return summary


def _agreed_present(path: str, meta: dict) -> bool:
  """Whether the shard is done, as process 0 sees it: every process must run the same shards
  (each batch is a collective)."""
  present = check_shard(path, meta) if jax.process_index() == 0 else False
  if jax.process_count() == 1:
    return present
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.array(present)))


def _write_json(path: str, value: dict) -> None:
  atomic.write_text(path, json.dumps(value, indent=2))


# ---------------------------------------------------------------------------------- video files

def file_features(config, workdir: str, input_path: str, output: str, *,
                  step: int | None = None, dataset: str | None = None, fps: float | None = None,
                  per_view: bool = False, videos_per_shard: int = DEFAULT_VIDEOS_PER_SHARD) -> dict:
  """Features of a video file or of the video files under a folder (one process), through the
  eval views of the head's dataset (`dataset`, as predict chooses it)."""
  if jax.process_count() > 1:
    raise ValueError('features --input runs in one process; for many hosts prepare the videos as '
                     'a dataset and give --split.')
  paths, ids = list_videos(input_path)
  model = inference.Model(config, workdir, step=step, dataset=dataset)
  if model.ds_cfg is None or model.ds_cfg.kind != 'video':
    raise ValueError(f'--dataset={model.dataset}: features of video files need a video dataset of '
                     f'the config to take the eval views from; it has {sorted(config.datasets)}.')
  ds = model.ds_cfg
  meta = {'source': os.path.abspath(input_path), 'dataset': model.dataset, 'step': model.step,
          'per_view': per_view, 'videos_per_shard': videos_per_shard,
          'fps': inference.decode_fps(ds, fps),
          'views': views_name(ds)}
  shards = max(1, -(-len(paths) // videos_per_shard))
  names = [shard_name(i, shards) for i in range(shards)]
  os.makedirs(output, exist_ok=True)
  progress = Progress(len(paths))
  dim, failures = int(config.model.hidden_size), []
  for i, name in enumerate(names):
    start, stop = i * videos_per_shard, min(len(paths), (i + 1) * videos_per_shard)
    path = os.path.join(output, name)
    if check_shard(path, meta):
      progress.shard(name, stop - start, 0.0, skipped=True)
      continue
    t0 = time.perf_counter()
    rows = Rows(start, ids[start:stop], np.full(stop - start, -1, np.int64),
                views=[] if per_view else None)
    for r in range(stop - start):
      try:
        views = inference.video_views(paths[start + r], ds, fps=fps)
      except video_io.VideoError as e:
        failures.append({'id': ids[start + r], 'reason': e.reason, 'detail': e.detail})
        continue
      vectors = model.features(views)
      rows.add(np.full(len(views), r), np.arange(len(views)), vectors, per_view)
      progress.batch(name, r + 1)
    arrays = rows.arrays(dim)
    arrays['meta'] = np.array(json.dumps(meta))
    save_npz(path, arrays)
    progress.shard(name, stop - start, time.perf_counter() - t0)
  summary = {**meta, 'videos': len(paths), 'shards': shards, 'dim': dim}
  summary.update(merge(output, names, per_view))
  summary['failures'] = failures
  _write_json(os.path.join(output, 'features.json'), summary)
  return summary


def main(flags, args):
  from sparse_tubes.commands import config_and_workdir, need, start_distributed
  if flags.split:  # a prepared split runs on every host of a pod, like evaluate
    start_distributed(flags)
  config, workdir = config_and_workdir(flags)
  output = need(flags.output, 'output', '/tmp/features')
  per_shard = flags.videos_per_shard or DEFAULT_VIDEOS_PER_SHARD
  if bool(flags.split) == bool(flags.input):
    from absl import app
    raise app.UsageError('Give one of --split=DATASET[:SPLIT] (a prepared split) or '
                         '--input=VIDEO|FOLDER (video files).')
  if flags.split:
    dataset, split = parse_split(flags.split, config)
    summary = split_features(config, workdir, dataset, split, output, step=flags.step,
                             per_view=flags.per_view, videos_per_shard=per_shard)
  else:
    summary = file_features(config, workdir, flags.input, output, step=flags.step,
                            dataset=flags.dataset, fps=flags.fps, per_view=flags.per_view,
                            videos_per_shard=per_shard)
  if jax.process_index() == 0:
    failed = summary.get('failed', [])
    print(f"Features of {summary['videos'] - len(failed)} videos ({summary['dim']} dims, "
          f"{summary['views']} views averaged, checkpoint step {summary['step']}) in "
          f"{os.path.join(output, 'features.npz')}"
          + (f'; {len(failed)} failed to decode (features.json)' if failed else ''), flush=True)
