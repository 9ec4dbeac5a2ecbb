"""The machinery of `prepare` (prepare.py): a TFDS builder base for video releases, decoding in
work shards that survive an interruption, and the report of unusable videos.

The dataset builders (kinetics.py, ssv2.py) subclass `VideoBuilder` and say where their release
keeps its videos and labels (`list_videos`); everything else is here. prepare.py's docstring
describes the two phases and the files written; with `beam` set, the builder hands TFDS one Beam
transform per split instead (data/beam.py) and writes the same report from the pipeline's summaries.
"""
import abc
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from sparse_tubes import compat
from sparse_tubes.data import builtin
from sparse_tubes.data.video_io import Video, decode_shard, read_shard

VIDEO_EXTENSIONS = ('.mp4', '.webm', '.mkv', '.avi', '.mov')
REPORT_NAME = 'prepare_report.json'


# ------------------------------------------------------------------------------------ configs

def config_name(fps: float | None, short_side: int | None) -> str:
  f = 'native' if not fps else f'{fps:g}fps'
  return f'{f}_{short_side}px' if short_side else f'{f}_nativepx'


def parse_config_name(name: str) -> tuple[float | None, int | None]:
  m = re.fullmatch(r'(?:native|(\d+(?:\.\d+)?)fps)_(?:nativepx|(\d+)px)', name)
  if not m:
    raise ValueError(f'Config {name!r} is not of the form NAMEfps_SIZEpx, e.g. 25fps_256px, '
                     f'10fps_128px or native_256px.')
  return (float(m[1]) if m[1] else None), (int(m[2]) if m[2] else None)


@dataclasses.dataclass
class VideoConfig(tfds.core.BuilderConfig):
  fps: float | None = 25.0        # None: every decoded frame, at the source rate
  short_side: int | None = 256    # None: keep the decoded size
  jpeg_quality: int = 90
  min_fraction: float = 0.5       # decoded span below this fraction of the declared one: truncated


def make_config(fps, short_side, **kw) -> VideoConfig:
  return VideoConfig(name=config_name(fps, short_side), fps=fps, short_side=short_side,
                     description=f'frames at {fps or "the source"} fps, short side '
                                 f'{short_side or "as decoded"}, JPEG', **kw)


# ------------------------------------------------------------------------ listing the release

def index_files(root: str, extensions=VIDEO_EXTENSIONS) -> dict[str, str]:
  """File stem -> path for every video file anywhere under `root` (the first one found wins)."""
  found = {}
  if _remote(root):
    for path in sorted(_remote_files(root)):
      stem, ext = os.path.splitext(os.path.basename(path))
      if ext.lower() in extensions:
        found.setdefault(stem, path)
    return found
  stack = [root]
  while stack:
    with os.scandir(stack.pop()) as it:
      for entry in it:
        if entry.is_dir(follow_symlinks=True):
          stack.append(entry.path)
        else:
          stem, ext = os.path.splitext(entry.name)
          if ext.lower() in extensions:
            found.setdefault(stem, entry.path)
  return found


def find_file(root: str, name: str, prefer=('annotations', 'labels')) -> str | None:
  """`name` under `root`: directly, in one of the `prefer` subfolders, or anywhere below."""
  if _remote(root):
    found = {p for p in _remote_files(root) if os.path.basename(p) == name}
    for sub in ('',) + prefer:
      if os.path.join(root, sub, name) in found:
        return os.path.join(root, sub, name)
    return min(found, default=None)
  for sub in ('',) + prefer:
    p = os.path.join(root, sub, name)
    if os.path.isfile(p):
      return p
  for dirpath, _, files in os.walk(root, followlinks=True):
    if name in files:
      return os.path.join(dirpath, name)
  return None


def _remote(path) -> bool:
  # gs://, s3://, hdfs://: a release or data_dir a Beam runner's workers read (data/beam.py).
  return '://' in os.fspath(path)


def _remote_files(root):
  from sparse_tubes.data import beam  # pylint: disable=g-import-not-at-top
  return beam.remote_files(root)


