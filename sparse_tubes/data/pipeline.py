"""Grain input pipelines over TFDS array_record data sources.

Train: an endless, shuffled, per-host slice of the split; every element is decoded and augmented with
its own rng (derived from the seed and the element's global position, so results do not depend on the
worker count), then batched to the host's share of the global batch. The iterator is checkpointable.

Eval: every video expands to temporal x spatial views (or, with eval_temporal_views=0, to as many
non-overlapping clips as cover it, times the spatial views); each host takes its slice of the views,
padded so that every host yields the same number of full batches (padding has mask=False).

Batches are dicts of numpy arrays:
  train: {'inputs': float32 (b, T, H, W, 3) or (b, H, W, 3), 'label': int32 (b,)}
  eval:  the same plus 'video_id' int32 (index in the split, -1 for padding), 'view' int32,
         'mask' bool (False for padding and for examples that failed to decode) and 'key' uint8
         (b, KEY_BYTES): the example's id in the dataset (its 'video_id' or 'id'), UTF-8, 0-padded.
"""
import concurrent.futures
import dataclasses
import math
import threading

from absl import flags
from absl import logging
import grain
import numpy as np
import tensorflow_datasets as tfds

from sparse_tubes import compat
from sparse_tubes.data import builtin
from sparse_tubes.data import transforms

KINDS = ('video', 'image')
SAMPLINGS = ('stride', 'segment')
NORMALIZATIONS = ('minus_one_to_one', 'imagenet', 'kinetics', 'custom')
AGGREGATIONS = ('mean_logits', 'mean_softmax')
KEY_BYTES = 64
TRAIN_CROPS = ('scale_jitter', 'random_resized')


# ------------------------------------------------------------------------------------- validation

def validate(ds_cfg, *, name: str = '', process_count: int = 1) -> None:
  """Raises ValueError naming the config key and the fix; cheap, so call it before building anything."""
  key = f'config.datasets.{name or "<name>"}'
  c = ds_cfg
  if not c.tfds_name:
    raise ValueError(f"{key}.tfds_name is empty: set it, e.g. 'moving_shapes/video'.")
  for field, value, allowed in (('kind', c.kind, KINDS), ('sampling', c.sampling, SAMPLINGS),
                                ('normalization', c.normalization, NORMALIZATIONS),
                                ('train_crop', c.train_crop, TRAIN_CROPS),
                                ('eval_aggregation', c.eval_aggregation, AGGREGATIONS)):
    if value not in allowed:
      raise ValueError(f'{key}.{field}={value!r} is unknown: use one of {allowed}.')
  positive = ['batch_size', 'eval_batch_size', 'crop_size', 'min_resize', 'eval_spatial_views']
  if c.kind == 'video':
    positive += ['num_frames', 'frame_stride']
  for field in positive:
    if c[field] < 1:
      raise ValueError(f'{key}.{field}={c[field]} must be at least 1.')
  if c.kind == 'video' and c.eval_temporal_views < 0:
    raise ValueError(f'{key}.eval_temporal_views={c.eval_temporal_views}: use >= 1 views, or 0 for '
                     'non-overlapping clips covering the whole video.')
  if c.kind == 'video' and c.eval_temporal_views == 0 and c.sampling != 'stride':
    raise ValueError(f"{key}.eval_temporal_views=0 (whole video) needs sampling='stride'; "
                     f"sampling={c.sampling!r} already spreads one clip over the whole video.")
  if c.normalization == 'custom' and not (len(c.norm_mean) == len(c.norm_std) == 3
                                          and min(c.norm_std) > 0):
    raise ValueError(f"{key}.normalization='custom' needs norm_mean and norm_std, 3 values each "
                     f"(std > 0, on pixels in [0, 1]); got {tuple(c.norm_mean)}, {tuple(c.norm_std)}.")
  if c.crop_size > c.min_resize:
    raise ValueError(f'{key}.crop_size={c.crop_size} is larger than min_resize={c.min_resize}: '
                     f'the short side is resized to min_resize before cropping; raise min_resize or '
                     f'lower crop_size.')
  if c.max_resize < c.min_resize:
    raise ValueError(f'{key}.max_resize={c.max_resize} is smaller than min_resize={c.min_resize}: '
                     f'train jitters the short side in [min_resize, max_resize].')
  if c.randaugment_layers < 0 or not 0 <= c.randaugment_magnitude <= 10:
    raise ValueError(f'{key}.randaugment_layers={c.randaugment_layers} / randaugment_magnitude='
                     f'{c.randaugment_magnitude}: use layers >= 0 (0 is off) and a magnitude in '
                     f'[0, 10].')
  for field, (lo, hi) in (('rrc_scale', c.rrc_scale), ('rrc_ratio', c.rrc_ratio)):
    if not 0 < lo <= hi or (field == 'rrc_scale' and hi > 1):
      raise ValueError(f'{key}.{field}={tuple(c[field])} must be (low, high) with 0 < low <= high'
                       + (' <= 1.' if field == 'rrc_scale' else '.'))
  for field in ('batch_size', 'eval_batch_size'):
    if c[field] % process_count:
      raise ValueError(f'{key}.{field}={c[field]} is not divisible by the {process_count} processes: '
                       f'make it a multiple of {process_count}.')


