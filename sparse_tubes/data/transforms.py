"""Decoding, temporal sampling and spatial augmentation on numpy arrays.

Everything here works on plain arrays and JPEG bytes, so the same code serves the built-in dataset,
Kinetics and SSv2: a video is a sequence of encoded frames, an image is one encoded frame. Frames stay
uint8 (time, height, width, 3) RGB until `normalize`, which runs on whole batches.
"""
import math

import cv2
import numpy as np

# OpenCV's own thread pool fights Grain's reader threads and worker processes for the same cores.
cv2.setNumThreads(1)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
# The Kinetics statistics that PySlowFast, the official TimeSformer and its HuggingFace port use.
KINETICS_MEAN = np.array([0.45, 0.45, 0.45], np.float32) * 255
KINETICS_STD = np.array([0.225, 0.225, 0.225], np.float32) * 255


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


def train_spatial(frames, *, min_resize, max_resize, crop_size, flip, rng, crop='scale_jitter',
                  rrc_scale=(0.08, 1.0), rrc_ratio=(3 / 4, 4 / 3), randaugment_layers=0,
                  randaugment_magnitude=9):
  """Short-side scale jitter then random crop ('scale_jitter') or random-resized crop
  ('random_resized'); optional horizontal flip; optional RandAugment, the same for all frames."""
  if crop == 'random_resized':
    frames = random_resized_crop(frames, crop_size, rng, tuple(rrc_scale), tuple(rrc_ratio))
  else:
    frames = resize_short_side(frames, int(rng.integers(min_resize, max_resize + 1)))
    frames = random_crop(frames, crop_size, rng)
  if flip and rng.random() < 0.5:
    frames = frames[:, :, ::-1]
  if randaugment_layers:
    frames = randaugment(np.ascontiguousarray(frames), randaugment_layers, randaugment_magnitude, rng)
  return np.ascontiguousarray(frames)


def eval_spatial(frames, *, min_resize, crop_size, view, num_views):
  frames = resize_short_side(frames, min_resize)
  return np.ascontiguousarray(spatial_view_crop(frames, crop_size, view, num_views))


def normalize(x: np.ndarray, method: str) -> np.ndarray:
  """uint8 -> float32: 'minus_one_to_one' gives [-1, 1]; 'imagenet' and 'kinetics' subtract the
  mean and divide by the std of those datasets (use 'kinetics' for converted TimeSformer
  checkpoints)."""
  x = x.astype(np.float32)
  if method == 'minus_one_to_one':
    return x * (1 / 127.5) - 1
  if method == 'imagenet':
    return (x - IMAGENET_MEAN) * (1 / IMAGENET_STD)
  if method == 'kinetics':
    return (x - KINETICS_MEAN) * (1 / KINETICS_STD)
  raise ValueError(f'unknown normalization {method!r}')


# ------------------------------------------------------------------ random-resized crop (Inception)

def random_resized_crop(frames, size, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
  """Inception-style crop, the same box for every frame: area fraction in `scale`, aspect ratio
  (w/h, log-uniform) in `ratio`, resized to size x size; after `attempts` misses, the centre crop of
  the largest box with a ratio in range (torchvision's rule)."""
  _, h, w, _ = frames.shape
  area = h * w
  for _ in range(attempts):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
      break
  else:
    in_ratio = w / h
    if in_ratio < ratio[0]:
      cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
      ch, cw = h, int(round(h * ratio[1]))
    else:
      cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
  box = frames[:, top:top + ch, left:left + cw]
  interp = cv2.INTER_AREA if min(ch, cw) > size else cv2.INTER_LINEAR
  return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in box])


# ------------------------------------------------------------------------------------ RandAugment
# Cubuk et al. 2020, the paper's 14 operations. Each of `num_layers` rounds picks one op uniformly and
# applies it at magnitude M (0..10, as `magnitude / 10` of the ranges below, with a random sign for
# the signed ops). For a clip, the ops, their signs and the statistics they use (min/max, histogram,
# mean) are drawn once over the whole clip, so every frame gets the same transform.
RANDAUGMENT_OPS = ('Identity', 'AutoContrast', 'Equalize', 'Rotate', 'Solarize', 'Color',
                   'Posterize', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
                   'TranslateX', 'TranslateY')
MAX_ROTATE = 30.0       # degrees
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.45    # fraction of the side (timm's translate_pct)
MAX_ENHANCE = 0.9       # Color/Contrast/Brightness/Sharpness factor 1 +- 0.9 m
FILL = 128              # what geometric ops bring in at the borders


def _lut(frames, lut):
  """Per-channel lookup table (256, 3) applied to (t, h, w, 3) uint8."""
  t, h, w, _ = frames.shape
  flat = frames.reshape(t * h, w, 3)
  return cv2.LUT(flat, lut.astype(np.uint8).reshape(1, 256, 3)).reshape(frames.shape)


def _flat(frames):
  """(t, h, w, 3) -> (t * h, w, 3), one image to OpenCV (which takes at most 2-D + channels)."""
  t, h, w, _ = frames.shape
  return np.ascontiguousarray(frames).reshape(t * h, w, 3)