def open_text(path: str):
  """An annotation file for reading as text, local or (on Beam) gs://..."""
  if not _remote(path):
    return open(path, newline='', encoding='utf-8')
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  return io.TextIOWrapper(FileSystems.open(path), encoding='utf-8', newline='')


# ------------------------------------------------------------------------- phase 1: work shards

def _shard_paths(work_dir, split, index, count):
  base = os.path.join(work_dir, f'{split}-{index:05d}-of-{count:05d}')
  return base + '.array_record', base + '.json'


class Progress:
  """One line with done/total, rate and ETA; rewritten in place on a terminal, else every 10 s."""

  def __init__(self, title, total, done=0, stream=None):
    self.title, self.total, self.done, self.failed = title, total, done, 0
    self.start_done, self.start = done, time.perf_counter()
    self.stream = stream or sys.stdout
    self.tty = self.stream.isatty()
    self.last = 0.0

  def line(self):
    elapsed = time.perf_counter() - self.start
    rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
    eta = (self.total - self.done) / rate if rate > 0 else float('nan')
    pct = 100 * self.done / max(self.total, 1)
    eta_s = '?' if np.isnan(eta) else time.strftime('%H:%M:%S', time.gmtime(eta))
    return (f'{self.title}: {self.done}/{self.total} videos ({pct:.1f}%), {rate:.1f} videos/s, '
            f'ETA {eta_s}, {self.failed} unusable')

  def update(self, videos, failed, force=False):
    self.done += videos
    self.failed += failed
    now = time.perf_counter()
    if self.tty:
      print('\r' + self.line(), end='', file=self.stream, flush=True)
    elif force or now - self.last >= 10:
      print(self.line(), file=self.stream, flush=True)
      self.last = now

  def close(self):
    if self.tty:
      print(file=self.stream, flush=True)
    else:
      print(self.line(), file=self.stream, flush=True)


def _interrupted(title, progress):
  print(f'\n{title}: interrupted; {progress.done}/{progress.total} videos are in finished shards. '
        f'Run the same command again to continue from there.', flush=True)


def decode_splits(splits: dict, work_dir: str, cfg: dict, *, workers: int, videos_per_shard: int,
                  title: str) -> dict:
  """Phase 1: every split's videos into work shards, skipping finished ones.

  Returns {split: [data paths in order]}. KeyboardInterrupt stops the workers and propagates; the
  finished shards stay for the next run."""
  os.makedirs(work_dir, exist_ok=True)
  # Shards are only reusable with the same decoding settings and the same video lists.
  fingerprint = {**cfg, 'videos_per_shard': videos_per_shard,
                 'lists': {s: hashlib.sha1(repr([(v.index, v.video_id, v.label, v.path)
                                                 for v in vs]).encode()).hexdigest()
                           for s, vs in sorted(splits.items())}}
  params = os.path.join(work_dir, 'params.json')
  if os.path.exists(params):
    with open(params) as f:
      if json.load(f) != fingerprint:
        print(f'{title}: settings or annotations changed since the last run; decoding afresh.')
        shutil.rmtree(work_dir)
        os.makedirs(work_dir)
  with open(params, 'w') as f:
    json.dump(fingerprint, f)

  paths, tasks, total, done = {}, [], 0, 0
  for split, videos in splits.items():
    count = max(1, -(-len(videos) // videos_per_shard))
    paths[split] = []
    for i in range(count):
      data_path, json_path = _shard_paths(work_dir, split, i, count)
      paths[split].append(data_path)
      chunk = videos[i * videos_per_shard:(i + 1) * videos_per_shard]
      total += len(chunk)
      if os.path.exists(json_path) and os.path.exists(data_path):
        done += len(chunk)
      else:
        tasks.append((chunk, data_path, json_path, cfg))
  print(f'{title}: {total} videos in {sum(map(len, paths.values()))} work shards; '
        f'{len(tasks)} to decode with {workers} worker(s), {done} videos already done.', flush=True)
  progress = Progress(title, total, done)
  if not tasks:
    return paths
  if workers <= 1:
    try:
      for task in tasks:
        s = decode_shard(task)
        progress.update(s['videos'], len(s['failures']))
    except BaseException:
      _interrupted(title, progress)
      raise
    progress.close()
    return paths
  # spawn: workers start clean (no inherited threads or locks) and import only video_io's needs.
  pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(tasks)),
                                                mp_context=multiprocessing.get_context('spawn'))
  try:
    futures = [pool.submit(decode_shard, t) for t in tasks]
    for future in concurrent.futures.as_completed(futures):
      s = future.result()
      progress.update(s['videos'], len(s['failures']))
  except BaseException:
    pool.shutdown(wait=False, cancel_futures=True)
    _interrupted(title, progress)
    raise
  pool.shutdown()
  progress.close()
  return paths