@dataclasses.dataclass(frozen=True)
class Spec:
  """The config values the per-element work needs, as plain picklable values (for worker processes)."""
  tfds_name: str
  split: str
  kind: str
  num_frames: int
  frame_stride: int
  sampling: str
  crop_size: int
  min_resize: int
  max_resize: int
  flip: bool
  normalization: str | tuple  # a name of transforms.normalize, or ('custom', mean, std)
  temporal_views: int        # 0: non-overlapping clips over the whole video
  spatial_views: int
  train_crop: str = 'scale_jitter'
  rrc_scale: tuple = (0.08, 1.0)
  rrc_ratio: tuple = (0.75, 4 / 3)
  randaugment_layers: int = 0
  randaugment_magnitude: float = 9

  @classmethod
  def from_config(cls, c, split):
    video = c.kind == 'video'
    return cls(tfds_name=c.tfds_name, split=split, kind=c.kind,
               num_frames=c.num_frames if video else 1, frame_stride=c.frame_stride,
               sampling=c.sampling, crop_size=c.crop_size, min_resize=c.min_resize,
               max_resize=c.max_resize, flip=bool(c.flip), normalization=normalization(c),
               temporal_views=c.eval_temporal_views if video else 1,
               spatial_views=c.eval_spatial_views, train_crop=c.train_crop,
               rrc_scale=tuple(c.rrc_scale), rrc_ratio=tuple(c.rrc_ratio),
               randaugment_layers=c.randaugment_layers,
               randaugment_magnitude=c.randaugment_magnitude)


def normalization(ds_cfg) -> str | tuple:
  """What `transforms.normalize` takes for a dataset: its name, or ('custom', mean, std)."""
  if ds_cfg.normalization == 'custom':
    return ('custom', tuple(float(v) for v in ds_cfg.norm_mean),
            tuple(float(v) for v in ds_cfg.norm_std))
  return ds_cfg.normalization


# ------------------------------------------------------------------------- sources and statistics

@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  class_names: tuple[str, ...]
  num_examples: dict[str, int]


class RawBytes(tfds.decode.SkipDecoding):
  """Leaves the frames as encoded bytes: the pipeline decodes only the frames it samples, with cv2.

  tfds.decode.SkipDecoding alone only covers TFDS's TensorFlow path, not `as_data_source`."""

  def decode_example_np(self, example):
    return example

  def decode_batch_example_np(self, example):
    return example


def _builder(ds_cfg, data_dir):
  return builtin.ensure_built(ds_cfg.tfds_name, builtin.resolve_data_dir(data_dir))


def dataset_info(ds_cfg, data_dir: str) -> DatasetInfo:
  info = _builder(ds_cfg, data_dir).info
  label = info.features['label']
  return DatasetInfo(num_classes=label.num_classes, class_names=tuple(label.names),
                     num_examples={s: v.num_examples for s, v in info.splits.items()})


def data_source(ds_cfg, data_dir: str, split: str, *, name: str = ''):
  """Random-access source of {'video' or 'image': encoded bytes, 'label', 'id', ...}."""
  builder = _builder(ds_cfg, data_dir)
  key = f'config.datasets.{name or "<name>"}'
  if ds_cfg.kind not in builder.info.features:
    raise ValueError(f'{key}.kind={ds_cfg.kind!r} but {ds_cfg.tfds_name} has no {ds_cfg.kind!r} '
                     f'feature (it has {sorted(builder.info.features)}): fix kind or tfds_name.')
  if split not in builder.info.splits:
    field = 'train_split' if split == ds_cfg.train_split else 'eval_split'
    raise ValueError(f'{key}.{field}={split!r} is not a split of {ds_cfg.tfds_name}: '
                     f'use one of {sorted(builder.info.splits)}.')
  if 'label' not in builder.info.features:
    raise ValueError(f'{key}.tfds_name={ds_cfg.tfds_name!r} has no \'label\' feature (it has '
                     f'{sorted(builder.info.features)}): only classification datasets are read.')
  formats = [builder.info.file_format, *getattr(builder.info, 'alternative_file_formats', [])]
  formats = [getattr(f, 'value', f) for f in formats]
  file_format = formats[0]
  if 'array_record' not in formats:
    raise ValueError(
        f'{ds_cfg.tfds_name} in {builder.data_dir} is stored as {file_format}, but Grain reads '
        f'array_record: rebuild it with `tfds build {ds_cfg.tfds_name.split(":")[0]} '
        f'--file_format=array_record` (add --manual_dir=DIR for imagenet2012), or convert it with '
        f'`tfds convert_format --root_data_dir=DATA_DIR --out_file_format=array_record`.')
  return builder.as_data_source(split, decoders={ds_cfg.kind: RawBytes()})


