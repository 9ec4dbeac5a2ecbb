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
_MEAN_STD = {'minus_one_to_one': None, 'imagenet': (IMAGENET_MEAN, IMAGENET_STD),
             'kinetics': (KINETICS_MEAN, KINETICS_STD)}  # (mean, std) of each normalization


class DecodeError(ValueError):
  """Raised for bytes that are not a usable frame or video; the pipeline skips such examples."""


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
  ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(rgb[..., ::-1]),
                         [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise ValueError(f'JPEG encoding failed for an array of shape {rgb.shape}')
  return buf.tobytes()


# EXIF orientation is ignored, as tf.io.decode_jpeg does, so a frame's size is the one its header
# states. Reduced flags decode JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain (ceil of each side).
_IMREAD = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
           8: cv2.IMREAD_REDUCED_COLOR_8}
# Start-of-frame markers (SOF0..SOF15 less DHT, JPG and DAC), which carry the image size.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data) -> tuple[int, int] | None:
  """(height, width) from a JPEG's header without decoding it; None if it is not a readable JPEG."""
  data = bytes(data[:65536]) if not isinstance(data, bytes) else data
  if data[:2] != b'\xff\xd8':
    return None
  i = 2
  while i + 9 <= len(data):
    if data[i] != 0xFF:
      return None
    marker = data[i + 1]
    if marker == 0xFF:  # Fill byte.
      i += 1
    elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # Markers without a length.
      i += 2
    elif marker in _SOF:
      return int.from_bytes(data[i + 5:i + 7], 'big'), int.from_bytes(data[i + 7:i + 9], 'big')
    else:
      i += 2 + int.from_bytes(data[i + 2:i + 4], 'big')
  return None


class EncodedClip:
  """The sampled frames of a clip, still encoded: train_spatial decodes them once it knows the crop,
  at reduced scale when the crop allows. Repeated indices (short videos loop) are decoded once."""

  def __init__(self, encoded, indices=None):
    if isinstance(encoded, (bytes, np.bytes_)):
      encoded = [encoded]
    if len(encoded) == 0:
      raise DecodeError('no frames')
    self.encoded = encoded
    self.indices = np.arange(len(encoded)) if indices is None else np.asarray(indices)
    # Frames of a clip share one size (checked when decoding), so the first frame's header tells it.
    self.size = jpeg_size(encoded[int(self.indices[0])])

  def __len__(self):
    return len(self.indices)

  def decode_bgr(self, reduce: int = 1) -> list:
    """One BGR (h, w, 3) array per index (shared between repeats), decoded at 1/reduce scale."""
    cache, frames = {}, []
    for i in self.indices.tolist():
      if i not in cache:
        data = self.encoded[i]
        img = (cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD[reduce] |
                            cv2.IMREAD_IGNORE_ORIENTATION) if len(data) else None)
        if img is None:
          raise DecodeError(f'frame {i} is not a decodable image ({len(data)} bytes)')
        if frames and img.shape != frames[0].shape:
          raise DecodeError(f'frame {i} has shape {img.shape}, frame '
                            f'{self.indices[0]} has {frames[0].shape}')
        cache[i] = img
      frames.append(cache[i])
    return frames

  def decode(self) -> np.ndarray:
    """uint8 (t, h, w, 3) RGB at full scale."""
    return np.stack(self.decode_bgr())[..., ::-1]  # OpenCV decodes to BGR.


def decode_frames(encoded, indices=None) -> np.ndarray:
  """Decodes the selected JPEG/PNG frames to uint8 (t, h, w, 3) RGB; only those are decoded."""
  return EncodedClip(encoded, indices).decode()


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

def short_side_shape(h: int, w: int, size: int) -> tuple[int, int]:
  """(height, width) with the short side resized to `size`, aspect kept."""
  return (size, max(size, round(w * size / h))) if h <= w else (max(size, round(h * size / w)), size)


def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
  _, h, w, _ = frames.shape
  if min(h, w) == size:
    return frames
  nh, nw = short_side_shape(h, w, size)
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


def jitter_box(h, w, min_resize, max_resize, size, rng):
  """Scale jitter + random crop as a box of the source frame: the short side is drawn in
  [min_resize, max_resize] and a size x size crop of the frame resized to it; returned is the
  (top, left, height, width) of the source that this crop shows (floats)."""
  nh, nw = short_side_shape(h, w, int(rng.integers(min_resize, max_resize + 1)))
  top, left = int(rng.integers(0, nh - size + 1)), int(rng.integers(0, nw - size + 1))
  return top * h / nh, left * w / nw, size * h / nh, size * w / nw