def read_sidecars(work_dir: str, splits) -> dict:
  """{split: [summary of each finished work shard]} from phase 1's JSON sidecars."""
  out = {}
  for split in splits:
    out[split] = []
    for name in sorted(os.listdir(work_dir)):
      if name.startswith(f'{split}-') and name.endswith('.json'):
        with open(os.path.join(work_dir, name)) as f:
          out[split].append(json.load(f))
  return out


def make_report(title: str, summaries: dict) -> dict:
  """The prepare report from {split: [summary]} (a summary: videos, written, frames, failures),
  from local work shards or from a Beam pipeline alike."""
  report = {'dataset': title, 'splits': {}, 'failures': []}
  for split, split_summaries in summaries.items():
    counts = {'videos': 0, 'written': 0, 'frames': 0, 'unusable': 0, 'reasons': {}}
    for s in split_summaries:
      for k in ('videos', 'written', 'frames'):
        counts[k] += s[k]
      for failure in s['failures']:
        counts['unusable'] += 1
        counts['reasons'][failure['reason']] = counts['reasons'].get(failure['reason'], 0) + 1
        report['failures'].append({'split': split, **failure})
    report['splits'][split] = counts
  return report


# --------------------------------------------------------------------------- the TFDS builders

class VideoBuilder(builtin.Builder):
  """Base of the Kinetics and SSv2 builders: subclasses say where the videos and labels are."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: JPEG frames, resampled and resized by PyAV.'}
  BUILDER_CONFIGS = [make_config(25.0, 256)]
  HOMEPAGE = ''

  # Set by `run` (or by hand before download_and_prepare).
  workers: int | None = None
  videos_per_shard: int = 16
  keep_work: bool = False
  beam: bool = False   # decode on Apache Beam (data/beam.py); run() passes the runner to TFDS

  @abc.abstractmethod
  def list_videos(self, manual_dir: str) -> tuple[list[str], dict[str, list[Video]]]:
    """(class names in label order, {split: videos}) from the release under manual_dir; each
    dataset's builder (kinetics.py, ssv2.py) says where its release keeps them."""

  def _info(self):
    video = builtin.video_features(None)
    features = tfds.features.FeaturesDict({
        **dict(video.items()),
        'video_id': tfds.features.Text(doc='The id in the release (file name without extension).'),
        'fps': tfds.features.Scalar(np.float32, doc='Frame rate of the stored frames.'),
        'source_fps': tfds.features.Scalar(np.float32, doc='Average frame rate of the source.'),
        'duration': tfds.features.Scalar(np.float32, doc='Seconds the decoded source spans.'),
    })
    return self.dataset_info_from_configs(features=features, homepage=self.HOMEPAGE,
                                          supervised_keys=None)

  @property
  def title(self) -> str:
    return f'{self.name}/{self.builder_config.name}'

  @property
  def config_dir(self) -> str:
    return os.path.join(os.fspath(self.data_dir_root), self.name, self.builder_config.name)

  @property
  def work_dir(self) -> str:
    return os.path.join(self.config_dir, '_work')

  @property
  def report_path(self) -> str:
    return os.path.join(self.config_dir, REPORT_NAME)

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir = os.fspath(dl_manager.manual_dir)
    names, splits = self.list_videos(manual_dir)
    self.info.features['label'].names = names
    c = self.builder_config
    cfg = dict(fps=c.fps, short_side=c.short_side, jpeg_quality=c.jpeg_quality,
               min_fraction=c.min_fraction)
    title = self.title
    if self.beam:
      return self._beam_split_generators(splits, cfg)
    try:
      paths = decode_splits(splits, self.work_dir, cfg, workers=self.workers or os.cpu_count() or 1,
                            videos_per_shard=self.videos_per_shard, title=title)
    finally:
      self._write_report(read_sidecars(self.work_dir, splits))
    self._check_report(manual_dir)
    print(f'{title}: writing the ArrayRecord dataset...', flush=True)
    return {split: self._generate_examples(p) for split, p in paths.items()}

  def _write_report(self, summaries):
    self.report = make_report(self.title, summaries)
    # Written whole, then renamed: a kill mid-write leaves the previous report, never half of one.
    tmp = epath.Path(self.report_path + '.tmp')
    tmp.write_text(json.dumps(self.report, indent=1))
    tmp.replace(self.report_path)

  def _check_report(self, manual_dir):
    for split, n in self.report['splits'].items():
      if not n['written']:  # TFDS would only say "No examples were yielded".
        reasons = ', '.join(f'{k} {v}' for k, v in sorted(n['reasons'].items())) or 'none listed'
        raise ValueError(
            f"{self.title}: no video of split '{split}' could be read ({n['videos']} "
            f'listed; unusable: {reasons}). Check that --manual_dir={manual_dir} holds the clips '
            f'next to the annotation files; {self.report_path} lists each failure.')

  # ------------------------------------------------------------------------------- on Beam

  def _beam_split_generators(self, splits, cfg):
    """Each split as a Beam transform decoding one clip per element (data/beam.py); the report
    is written once the pipeline has run (_process_pipeline_result)."""
    from sparse_tubes.data import beam  # pylint: disable=g-import-not-at-top
    work = epath.Path(self.work_dir)
    if work.exists():  # A Beam run starts afresh: no sidecar of an earlier run may be counted.
      work.rmtree()
    work.mkdir(parents=True)
    self._beam_splits = list(splits)
    n = sum(map(len, splits.values()))
    print(f'{self.title}: {n} videos in {len(splits)} split(s) to decode on Beam.',
          flush=True)
    return {split: beam.split_examples(videos, cfg, split, self.work_dir)
            for split, videos in splits.items()}

  @compat.overrides('tfds_process_pipeline_result')
  def _process_pipeline_result(self, pipeline_result):
    from sparse_tubes.data import beam  # pylint: disable=g-import-not-at-top
    self._write_report(beam.read_summaries(self.work_dir, self._beam_splits))
    self._check_report(self._manual_dir)

  @compat.overrides('tfds_download_and_prepare')
  def _download_and_prepare(self, dl_manager, download_config):
    try:
      super()._download_and_prepare(dl_manager, download_config)
    except Exception:
      if self.beam and hasattr(self, '_beam_splits'):
        self._report_failed_pipeline()
      raise

  def _report_failed_pipeline(self):
    """On Beam a split without one readable clip stops the pipeline in TFDS's writer ("The total
    number of generated examples is 0"); where the summaries were written, say which and why."""
    from sparse_tubes.data import beam  # pylint: disable=g-import-not-at-top
    try:
      summaries = beam.read_summaries(self.work_dir, self._beam_splits)
    except Exception:  # pylint: disable=broad-except
      return  # Not written: the pipeline failed before that; its own error stands.
    self._write_report(summaries)
    self._check_report(self._manual_dir)

  @compat.overrides('tfds_example_writer')
  def _example_writer(self):
    if self.beam:
      from sparse_tubes.data import beam  # pylint: disable=g-import-not-at-top
      return beam.RemoteArrayRecordWriter(file_format=self.info.file_format)
    return super()._example_writer()

  def _generate_examples(self, data_paths):
    for path in data_paths:
      for example in read_shard(path):
        example['video'] = list(example['video'])
        yield example['id'], example