@dataclasses.dataclass
class DataStats:
  """Examples skipped because they failed to decode, counted in the main process. Each pipeline
  fills the DataStats it is given (`train_iterator(stats=...)`) or returns its own
  (`EvalData.stats`)."""
  skipped: int = 0
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

  def add(self, n: int) -> None:
    with self._lock:
      self.skipped += int(n)


# ---------------------------------------------------------------------------- per-element work

def frame_indices(spec: Spec, n: int, rng, temporal_view: int) -> np.ndarray:
  """Which of the video's n frames make the clip: random in training (rng given), else the view."""
  if spec.sampling == 'segment':
    if rng is not None:
      return transforms.segment_indices_train(n, spec.num_frames, rng)
    return transforms.segment_indices_eval(n, spec.num_frames, temporal_view, spec.temporal_views)
  if rng is not None:
    start = transforms.stride_start_train(n, spec.num_frames, spec.frame_stride, rng)
  elif spec.temporal_views == 0:  # whole video: clip t starts where clip t-1 ended
    start = temporal_view * spec.num_frames * spec.frame_stride
  else:
    start = transforms.stride_starts_eval(n, spec.num_frames, spec.frame_stride,
                                          spec.temporal_views)[temporal_view]
  return transforms.stride_indices(n, spec.num_frames, spec.frame_stride, start)


def _encoded(spec: Spec, element, *, rng=None, temporal_view=0) -> transforms.EncodedClip:
  """The sampled frames of one clip (one frame for an image), not decoded yet."""
  if spec.kind == 'image':
    return transforms.EncodedClip(element['image'])
  encoded = element['video']
  if len(encoded) == 0:
    raise transforms.DecodeError('video has no frames')
  return transforms.EncodedClip(encoded, frame_indices(spec, len(encoded), rng, temporal_view))


def _decode(spec: Spec, element, *, rng=None, temporal_view=0) -> np.ndarray:
  """uint8 (t, h, w, 3) frames of one clip; only the sampled frames are decoded."""
  return _encoded(spec, element, rng=rng, temporal_view=temporal_view).decode()


def warn_corrupt(spec, element, error):
  logging.warning('Skipping example id=%s of %s/%s that failed to decode: %s',
                  element.get('id', '?'), spec.tfds_name, spec.split, error)


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
  spec: Spec

  def random_map(self, element, rng: np.random.Generator):
    s = self.spec
    try:  # Decoded inside train_spatial, once the crop is drawn (at reduced scale if it allows).
      frames = transforms.train_spatial(_encoded(s, element, rng=rng), min_resize=s.min_resize,
                                        max_resize=s.max_resize, crop_size=s.crop_size,
                                        flip=s.flip, rng=rng, crop=s.train_crop,
                                        rrc_scale=s.rrc_scale, rrc_ratio=s.rrc_ratio,
                                        randaugment_layers=s.randaugment_layers,
                                        randaugment_magnitude=s.randaugment_magnitude)
    except transforms.DecodeError as e:
      warn_corrupt(s, element, e)
      return None  # Dropped and counted by _SkipCorrupt.
    return {'inputs': frames if s.kind == 'video' else frames[0],
            'label': np.int32(element['label'])}


class _SkipCorrupt(grain.IterDataset):
  """Drops failed (None) elements and hands their number to the next good element as '_skipped'.

  The count travels inside the data, so it reaches the main process from worker processes too, and
  it is part of the iterator state."""

  def __iter__(self):
    return _SkipCorruptIterator(self._parent.__iter__())


