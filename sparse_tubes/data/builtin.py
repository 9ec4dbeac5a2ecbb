"""The built-in "moving shapes" dataset: a TFDS builder over a procedural generator.

Video: 16 frames of 40x40 RGB, a textured background with fresh noise in every frame, one shape
(square, circle or triangle; random colour and size) moving at constant speed in one of 8 directions,
and sometimes a static distractor shape. The label is the direction of motion. Motion wraps around the
borders and the start is uniform, so every single frame has the same distribution whatever the label:
a space-only model stays at chance, a model that compares frames can solve it.
Image: one frame from the same generator, without distractor, with a larger shape and less noise
(IMAGE_SHAPE_SIZE, IMAGE_NOISE) so that a tiny model tells the three shapes apart; the label is the
shape.

Both are written like the real datasets (JPEG frames in `Sequence(Image)`, array_record files) and read
through the same pipelines. `ensure_built` is also the one entry point that opens any other prepared
TFDS dataset, with a clear error when it is missing.
"""
import contextlib
import dataclasses
import fcntl
import os
import time
import zlib

from absl import logging
import cv2
import numpy as np
import tensorflow_datasets as tfds

from sparse_tubes import compat
from sparse_tubes.data import transforms

SIZE = 40
NUM_FRAMES = 16
# Angle k * 45 degrees counter-clockwise from the +x axis, with "up" towards row 0.
DIRECTIONS = ('right', 'up_right', 'up', 'up_left', 'left', 'down_left', 'down', 'down_right')
SHAPES = ('square', 'circle', 'triangle')
SPEED = (1.5, 2.0)          # pixels per frame
SHAPE_SIZE = (8.0, 12.0)    # pixels, side / diameter / triangle base
DISTRACTOR_PROB = 0.5
NOISE = 12.0                # std of the per-frame pixel noise
# Images: at 8-12 pixels a square, a circle and a triangle differ by a few pixels, and the tiny
# co-trained TubeViT had 55% image top-1 (chance 33%) after 600 steps; at 16-22 pixels and less
# noise it reaches 73% after 300 (README, Evaluation).
IMAGE_SHAPE_SIZE = (16.0, 22.0)
IMAGE_NOISE = 4.0
JPEG_QUALITY = 90

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE] + 0.5


def _rng(kind: str, split: str, index: int) -> np.random.Generator:
  # Seeded by (kind, split, index) only: an example never depends on what else was generated.
  return np.random.default_rng([zlib.crc32(f'{kind}/{split}'.encode()), index])


def _shape_mask(shape: int, cx: float, cy: float, size: float) -> np.ndarray:
  """Boolean (SIZE, SIZE) mask of a shape centred at (cx, cy) on a torus (it wraps at the borders)."""
  dx = (_XX - cx + SIZE / 2) % SIZE - SIZE / 2
  dy = (_YY - cy + SIZE / 2) % SIZE - SIZE / 2
  r = size / 2
  if SHAPES[shape] == 'square':
    return (np.abs(dx) <= r) & (np.abs(dy) <= r)
  if SHAPES[shape] == 'circle':
    return dx * dx + dy * dy <= r * r
  return (np.abs(dy) <= r) & (np.abs(dx) <= (dy + r) / 2)  # Triangle, apex up.


def _colour(rng) -> np.ndarray:
  # Bright, with one saturated channel: the shape stands out from the darker background.
  c = rng.uniform(120, 255, 3)
  c[rng.integers(3)] = 255
  return c