def _blend(degenerate, frames, factor):
  """degenerate + factor * (frames - degenerate), rounded and saturated; degenerate is an array of
  the frames' shape or a scalar."""
  x = _flat(frames)
  if np.isscalar(degenerate):
    out = cv2.addWeighted(x, float(factor), x, 0.0, float((1 - factor) * degenerate))
  else:
    out = cv2.addWeighted(x, float(factor), _flat(degenerate), float(1 - factor), 0.0)
  return out.reshape(frames.shape)


def _grey(frames):
  """uint8 luma (t*h, w) of the clip, ITU-R 601 like PIL's convert('L')."""
  return cv2.cvtColor(_flat(frames), cv2.COLOR_RGB2GRAY)


def _affine(frames, matrix):
  _, h, w, _ = frames.shape
  return np.stack([cv2.warpAffine(f, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL,) * 3)
                   for f in frames])


def _auto_contrast(frames):
  x = _flat(frames)
  lo, hi = np.zeros(3, np.float32), np.zeros(3, np.float32)
  for c in range(3):  # The whole clip's range, from its histogram (faster than strided min/max).
    used = np.flatnonzero(cv2.calcHist([x], [c], None, [256], [0, 256]).ravel())
    lo[c], hi[c] = used[0], used[-1]
  scale = np.where(hi > lo, 255 / np.maximum(hi - lo, 1), 1)
  offset = np.where(hi > lo, lo, 0)
  lut = np.clip(np.round((np.arange(256, dtype=np.float32)[:, None] - offset) * scale), 0, 255)
  return _lut(frames, lut)


def _equalize(frames):
  """PIL's ImageOps.equalize, per channel, with one histogram for the whole clip."""
  luts = []
  for c in range(3):
    hist = cv2.calcHist([_flat(frames)], [c], None, [256], [0, 256]).ravel().astype(np.int64)
    nonzero = hist[hist > 0]
    step = (hist.sum() - nonzero[-1]) // 255 if len(nonzero) else 0
    if step == 0:
      luts.append(np.arange(256))
      continue
    n = step // 2 + np.concatenate([[0], np.cumsum(hist)[:-1]])
    luts.append(np.minimum(n // step, 255))
  return _lut(frames, np.stack(luts, axis=1))


def randaugment_op(frames, op, m, sign):
  """One RandAugment op at relative magnitude m in [0, 1] on uint8 (t, h, w, 3)."""
  _, h, w, _ = frames.shape
  enhance = 1 + MAX_ENHANCE * m * sign
  if op == 'Identity':
    return frames
  if op == 'AutoContrast':
    return _auto_contrast(frames)
  if op == 'Equalize':
    return _equalize(frames)
  if op == 'Rotate':
    return _affine(frames, cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), MAX_ROTATE * m * sign, 1))
  if op == 'Solarize':  # Invert pixels at or above the threshold; M=10 inverts everything.
    threshold = 256 - 256 * m
    return _lut(frames, np.repeat(np.where(np.arange(256) >= threshold, 255 - np.arange(256),
                                           np.arange(256))[:, None], 3, 1))
  if op == 'Color':
    grey = cv2.cvtColor(_grey(frames), cv2.COLOR_GRAY2RGB).reshape(frames.shape)
    return _blend(grey, frames, enhance)
  if op == 'Posterize':  # Keep 8 - int(4 m) bits: M=10 keeps 4.
    shift = int(4 * m)
    return frames & np.uint8((0xFF << shift) & 0xFF)
  if op == 'Contrast':
    return _blend(float(_grey(frames).mean()), frames, enhance)
  if op == 'Brightness':
    return _blend(0.0, frames, enhance)
  if op == 'Sharpness':  # Blend with PIL's SMOOTH filter; borders stay as they are.
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
    smooth = np.stack([cv2.filter2D(f, -1, kernel) for f in frames])
    smooth[:, [0, -1]] = frames[:, [0, -1]]
    smooth[:, :, [0, -1]] = frames[:, :, [0, -1]]
    return _blend(smooth, frames, enhance)
  if op in ('ShearX', 'ShearY'):
    s = MAX_SHEAR * m * sign
    matrix = [[1, s, -s * h / 2], [0, 1, 0]] if op == 'ShearX' else [[1, 0, 0], [s, 1, -s * w / 2]]
    return _affine(frames, np.array(matrix, np.float32))
  if op in ('TranslateX', 'TranslateY'):
    d = MAX_TRANSLATE * m * sign
    matrix = [[1, 0, d * w], [0, 1, 0]] if op == 'TranslateX' else [[1, 0, 0], [0, 1, d * h]]
    return _affine(frames, np.array(matrix, np.float32))
  raise ValueError(f'unknown RandAugment op {op!r}; known: {RANDAUGMENT_OPS}')


def randaugment(frames, num_layers: int, magnitude: float, rng):
  """RandAugment(N=num_layers, M=magnitude) with one draw per clip, applied to every frame."""
  for _ in range(num_layers):
    op = RANDAUGMENT_OPS[int(rng.integers(len(RANDAUGMENT_OPS)))]
    sign = 1 if rng.random() < 0.5 else -1
    frames = randaugment_op(frames, op, magnitude / 10, sign)
  return np.ascontiguousarray(frames)