class _SkipCorruptIterator(grain.DatasetIterator):

  def __init__(self, parent):
    super().__init__(parent)
    self._pending = 0

  def __next__(self):
    while True:
      element = next(self._parent)
      if element is not None:
        element['_skipped'] = np.int32(self._pending)
        self._pending = 0
        return element
      self._pending += 1

  def get_state(self):
    return {'parent': self._parent.get_state(), 'pending': self._pending}

  def set_state(self, state):
    self._parent.set_state(state['parent'])
    self._pending = state['pending']

  # A position without reading data (grain.experimental.set_next_index): what a restore onto a
  # different process count uses (run.Checkpointer.restore).
  @compat.overrides('grain_get_next_index')
  def _get_next_index(self):
    return grain.experimental.get_next_index(self._parent)

  @compat.overrides('grain_set_next_index')
  def _set_next_index(self, index):
    grain.experimental.set_next_index(self._parent, index)
    self._pending = 0


@dataclasses.dataclass(frozen=True)
class Normalize(grain.transforms.Map):
  """uint8 -> float32 on whole batches: per-element buffers stay 4x smaller until here."""
  method: str | tuple

  def map(self, batch):
    return {**batch, 'inputs': transforms.normalize(batch['inputs'], self.method)}


@dataclasses.dataclass(frozen=True)
class _CountSkipped(grain.transforms.Map):
  stats: DataStats

  def map(self, batch):
    self.stats.add(batch.pop('_skipped').sum())
    return batch


# ----------------------------------------------------------------------------------------- train

def train_iterator(ds_cfg, *, data_dir: str, seed: int, process_index: int, process_count: int,
                   grain_cfg, name: str = '', stats: DataStats | None = None) -> grain.DatasetIterator:
  """Endless iterator of this host's train batches; supports get_state/set_state and Orbax.
  Examples skipped as corrupt are counted into `stats` as their batches arrive."""
  validate(ds_cfg, name=name, process_count=process_count)
  spec = Spec.from_config(ds_cfg, ds_cfg.train_split)
  source = data_source(ds_cfg, data_dir, ds_cfg.train_split, name=name)
  local_batch = ds_cfg.batch_size // process_count

  ds = grain.MapDataset.source(source).shuffle(seed=seed % 2**32)
  # random_map before the host slice: each element's rng comes from its global position (epoch
  # included, since slice and repeat pass it through), so hosts and epochs never share augmentations.
  ds = ds.random_map(TrainTransform(spec), seed=seed)
  ds = ds[process_index::process_count].repeat()
  read = grain.ReadOptions(num_threads=grain_cfg.read_threads,
                           prefetch_buffer_size=max(2 * local_batch, grain_cfg.read_threads))
  ds = _SkipCorrupt(ds.to_iter_dataset(read, allow_nones=True))
  ds = ds.batch(local_batch, drop_remainder=True).map(Normalize(spec.normalization))
  if grain_cfg.worker_count > 0:
    # Grain's worker processes read absl flags; under pytest or a notebook nobody parsed them.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=grain_cfg.worker_count, per_worker_buffer_size=grain_cfg.worker_buffer_size))
  ds = ds.map(_CountSkipped(stats if stats is not None else DataStats()))
  return iter(ds)


# ------------------------------------------------------------------------------------------ eval

def example_key(element) -> np.ndarray:
  """The example's id in the dataset ('video_id', else 'id'), as KEY_BYTES of 0-padded UTF-8."""
  value = element.get('video_id', element.get('id', ''))
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, bytes):
    value = value.decode('utf-8', 'replace')
  out = np.zeros(KEY_BYTES, np.uint8)
  raw = str(value).encode('utf-8')[:KEY_BYTES]
  out[:len(raw)] = np.frombuffer(raw, np.uint8)
  return out


def key_string(key: np.ndarray) -> str:
  return bytes(np.asarray(key, np.uint8)).rstrip(b'\0').decode('utf-8', 'replace')