def _background(rng, num_frames: int, noise: float = NOISE) -> np.ndarray:
  """Smooth static texture plus fresh per-frame noise, float (t, SIZE, SIZE, 3)."""
  coarse = rng.uniform(0, 100, (6, 6, 3)).astype(np.float32)
  texture = cv2.resize(coarse, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
  return texture[None] + rng.normal(0, noise, (num_frames, SIZE, SIZE, 3)).astype(np.float32)


def generate(kind: str, split: str, index: int, num_frames: int = NUM_FRAMES, distractor: bool = True,
             shape_size: tuple = SHAPE_SIZE, noise: float = NOISE):
  """One example as (uint8 frames (t, SIZE, SIZE, 3), direction label, shape label)."""
  rng = _rng(kind, split, index)
  # Everything is drawn independently of the direction, so position and looks carry no label.
  direction = int(rng.integers(len(DIRECTIONS)))
  shape = int(rng.integers(len(SHAPES)))
  size = rng.uniform(*shape_size)
  colour = _colour(rng)
  x0, y0 = rng.uniform(0, SIZE, 2)
  speed = rng.uniform(*SPEED)
  angle = direction * np.pi / 4
  vx, vy = speed * np.cos(angle), -speed * np.sin(angle)

  frames = _background(rng, num_frames, noise)
  if distractor and rng.random() < DISTRACTOR_PROB:
    dmask = _shape_mask(int(rng.integers(len(SHAPES))), *rng.uniform(0, SIZE, 2),
                        rng.uniform(*SHAPE_SIZE))
    frames[:, dmask] = _colour(rng)
  for t in range(num_frames):
    frames[t, _shape_mask(shape, x0 + t * vx, y0 + t * vy, size)] = colour
  return np.clip(frames, 0, 255).astype(np.uint8), direction, shape


def moving_shapes_video(split: str, index: int):
  frames, direction, _ = generate('video', split, index)
  return frames, direction


def moving_shapes_image(split: str, index: int):
  frames, _, shape = generate('image', split, index, num_frames=1, distractor=False,
                             shape_size=IMAGE_SHAPE_SIZE, noise=IMAGE_NOISE)
  return frames[0], shape


@dataclasses.dataclass
class MovingShapesConfig(tfds.core.BuilderConfig):
  kind: str = 'video'
  num_train: int = 2048
  num_test: int = 256
  num_frames: int = NUM_FRAMES
  size: int = SIZE          # frames are drawn at SIZE and resized to this (bilinear)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Base of this project's TFDS builders (abstract, so TFDS does not register it)."""

  # TFDS looks for a checksums file next to a builder's code through `importlib_resources`, which is
  # not installed (nor needed on Python >= 3.9). Our builders' checksums are not kept in the code tree.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  # A first run must print nothing a user cannot act on. TFDS's own check logs a warning ("Variant
  # folder ... has no dataset_info.json") for every dataset not built yet; this is the same test.
  def is_prepared(self) -> bool:
    return (self.data_path / 'dataset_info.json').exists()

  # TFDS announces "Downloading and preparing dataset Unknown size ..." and "... downloaded and
  # prepared"; nothing is downloaded here, and the callers print one line of their own instead.
  @compat.overrides('tfds_log_download_bytes')
  def _log_download_bytes(self):
    pass

  @compat.overrides('tfds_log_download_done')
  def _log_download_done(self):
    pass


def video_features(label_names, height=None, width=None) -> tfds.features.FeaturesDict:
  """The video layout every video dataset here shares: JPEG frames, a class label and an id.

  Sequence(Image(jpeg)) rather than tfds.features.Video, which imports TensorFlow even to read; the
  builder hands it JPEG bytes it encoded itself.
  """
  frame = tfds.features.Image(shape=(height, width, 3), encoding_format='jpeg')
  return tfds.features.FeaturesDict({'video': tfds.features.Sequence(frame),
                                     'label': tfds.features.ClassLabel(names=label_names),
                                     'id': np.int64})


def image_features(label_names, height=None, width=None) -> tfds.features.FeaturesDict:
  frame = tfds.features.Image(shape=(height, width, 3), encoding_format='jpeg')
  return tfds.features.FeaturesDict({'image': frame,
                                     'label': tfds.features.ClassLabel(names=label_names),
                                     'id': np.int64})


class MovingShapes(Builder):
  """Shapes moving on noise; video label = direction of motion, image label = shape."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Darker background, brighter shapes: learnable by a tiny model in minutes.',
                   '1.2.0': 'Images: larger shapes (16-22 px), less noise; videos unchanged.'}
  BUILDER_CONFIGS = [
      MovingShapesConfig(name='video', kind='video', num_train=2048, num_test=256,
                         description='16x40x40 clips, label = direction (8 classes).'),
      MovingShapesConfig(name='image', kind='image', num_train=2048, num_test=256,
                         description='40x40 frames, label = shape (3 classes).'),
      MovingShapesConfig(name='video_tiny', kind='video', num_train=64, num_test=16,
                         description='Small video set for tests.'),
      MovingShapesConfig(name='image_tiny', kind='image', num_train=64, num_test=16,
                         description='Small image set for tests.'),
      # Kinetics-sized input without Kinetics: what `bench step --with_data` needs to tell whether a
      # host's decode + augment keeps an accelerator fed at the papers' clip size (64 frames of
      # 256x256 JPEG, like a 2.5 s Kinetics clip at 25 fps after a short-side resize to 256).
      MovingShapesConfig(name='video_paper', kind='video', num_train=512, num_test=64,
                         num_frames=64, size=256,
                         description='64x256x256 clips (the video clips upsampled), 8 classes.'),
  ]

  def _info(self):
    size = self.builder_config.size
    if self.builder_config.kind == 'video':
      features = video_features(DIRECTIONS, size, size)
    else:
      features = image_features(SHAPES, size, size)
    return self.dataset_info_from_configs(features=features)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {'train': self._generate_examples('train', cfg.num_train),
            'test': self._generate_examples('test', cfg.num_test)}

  def _generate_examples(self, split, num_examples):
    # JPEG bytes encoded here: handing arrays to tfds.features.Image would encode with TensorFlow.
    for index in range(num_examples):
      if self.builder_config.kind == 'video':
        cfg = self.builder_config
        frames, label, _ = generate('video', split, index, num_frames=cfg.num_frames)
        if cfg.size != SIZE:
          frames = [cv2.resize(f, (cfg.size, cfg.size), interpolation=cv2.INTER_LINEAR)
                    for f in frames]
        example = {'video': [transforms.encode_jpeg(f, JPEG_QUALITY) for f in frames]}
      else:
        frame, label = moving_shapes_image(split, index)
        example = {'image': transforms.encode_jpeg(frame, JPEG_QUALITY)}
      yield index, {**example, 'label': label, 'id': index}


def resolve_data_dir(cfg_data_dir: str) -> str:
  """config.data_dir, or $SPARSE_TUBES_DATA_DIR, or ~/.cache/sparse_tubes/tfds."""
  data_dir = cfg_data_dir or os.environ.get('SPARSE_TUBES_DATA_DIR') or '~/.cache/sparse_tubes/tfds'
  return os.path.expanduser(data_dir)


@contextlib.contextmanager
def _file_lock(path: str):
  # flock is released by the kernel if the holder dies, so a crashed build never blocks later runs.
  with open(path, 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def ensure_built(tfds_name: str, data_dir: str):
  """The TFDS builder of `tfds_name` under `data_dir`, ready for `as_data_source`.

  The built-in dataset is generated on first use (once, even with several processes starting at the
  same time); any other dataset must have been prepared beforehand.
  """
  base_name = tfds_name.split('/')[0].split(':')[0]
  if base_name == MovingShapes.name:
    builder = tfds.builder(tfds_name, data_dir=data_dir, file_format='array_record')
    if builder.is_prepared():
      return builder
    os.makedirs(data_dir, exist_ok=True)
    with _file_lock(os.path.join(data_dir, f'.{tfds_name.replace("/", "_")}.lock')):
      # Another process may have finished the build while this one waited for the lock.
      builder = tfds.builder(tfds_name, data_dir=data_dir, file_format='array_record')
      if not builder.is_prepared():
        print(f'Building the built-in dataset {tfds_name} into {data_dir} (first use only)...',
              flush=True)
        start = time.perf_counter()
        tfds.disable_progress_bar()  # One line says more here than TFDS's per-split bars.
        builder.download_and_prepare(file_format='array_record')
        print(f'  done in {time.perf_counter() - start:.1f} s', flush=True)
    return builder

  fix = (f'Prepare it first (`python -m sparse_tubes prepare <dataset> --manual_dir=DIR '
         f'--data_dir=DIR` for Kinetics and SSv2, `tfds build NAME --file_format=array_record` for '
         f'TFDS catalogue datasets such as imagenet2012), or set '
         f'config.data_dir (or $SPARSE_TUBES_DATA_DIR) to a directory where it is prepared.')
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends: the name is unknown and not on disk.
    raise ValueError(f'Dataset {tfds_name!r} was not found in data_dir {data_dir!r}. {fix}') from e
  if not builder.is_prepared():
    raise ValueError(f'Dataset {tfds_name!r} is not prepared in data_dir {data_dir!r}. {fix}')
  return builder
