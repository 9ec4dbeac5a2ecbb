"""Decoding, temporal sampling and spatial augmentation on numpy arrays.

Everything here works on plain arrays and JPEG bytes, so the same code serves the built-in dataset,
Kinetics and SSv2: a video is a sequence of encoded frames, an image is one encoded frame. Frames stay
uint8 (time, height, width, 3) RGB until `normalize`, which runs on whole batches.
"""
import cv2
import numpy as np

# OpenCV's own thread pool fights Grain's reader threads and worker processes for the same cores.
cv2.setNumThreads(1)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


class DecodeError(ValueError):
  """Raised for bytes that are not a usable frame or video; the pipeline skips such examples."""


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
  ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(rgb[..., ::-1]),
                         [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise ValueError(f'JPEG encoding failed for an array of shape {rgb.shape}')
  return buf.tobytes()


def decode_frames(encoded, indices=None) -> np.ndarray:
  """Decodes the selected JPEG/PNG frames to uint8 (t, h, w, 3) RGB; only those are decoded."""
  if isinstance(encoded, (bytes, np.bytes_)):
    encoded = [encoded]
  if len(encoded) == 0:
    raise DecodeError('no frames')
  indices = range(len(encoded)) if indices is None else indices
  frames = []
  for i in indices:
    data = encoded[i]
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if len(data) else None
    if img is None:
      raise DecodeError(f'frame {i} is not a decodable image ({len(data)} bytes)')
    if frames and img.shape != frames[0].shape:
      raise DecodeError(f'frame {i} has shape {img.shape}, frame 0 has {frames[0].shape}')
    frames.append(img)
  return np.stack(frames)[..., ::-1]  # OpenCV decodes to BGR.


# ---------------------------------------------------------------- temporal sampling (frame indices)

def stride_indices(num_available: int, num_frames: int, stride: int, start: int) -> np.ndarray:
  """`num_frames` indices `stride` apart from `start`; a video shorter than the clip loops."""
  return (start + stride * np.arange(num_frames)) % num_available


def stride_start_train(num_available, num_frames, stride, rng) -> int:
  span = (num_frames - 1) * stride + 1
  if num_available >= span:
    return int(rng.integers(0, num_available - span + 1))
  return int(rng.integers(0, num_available))  # A short video loops, so any start will do.


def stride_starts_eval(num_available, num_frames, stride, num_views) -> np.ndarray:
  """Evenly spaced starts covering the video; one view takes the centre clip."""
  last = max(num_available - ((num_frames - 1) * stride + 1), 0)
  if num_views == 1:
    return np.array([last // 2])
  return np.round(np.linspace(0, last, num_views)).astype(int)


def segment_indices_train(num_available, num_frames, rng) -> np.ndarray:
  """TSN/SSv2 sampling: split the video into `num_frames` segments and take one random frame each."""
  edges = np.linspace(0, num_available, num_frames + 1)
  lo = np.floor(edges[:-1]).astype(int)
  hi = np.maximum(np.floor(edges[1:]).astype(int), lo + 1)  # Short videos repeat frames.
  return np.minimum(rng.integers(lo, hi), num_available - 1)


def segment_indices_eval(num_available, num_frames, view, num_views) -> np.ndarray:
  """The frame at fraction (view + 0.5) / num_views of each segment: the middle for one view."""
  edges = np.linspace(0, num_available, num_frames + 1)
  pos = edges[:-1] + (edges[1:] - edges[:-1]) * (view + 0.5) / num_views
  return np.minimum(pos.astype(int), num_available - 1)


# ---------------------------------------------------------------- spatial ops on (t, h, w, 3) uint8

def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
  _, h, w, _ = frames.shape
  if min(h, w) == size:
    return frames
  nh, nw = (size, max(size, round(w * size / h))) if h <= w else (max(size, round(h * size / w)), size)
  interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
  return np.stack([cv2.resize(f, (nw, nh), interpolation=interp) for f in frames])


def crop(frames, top, left, size):
  return frames[:, top:top + size, left:left + size]


def random_crop(frames, size, rng):
  """The same crop for every frame of the clip, so motion is preserved."""
  _, h, w, _ = frames.shape
  return crop(frames, int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size)


def spatial_view_crop(frames, size, view, num_views):
  """Crops spread along the long side (left/centre/right, or top/centre/bottom when taller);
  square frames are crossed along the width. One view is the centre crop."""
  _, h, w, _ = frames.shape
  along = lambda n: (n - size) // 2 if num_views == 1 else \
      int(round(np.linspace(0, n - size, num_views)[view]))
  if h > w:
    return crop(frames, along(h), (w - size) // 2, size)
  return crop(frames, (h - size) // 2, along(w), size)


def train_spatial(frames, *, min_resize, max_resize, crop_size, flip, rng):
  """Short-side scale jitter, random crop, optional horizontal flip."""
  frames = resize_short_side(frames, int(rng.integers(min_resize, max_resize + 1)))
  frames = random_crop(frames, crop_size, rng)
  if flip and rng.random() < 0.5:
    frames = frames[:, :, ::-1]
  return np.ascontiguousarray(frames)


def eval_spatial(frames, *, min_resize, crop_size, view, num_views):
  frames = resize_short_side(frames, min_resize)
  return np.ascontiguousarray(spatial_view_crop(frames, crop_size, view, num_views))


def normalize(x: np.ndarray, method: str) -> np.ndarray:
  """uint8 -> float32: 'minus_one_to_one' gives [-1, 1]; 'imagenet' subtracts mean, divides by std."""
  x = x.astype(np.float32)
  if method == 'minus_one_to_one':
    return x * (1 / 127.5) - 1
  if method == 'imagenet':
    return (x - IMAGENET_MEAN) * (1 / IMAGENET_STD)
  raise ValueError(f'unknown normalization {method!r}')
