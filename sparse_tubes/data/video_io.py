"""Video files in and out with PyAV: decode, resample to a frame rate, resize, encode frames as JPEG.

Used by `prepare` (in worker processes: this module imports only PyAV, numpy and OpenCV) and by the
tests and the benchmark, which write small real h264/vp9/vp8 files with `write_video`.

A file that cannot be used raises `VideoError` with one of `REASONS`; callers record it and go on.
"""
import dataclasses
import fractions
import json
import os
import pickle
import time

import av
import cv2
import numpy as np

cv2.setNumThreads(1)

# Why a video could not be used, as written to the prepare report.
REASONS = ('missing', 'undecodable', 'no_video_stream', 'zero_frames', 'truncated', 'unknown_label')


class VideoError(Exception):
  """A video that cannot be used; `reason` is one of REASONS, `detail` says more."""

  def __init__(self, reason: str, detail: str = ''):
    assert reason in REASONS, reason
    super().__init__(f'{reason}: {detail}' if detail else reason)
    self.reason, self.detail = reason, detail


@dataclasses.dataclass
class Decoded:
  frames: list          # JPEG bytes, one per output frame (at `fps`)
  fps: float            # frame rate of `frames`
  source_fps: float     # the stream's average frame rate
  duration: float       # seconds the decoded frames span in the source
  height: int
  width: int


def output_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
  """(height, width) with the short side set to `short_side` (aspect kept); None keeps the size."""
  if not short_side:
    return height, width
  if height <= width:
    return short_side, max(short_side, round(width * short_side / height))
  return max(short_side, round(height * short_side / width)), short_side


class VideoStream:
  """The frames of a video file's first video stream as they decode: JPEG bytes at `fps` (None:
  every frame), the short side resized to `short_side`, one frame in memory at a time.
  `decode_video` collects them all; `predict --segments` keeps a segment's worth.

  Resampling keeps, for each output time k / fps, the source frame shown at that time (the one whose
  display interval [t, t + 1/source_fps) contains it): frames are dropped or repeated, never
  blended. Frames are resized with area interpolation when shrinking, then JPEG encoded. A stream
  that stops with a decode error ends there; `error` holds it, `span` the seconds decoded.

    with VideoStream(path, fps=25) as stream:
      for jpeg in stream: ...          # frame k shows time k / stream.fps
  """

  def __init__(self, path: str, *, fps: float | None = None, short_side: int | None = 256,
               jpeg_quality: int = 90):
    if not os.path.exists(path):
      raise VideoError('missing', path)
    try:
      self._container = av.open(path, metadata_errors='ignore')
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
      raise VideoError('undecodable', f'cannot open: {e}') from None
    if not self._container.streams.video:
      kinds = [s.type for s in self._container.streams]
      self._container.close()
      raise VideoError('no_video_stream', f'streams: {kinds}')
    stream = self._container.streams.video[0]
    stream.thread_count = 1  # One process per core already.
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    self.source_fps = float(rate) if rate else 25.0
    self.fps = float(fps or self.source_fps)
    self.declared = None  # seconds, as the container says
    if stream.duration and stream.time_base:
      self.declared = float(stream.duration * stream.time_base)
    elif self._container.duration:
      self.declared = self._container.duration / av.time_base
    self._stream, self._resample = stream, fps is not None
    self._short_side, self._quality = short_side, jpeg_quality
    self.decoded, self.emitted, self.span, self.error = 0, 0, 0.0, None
    self.height = self.width = None

  def __iter__(self):
    size, t0, step = None, None, 1 / self.source_fps
    try:
      for frame in self._container.decode(self._stream):
        t = frame.time
        if t is None:
          t = self.decoded * step
        t0 = t if t0 is None else t0
        t -= t0
        self.decoded += 1
        self.span = max(self.span, t + step)
        repeat = 1
        if self._resample:
          # Output times k / fps inside [t, t + step); the tolerance (a twentieth of an output
          # frame) absorbs timestamps rounded to the container's time base (webm: milliseconds).
          end = (t + step) * self.fps - 0.05
          repeat = max(0, int(np.ceil(end)) - self.emitted)
        if repeat == 0:
          continue
        if size is None:
          size = output_size(frame.height, frame.width, self._short_side)
          self.height, self.width = size
        bgr = frame.reformat(width=size[1], height=size[0], format='bgr24',
                             interpolation='AREA' if size[0] < min(frame.height, frame.width)
                             else 'BILINEAR').to_ndarray()
        ok, buf = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        if not ok:
          raise VideoError('undecodable', f'JPEG encoding failed for frame {self.decoded - 1}')
        jpeg = buf.tobytes()
        for _ in range(repeat):
          self.emitted += 1
          yield jpeg
    except av.FFmpegError as e:
      self.error = e

  def close(self):
    self._container.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def decode_video(path: str, *, fps: float | None = None, short_side: int | None = 256,
                 jpeg_quality: int = 90, min_fraction: float = 0.5) -> Decoded:
  """Decodes the first video stream of `path` into JPEG frames at `fps` (None: every frame), the
  short side resized to `short_side` (`VideoStream` says how). A stream that stops with a decode
  error keeps the frames before it, but if what decoded spans less than `min_fraction` of the
  duration the container declares, the file is 'truncated'.
  """
  with VideoStream(path, fps=fps, short_side=short_side, jpeg_quality=jpeg_quality) as stream:
    frames = list(stream)
  if not frames:
    if stream.error is not None:
      raise VideoError('undecodable', f'decode error before any frame: {stream.error}')
    raise VideoError('zero_frames', 'the video stream holds no frames')
  declared, span = stream.declared, stream.span
  if declared and span < min_fraction * declared:
    why = (f'decode error after {stream.decoded} frames ({stream.error})' if stream.error
           else f'{stream.decoded} frames')
    raise VideoError('truncated', f'{why}: {span:.2f} s of the {declared:.2f} s declared')
  return Decoded(frames=frames, fps=stream.fps, source_fps=stream.source_fps, duration=span,
                 height=stream.height, width=stream.width)


