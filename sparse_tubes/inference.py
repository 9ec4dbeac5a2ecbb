"""A checkpoint run on video files outside the prepared datasets: what `predict` and `features` share.

  Model          a workdir's checkpoint and one head, jitted: logits or pre-logit features of clip
                 batches of any length (padded to one batch size, so each compiles once)
  video_views    a video file -> the multi-view evaluation's views (data/pipeline.py)
  segments       a long video file -> fixed-length segments with their start/end times and views,
                 decoded once, front to back, holding one segment's frames at a time

A file is decoded with PyAV at the frame rate `prepare` stored the head's dataset at (or --fps),
its short side resized to the dataset's `min_resize`, its frames JPEG encoded as the prepared data
are, then cut into `eval_temporal_views` x `eval_spatial_views` views: exactly the evaluation's
pre-processing.
"""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes import workdir as workdir_lib
from sparse_tubes.data import pipeline, video_io


def dataset_fps(tfds_name: str) -> float | None:
  """The frame rate `prepare` stored the dataset at: '.../10fps_128px' says it; Kinetics defaults to
  25 fps; SSv2 and the built-in data keep the source rate (None)."""
  m = re.search(r'/(?:(\d+(?:\.\d+)?)fps|native)_', tfds_name)
  if m:
    return float(m.group(1)) if m.group(1) else None
  return 25.0 if tfds_name.startswith('kinetics') else None


def decode_fps(ds_cfg, fps: float | None = None) -> float | None:
  return fps if fps is not None else dataset_fps(ds_cfg.tfds_name)


def video_views(path: str, ds_cfg, *, fps: float | None = None) -> np.ndarray:
  """(views, T, H, W, C) float32 eval views of a video file, in the order the evaluation uses."""
  decoded = video_io.decode_video(path, fps=decode_fps(ds_cfg, fps),
                                  short_side=int(ds_cfg.min_resize))
  return pipeline.video_eval_views(ds_cfg, decoded.frames)


# --------------------------------------------------------------------------------------- segments

def parse_segments(value: str) -> tuple[float, float]:
  """--segments=SECONDS[:STRIDE] -> (seconds, stride); the stride defaults to SECONDS (segments
  side by side)."""
  parts = str(value).split(':')
  try:
    numbers = [float(p) for p in parts]
  except ValueError:
    numbers = []
  if len(parts) > 2 or not numbers or any(not np.isfinite(n) or n <= 0 for n in numbers):
    raise ValueError(f'--segments={value!r}: give SECONDS or SECONDS:STRIDE, positive numbers, '
                     'e.g. --segments=10 or --segments=10:5.')
  seconds = numbers[0]
  return seconds, numbers[1] if len(numbers) == 2 else seconds


@dataclasses.dataclass
class Segment:
  index: int
  start: float      # seconds from the first frame
  end: float
  frames: int       # decoded frames it spans
  views: np.ndarray  # (views, T, H, W, C) float32


def segments(path: str, ds_cfg, seconds: float, stride: float | None = None, *,
             fps: float | None = None, stats: dict | None = None):
  """Segments [k * stride, k * stride + seconds) of a video file, each with the eval views of its
  frames (a segment is cut into views as a whole video is). The file is decoded once, front to back;
  at most one segment's frames (JPEG) are held. A last, shorter segment covers the frames after the
  last full one (the whole video when it is shorter than one segment). `stats`, when given, gets
  'fps', 'max_buffered' (frames held at most) and 'frames' (decoded)."""
  stride = seconds if stride is None else stride
  with video_io.VideoStream(path, fps=decode_fps(ds_cfg, fps),
                            short_side=int(ds_cfg.min_resize)) as stream:
    rate = stream.fps
    window = max(1, round(seconds * rate))
    hop = max(1, round(stride * rate))
    buffer, first = [], 0      # buffer[i] is frame first + i
    covered, index, held = 0, 0, 0  # frames up to `covered` are in an emitted segment
    for n, jpeg in enumerate(stream):
      if n >= first:  # frames between segments (stride > seconds) are not kept
        buffer.append(jpeg)
        held = max(held, len(buffer))
      if len(buffer) == window:
        yield Segment(index, first / rate, (first + window) / rate, window,
                      pipeline.video_eval_views(ds_cfg, buffer))
        index, covered = index + 1, first + window
        buffer, first = buffer[hop:], first + hop
    total = stream.emitted
    if stream.error is not None and total == 0:
      raise video_io.VideoError('undecodable', f'decode error before any frame: {stream.error}')
  if total == 0:
    raise video_io.VideoError('zero_frames', f'{path}: the video stream holds no frames')
  if total > covered and buffer:  # the frames after the last full segment
    yield Segment(index, first / rate, total / rate, len(buffer),
                  pipeline.video_eval_views(ds_cfg, buffer))
  if stats is not None:
    stats.update(fps=rate, max_buffered=held, frames=total)


# ------------------------------------------------------------------------------------------ model

class Model:
  """A workdir's checkpoint with one head (`dataset`, default workdir.choose_head), on the config's
  mesh. `logits(x)` and `features(x)` take float32 clips (n, T, H, W, C) (or images) of any n and
  run them in batches of `batch_size` (the last one padded, so one shape compiles)."""

  def __init__(self, config, workdir: str, *, step: int | None = None,
               dataset: str | None = None, batch_size: int | None = None):
    restored = ckpt_lib.restore_params(config, workdir, step)
    self.config, self.workdir, self.restored = config, workdir, restored
    self.params, self.step = restored.params, restored.step
    self.dataset = workdir_lib.choose_head(config, restored.num_classes, dataset)
    self.ds_cfg = config.datasets.get(self.dataset)
    self.num_classes = restored.num_classes[self.dataset]
    self.batch_size = int(batch_size or (self.ds_cfg.eval_batch_size if self.ds_cfg else 8))
    graphdef, name = restored.spec.graphdef, self.dataset

    def logits(p, x):
      return nnx.merge(graphdef, p)(x, dataset=name, train=False)

    def features(p, x):
      return nnx.merge(graphdef, p).representation(x, train=False).astype(jnp.float32)

    self._logits, self._features = jax.jit(logits), jax.jit(features)

  def _run(self, fn, x: np.ndarray) -> np.ndarray:
    bs, outs = self.batch_size, []
    with jax.set_mesh(self.restored.mesh), nnx.logical_axis_rules(self.restored.rules):
      for i in range(0, len(x), bs):
        chunk = x[i:i + bs]
        pad = bs - len(chunk)
        if pad:
          chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(jax.device_get(fn(self.params, chunk)))[:bs - pad])
    return np.concatenate(outs).astype(np.float32)

  def logits(self, x: np.ndarray) -> np.ndarray:
    return self._run(self._logits, x)

  def features(self, x: np.ndarray) -> np.ndarray:
    return self._run(self._features, x)

  def class_names(self) -> list[str]:
    return workdir_lib.class_names(self.config, self.workdir, self.dataset, self.num_classes)