def _clips_per_video(spec: Spec, source, read_threads: int) -> np.ndarray:
  """Temporal views of every video: `temporal_views`, or for 0 (whole video) as many
  non-overlapping clips of num_frames x frame_stride as cover it (the last one loops to the start
  when the video does not fill it). The whole-video count reads every video's frame count once."""
  if spec.kind == 'image':
    return np.ones(len(source), np.int64)
  if spec.temporal_views:
    return np.full(len(source), spec.temporal_views, np.int64)
  span = spec.num_frames * spec.frame_stride
  with concurrent.futures.ThreadPoolExecutor(max(read_threads, 1)) as pool:
    lengths = list(pool.map(lambda i: len(source[i]['video']), range(len(source))))
  return np.maximum(1, -(-np.asarray(lengths, np.int64) // span))


@dataclasses.dataclass(frozen=True)
class _EvalView(grain.transforms.Map):
  """View index -> one decoded, cropped view; indices past the end are padding. Video v owns the
  views offsets[v] .. offsets[v + 1] - 1, temporal-major (spatial views of clip 0 first)."""
  spec: Spec
  source: object
  stats: DataStats
  offsets: np.ndarray  # (num_videos + 1,) first view of each video

  def map(self, index):
    s = self.spec
    shape = ((s.num_frames,) if s.kind == 'video' else ()) + (s.crop_size, s.crop_size, 3)
    out = {'inputs': np.zeros(shape, np.uint8), 'label': np.int32(0), 'video_id': np.int32(-1),
           'view': np.int32(0), 'mask': np.False_, 'key': np.zeros(KEY_BYTES, np.uint8)}
    if index >= self.offsets[-1]:
      return out
    video_id = int(np.searchsorted(self.offsets, index, side='right')) - 1
    view = int(index) - int(self.offsets[video_id])
    temporal_view, spatial_view = divmod(view, s.spatial_views)
    element = self.source[video_id]
    out.update(label=np.int32(element['label']), video_id=np.int32(video_id), view=np.int32(view),
               key=example_key(element))
    try:
      frames = _decode(s, element, temporal_view=temporal_view)
    except transforms.DecodeError as e:
      warn_corrupt(s, element, e)
      self.stats.add(1)
      return out  # Kept with mask=False, so every host still yields its full batches.
    frames = transforms.eval_spatial(frames, min_resize=s.min_resize, crop_size=s.crop_size,
                                     view=spatial_view, num_views=s.spatial_views)
    out.update(inputs=frames if s.kind == 'video' else frames[0], mask=np.True_)
    return out


@dataclasses.dataclass(frozen=True)
class EvalData:
  """Re-iterable eval batches of one host; every host yields `num_batches` batches."""
  dataset: grain.IterDataset
  num_videos: int
  views_per_video: int | np.ndarray  # an int, or (num_videos,) for whole-video evaluation
  num_batches: int
  local_batch_size: int
  stats: DataStats  # views of corrupt videos (kept as masked padding), counted while iterating

  def __iter__(self):
    return iter(self.dataset)

  def __len__(self):
    return self.num_batches


def eval_batches(ds_cfg, *, data_dir: str, process_index: int, process_count: int,
                 read_threads: int = 4, name: str = '',
                 videos: tuple[int, int] | None = None) -> EvalData:
  """`videos` = (start, stop): only the views of those videos of the split (`features` writes a
  split in shards of videos); their video_id stays their index in the split."""
  validate(ds_cfg, name=name, process_count=process_count)
  spec = Spec.from_config(ds_cfg, ds_cfg.eval_split)
  source = data_source(ds_cfg, data_dir, ds_cfg.eval_split, name=name)
  local_batch = ds_cfg.eval_batch_size // process_count
  views = _clips_per_video(spec, source, read_threads) * spec.spatial_views
  offsets = np.concatenate([[0], np.cumsum(views)])
  start, stop = videos or (0, len(source))
  offsets = offsets[:stop + 1]  # views past the last video asked for are padding
  first = int(offsets[start])
  num_batches = math.ceil((int(offsets[-1]) - first) / (local_batch * process_count))
  padded = num_batches * local_batch * process_count

  ds = grain.MapDataset.range(first, first + padded)[process_index::process_count]
  stats = DataStats()
  ds = ds.map(_EvalView(spec, source, stats, offsets))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=2 * local_batch))
  ds = ds.batch(local_batch).map(Normalize(spec.normalization))
  per_video = int(views[0]) if spec.temporal_views and len(views) else views
  return EvalData(ds, num_videos=len(source), views_per_video=per_video, num_batches=num_batches,
                  local_batch_size=local_batch, stats=stats)


# ------------------------------------------------------------------------------- one video file

def video_eval_views(ds_cfg, frames: np.ndarray) -> np.ndarray:
  """(views, T, H, W, C) float32 eval views of one decoded video (uint8 frames (n, h, w, 3)): the
  multi-view evaluation's clips, crops and normalization, in its view order (temporal-major)."""
  spec = Spec.from_config(ds_cfg, ds_cfg.eval_split)
  clips = spec.temporal_views or max(1, -(-len(frames) // (spec.num_frames * spec.frame_stride)))
  views = []
  for tv in range(clips):
    clip = _decode(spec, {'video': frames}, temporal_view=tv)
    for sv in range(spec.spatial_views):
      views.append(transforms.eval_spatial(clip, min_resize=spec.min_resize,
                                           crop_size=spec.crop_size, view=sv,
                                           num_views=spec.spatial_views))
  return transforms.normalize(np.stack(views), spec.normalization)