def write_video(path: str, frames: np.ndarray, fps: float, codec: str | None = None,
                container_options: dict | None = None, **options) -> None:
  """Writes uint8 (t, h, w, 3) RGB frames (even h and w) as a real video file; the codec defaults
  to libx264 for .mp4/.mkv, libvpx-vp9 for .webm. `container_options` go to the muxer (e.g.
  {'movflags': 'faststart'}), the rest to the encoder. Tests and the benchmark use it."""
  ext = os.path.splitext(path)[1]
  codec = codec or {'.webm': 'libvpx-vp9'}.get(ext, 'libx264')
  with av.open(path, 'w', options=container_options or {}) as container:
    stream = container.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = 'yuv420p'
    if codec == 'libx264':
      options = {'preset': 'ultrafast', **options}
    stream.options = {k: str(v) for k, v in options.items()}
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), 'rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


# ------------------------------------------------------------- work shards of `prepare` (workers)

@dataclasses.dataclass(frozen=True)
class Video:
  """One row of the annotations: `index` is its position in the split (the example's `id`)."""
  index: int
  video_id: str
  label: int | None      # class index; None when the label is not in the class list
  label_name: str
  path: str | None       # None when no file of that name is under manual_dir


def decode_clip(v: Video, cfg: dict) -> tuple[dict | None, dict | None]:
  """One listed video -> (example, None), or (None, failure) when it cannot be used. The one
  per-clip step of `prepare`, on one machine (decode_shard) and on Beam (data/beam.py)."""
  try:
    if v.label is None:
      raise VideoError('unknown_label', f'{v.label_name!r} is not in the class list')
    if v.path is None:
      raise VideoError('missing', f'no file named {v.video_id}.* under manual_dir')
    d = decode_video(v.path, fps=cfg['fps'], short_side=cfg['short_side'],
                     jpeg_quality=cfg['jpeg_quality'], min_fraction=cfg['min_fraction'])
  except VideoError as e:
    return None, {'video_id': v.video_id, 'path': v.path, 'reason': e.reason, 'detail': e.detail}
  except Exception as e:  # Anything else a broken file can throw: skipped all the same.
    return None, {'video_id': v.video_id, 'path': v.path, 'reason': 'undecodable',
                  'detail': f'{type(e).__name__}: {e}'}
  return {'id': v.index, 'video_id': v.video_id, 'label': v.label, 'video': d.frames,
          'fps': d.fps, 'source_fps': d.source_fps, 'duration': d.duration}, None


def decode_shard(task) -> dict:
  """Worker: decodes the videos of one work shard; returns its summary (also written as JSON)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  videos, data_path, json_path, cfg = task
  start = time.perf_counter()
  failures, written, frames = [], 0, 0
  writer = array_record_module.ArrayRecordWriter(data_path + '.tmp', 'group_size:1')
  for v in videos:
    example, failure = decode_clip(v, cfg)
    if failure:
      failures.append(failure)
      continue
    writer.write(pickle.dumps(example, protocol=5))
    written += 1
    frames += len(example['video'])
  writer.close()
  os.replace(data_path + '.tmp', data_path)
  summary = {'videos': len(videos), 'written': written, 'frames': frames, 'failures': failures,
             'seconds': time.perf_counter() - start}
  with open(json_path + '.tmp', 'w') as f:
    json.dump(summary, f)
  os.replace(json_path + '.tmp', json_path)  # Last: its presence marks the shard done.
  return summary


def read_shard(data_path):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  reader = array_record_module.ArrayRecordReader(data_path)
  try:
    for i in range(reader.num_records()):
      yield pickle.loads(reader.read([i])[0])
  finally:
    reader.close()