def rrc_box(h, w, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
  """Inception-style box (top, left, height, width): area fraction in `scale`, aspect ratio (w/h,
  log-uniform) in `ratio`; after `attempts` misses, the centre crop of the largest box with a ratio
  in range (torchvision's rule)."""
  area = h * w
  for _ in range(attempts):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
  in_ratio = w / h
  if in_ratio < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif in_ratio > ratio[1]:
    ch, cw = h, int(round(h * ratio[1]))
  else:
    cw, ch = w, h
  return (h - ch) // 2, (w - cw) // 2, ch, cw


def reduction(box, size: int) -> int:
  """The JPEG decode scale 1/r (r in 8, 4, 2, 1) for a box (source pixels) resized to size x size:
  the largest r for which the box still spans at least `size` pixels on both sides at 1/r, so the
  reduced decode is still shrunk (or kept) on the way to the crop, never enlarged."""
  for r in (8, 4, 2):
    if min(box[2], box[3]) >= r * size:
      return r
  return 1


def crop_resize(frames, box, size: int) -> np.ndarray:
  """The box (top, left, height, width; floats, rounded to whole source pixels) of every frame
  (a (t, h, w, 3) array or a list of (h, w, 3) arrays) resized to (t, size, size, 3): area
  interpolation when shrinking, bilinear when enlarging. Only the box is resized, so this costs
  the output's pixels, not the resized frame's."""
  h, w = frames[0].shape[:2]
  y0, x0 = min(int(round(box[0])), h - 1), min(int(round(box[1])), w - 1)
  y1 = max(min(int(round(box[0] + box[2])), h), y0 + 1)
  x1 = max(min(int(round(box[1] + box[3])), w), x0 + 1)
  interp = cv2.INTER_AREA if min(y1 - y0, x1 - x0) > size else cv2.INTER_LINEAR
  out = np.empty((len(frames), size, size, frames[0].shape[2]), frames[0].dtype)
  for i, f in enumerate(frames):
    cv2.resize(f[y0:y1, x0:x1], (size, size), dst=out[i], interpolation=interp)
  return out


def random_resized_crop(frames, size, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
  """`rrc_box` resized to size x size, the same box for every frame."""
  _, h, w, _ = frames.shape
  return crop_resize(frames, rrc_box(h, w, rng, scale, ratio, attempts), size)


def train_spatial(frames, *, min_resize, max_resize, crop_size, flip, rng, crop='scale_jitter',
                  rrc_scale=(0.08, 1.0), rrc_ratio=(3 / 4, 4 / 3), randaugment_layers=0,
                  randaugment_magnitude=9):
  """Short-side scale jitter then random crop ('scale_jitter') or random-resized crop
  ('random_resized'); optional horizontal flip; optional RandAugment, the same for all frames.

  `frames` is uint8 (t, h, w, 3) RGB or an `EncodedClip`. The crop is drawn first, as a box of the
  source, and only that box is resized (not the whole frame). An EncodedClip is decoded after the
  draw, at 1/2, 1/4 or 1/8 scale when the box still spans crop_size pixels at that scale
  (`reduction`): e.g. ImageNet photos under random-resized crop; 256 px Kinetics frames under a
  [256, 320] jitter are always decoded at full scale. RandAugment then runs on the crop_size
  clip."""
  encoded = isinstance(frames, EncodedClip)
  if encoded and frames.size is None:  # Not a JPEG we can read the size of: decode it all.
    frames, encoded = frames.decode(), False
  h, w = frames.size if encoded else frames.shape[1:3]
  if crop == 'random_resized':
    box = rrc_box(h, w, rng, tuple(rrc_scale), tuple(rrc_ratio))
  else:
    box = jitter_box(h, w, min_resize, max_resize, crop_size, rng)
  if encoded:
    bgr = frames.decode_bgr(reduction(box, crop_size))
    sy, sx = bgr[0].shape[0] / h, bgr[0].shape[1] / w  # libjpeg: ceil(side / r)
    frames = crop_resize(bgr, (box[0] * sy, box[1] * sx, box[2] * sy, box[3] * sx), crop_size)
    cv2.cvtColor(_flat(frames), cv2.COLOR_BGR2RGB, dst=_flat(frames))
  else:
    frames = crop_resize(frames, box, crop_size)
  if flip and rng.random() < 0.5:
    frames = cv2.flip(_flat(frames), 1).reshape(frames.shape)  # Each row of each frame reversed.
  if randaugment_layers:
    frames = randaugment(frames, randaugment_layers, randaugment_magnitude, rng)
  return np.ascontiguousarray(frames)


def eval_spatial(frames, *, min_resize, crop_size, view, num_views):
  frames = resize_short_side(frames, min_resize)
  return np.ascontiguousarray(spatial_view_crop(frames, crop_size, view, num_views))


def normalize(x: np.ndarray, method: str) -> np.ndarray:
  """uint8 -> float32: 'minus_one_to_one' gives [-1, 1]; 'imagenet' and 'kinetics' subtract the
  mean and divide by the std of those datasets (use 'kinetics' for converted TimeSformer
  checkpoints); ('custom', mean, std) takes the per-channel mean and std of pixels in [0, 1] (a
  published checkpoint's image processor values)."""
  # Temporaries of a batch's size cost more than the arithmetic: one float32 buffer, in place.
  if isinstance(method, tuple):  # ('custom', mean, std), both on pixels in [0, 1]
    mean, std = (np.array(v, np.float32) * 255 for v in method[1:])
  elif method not in _MEAN_STD:
    raise ValueError(f'unknown normalization {method!r}; use one of {tuple(_MEAN_STD)}')
  elif method == 'minus_one_to_one':
    out = np.array(x, np.float32)  # A new array: the caller's stays as it is.
    out *= np.float32(1 / 127.5)
    out -= 1  # Exactly -1 and 1 at 0 and 255.
    return out
  else:
    mean, std = _MEAN_STD[method]
  # Per-channel constants: OpenCV's per-channel scalars beat numpy's broadcasting over a last axis
  # of 3 by 4x, with the same float32 results.
  shape = np.shape(x)
  flat = np.ascontiguousarray(x).reshape(-1, shape[-2] if len(shape) > 1 else 1, 3)
  out = cv2.subtract(flat, (*mean.tolist(), 0.0), dtype=cv2.CV_32F)
  cv2.multiply(out, (*(1 / std).tolist(), 0.0), dst=out)
  return out.reshape(shape)


# ------------------------------------------------------------------------------------ RandAugment
# Cubuk et al. 2020, the paper's 14 operations. Each of `num_layers` rounds picks one op uniformly and
# applies it at magnitude M (0..10, as `magnitude / 10` of the ranges below, with a random sign for
# the signed ops). For a clip, the ops, their signs and the statistics they use (min/max, histogram,
# mean) are drawn once over the whole clip, so every frame gets the same transform.
# Speed: everything stays uint8. Ops that map each value on its own (AutoContrast, Equalize,
# Solarize, Posterize, Contrast, Brightness) are one lookup table over the whole clip; the others
# are one OpenCV call over the clip seen as a single (t * h, w, 3) image, except Rotate and Shear,
# which warp frame by frame.
RANDAUGMENT_OPS = ('Identity', 'AutoContrast', 'Equalize', 'Rotate', 'Solarize', 'Color',
                   'Posterize', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
                   'TranslateX', 'TranslateY')
MAX_ROTATE = 30.0       # degrees
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.45    # fraction of the side (timm's translate_pct), rounded to whole pixels
MAX_ENHANCE = 0.9       # Color/Contrast/Brightness/Sharpness factor 1 +- 0.9 m
FILL = 128              # what geometric ops bring in at the borders
_VALUES = np.arange(256, dtype=np.float64)


def _flat(frames):
  """(t, h, w, 3) -> (t * h, w, 3), one image to OpenCV (which takes at most 2-D + channels)."""
  t, h, w, _ = frames.shape
  return np.ascontiguousarray(frames).reshape(t * h, w, 3)


def _lut(frames, lut):
  """A lookup table applied to (t, h, w, 3) uint8: (256,) for all channels, (256, 3) per channel."""
  lut = np.clip(lut, 0, 255).astype(np.uint8)
  if lut.ndim == 1:  # One table: the clip as one single-channel image, the fastest LUT.
    t, h, w, _ = frames.shape
    return cv2.LUT(np.ascontiguousarray(frames).reshape(t * h, w * 3), lut).reshape(frames.shape)
  return cv2.LUT(_flat(frames), lut.reshape(1, 256, 3)).reshape(frames.shape)


def _blend_lut(degenerate: float, factor: float):
  """The table of degenerate + factor * (v - degenerate), rounded (half to even, as OpenCV's
  saturate_cast) and saturated."""
  return np.rint(degenerate + factor * (_VALUES - degenerate))


def _blend(degenerate, frames, factor):
  """degenerate + factor * (frames - degenerate), rounded and saturated, for a degenerate image of
  the frames' shape."""
  out = cv2.addWeighted(_flat(frames), float(factor), _flat(degenerate), float(1 - factor), 0.0)
  return out.reshape(frames.shape)


def _grey(frames):
  """uint8 luma (t*h, w) of the clip, ITU-R 601 like PIL's convert('L')."""
  return cv2.cvtColor(_flat(frames), cv2.COLOR_RGB2GRAY)


def _affine(frames, matrix):
  _, h, w, _ = frames.shape
  out = np.empty_like(frames)
  for i, f in enumerate(frames):
    cv2.warpAffine(f, matrix, (w, h), dst=out[i], flags=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL,) * 3)
  return out


def _translate(frames, dy: int, dx: int):
  """Shift by whole pixels (down/right for positive), FILL where nothing comes in."""
  _, h, w, _ = frames.shape
  out = np.full_like(frames, FILL)
  if abs(dy) < h and abs(dx) < w:
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        frames[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
  return out


def _histograms(frames):
  """(256, 3) int64 histogram of each channel over the whole clip."""
  x = _flat(frames)
  return np.stack([cv2.calcHist([x], [c], None, [256], [0, 256]).ravel() for c in range(3)],
                  axis=1).astype(np.int64)


def _auto_contrast(frames):
  """PIL's ImageOps.autocontrast: each channel's range over the clip stretched to [0, 255]."""
  hist = _histograms(frames)
  luts = []
  for c in range(3):
    used = np.flatnonzero(hist[:, c])
    lo, hi = used[0], used[-1]
    luts.append(np.round((_VALUES - lo) * (255 / (hi - lo))) if hi > lo else _VALUES)
  return _lut(frames, np.stack(luts, axis=1))


def _equalize(frames):
  """PIL's ImageOps.equalize, per channel, with one histogram for the whole clip."""
  luts = []
  for hist in _histograms(frames).T:
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
    return _lut(frames, np.where(_VALUES >= 256 - 256 * m, 255 - _VALUES, _VALUES))
  if op == 'Color':
    grey = cv2.cvtColor(_grey(frames), cv2.COLOR_GRAY2RGB).reshape(frames.shape)
    return _blend(grey, frames, enhance)
  if op == 'Posterize':  # Keep 8 - int(4 m) bits: M=10 keeps 4.
    return frames & np.uint8((0xFF << int(4 * m)) & 0xFF)
  if op == 'Contrast':  # Blend with the clip's mean grey level.
    return _lut(frames, _blend_lut(float(_grey(frames).mean()), enhance))
  if op == 'Brightness':  # Blend with black.
    return _lut(frames, _blend_lut(0.0, enhance))
  if op == 'Sharpness':  # Blend with PIL's SMOOTH filter; borders stay as they are.
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
    # One filter over the clip seen as one tall image: only each frame's first and last rows see
    # the neighbouring frame, and those border rows are put back below.
    smooth = cv2.filter2D(_flat(frames), -1, kernel).reshape(frames.shape)
    smooth[:, [0, -1]] = frames[:, [0, -1]]
    smooth[:, :, [0, -1]] = frames[:, :, [0, -1]]
    return _blend(smooth, frames, enhance)
  if op in ('ShearX', 'ShearY'):
    s = MAX_SHEAR * m * sign
    matrix = [[1, s, -s * h / 2], [0, 1, 0]] if op == 'ShearX' else [[1, 0, 0], [s, 1, -s * w / 2]]
    return _affine(frames, np.array(matrix, np.float32))
  if op == 'TranslateX':
    return _translate(frames, 0, round(MAX_TRANSLATE * m * sign * w))
  if op == 'TranslateY':
    return _translate(frames, round(MAX_TRANSLATE * m * sign * h), 0)
  raise ValueError(f'unknown RandAugment op {op!r}; known: {RANDAUGMENT_OPS}')


def randaugment(frames, num_layers: int, magnitude: float, rng):
  """RandAugment(N=num_layers, M=magnitude) with one draw per clip, applied to every frame."""
  frames = np.ascontiguousarray(frames)
  for _ in range(num_layers):
    op = RANDAUGMENT_OPS[int(rng.integers(len(RANDAUGMENT_OPS)))]
    sign = 1 if rng.random() < 0.5 else -1
    frames = randaugment_op(frames, op, magnitude / 10, sign)
  return np.ascontiguousarray(frames)
