"""The built-in moving-shapes dataset: generator, TFDS builder, ensure_built."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sparse_tubes.data import builtin
from sparse_tubes.data import transforms

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_generator_is_deterministic_per_split_and_index():
  a, la = builtin.moving_shapes_video('train', 5)
  b, lb = builtin.moving_shapes_video('train', 5)
  assert a.shape == (16, 40, 40, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert la == lb and 0 <= la < len(builtin.DIRECTIONS)
  assert not np.array_equal(a, builtin.moving_shapes_video('train', 6)[0])
  assert not np.array_equal(a, builtin.moving_shapes_video('test', 5)[0])
  img, shape = builtin.moving_shapes_image('train', 5)
  assert img.shape == (40, 40, 3) and img.dtype == np.uint8 and 0 <= shape < len(builtin.SHAPES)


def _motion_direction(frames: np.ndarray) -> int:
  """Direction from pixels: the moving shape's centroid (on the torus) from frame to frame."""
  x = frames.astype(np.float32)
  # The temporal median removes the static texture and distractor; what moves stands out.
  weight = (np.abs(x - np.median(x, axis=0)).sum(-1) > 90).astype(np.float32)
  phase = 2 * np.pi * (np.arange(builtin.SIZE) + 0.5) / builtin.SIZE

  def centroid(w, axis):
    p = w.sum(axis=axis)
    return np.angle((p * np.exp(1j * phase)).sum()) * builtin.SIZE / (2 * np.pi)

  cx = np.array([centroid(w, 0) for w in weight])
  cy = np.array([centroid(w, 1) for w in weight])
  wrap = lambda d: (d + builtin.SIZE / 2) % builtin.SIZE - builtin.SIZE / 2
  dx, dy = np.median(wrap(np.diff(cx))), np.median(wrap(np.diff(cy)))
  return int(np.round(np.arctan2(-dy, dx) / (np.pi / 4))) % 8


def _frame0_features(split, n):
  feats, labels = [], []
  for i in range(n):
    frames, label = builtin.moving_shapes_video(split, i)
    feats.append(frames[0, ::4, ::4].astype(np.float32).ravel())
    labels.append(label)
  return np.stack(feats), np.array(labels)


def test_label_needs_time():
  # One frame is uninformative: a nearest-class-mean classifier on frame 0 stays near chance (1/8)...
  x_train, y_train = _frame0_features('train', 400)
  x_test, y_test = _frame0_features('test', 200)
  means = np.stack([x_train[y_train == k].mean(0) for k in range(8)])
  pred = np.argmin(((x_test[:, None] - means[None]) ** 2).sum(-1), axis=1)
  assert np.mean(pred == y_test) < 0.25
  # ... while the motion between frames gives the label almost always.
  videos = [builtin.moving_shapes_video('test', i) for i in range(100)]
  assert np.mean([_motion_direction(v) == label for v, label in videos]) > 0.9


def test_builder_features_splits_and_jpeg_roundtrip(tiny_data_dir):
  builder = builtin.ensure_built('moving_shapes/video_tiny', tiny_data_dir)
  info = builder.info
  assert {s: v.num_examples for s, v in info.splits.items()} == {'train': 64, 'test': 16}
  assert tuple(info.features['label'].names) == builtin.DIRECTIONS
  source = builder.as_data_source('test')
  example = source[0]
  video = np.stack(example['video'])  # TFDS's own numpy decoding, a list of frames.
  assert video.shape == (16, 40, 40, 3)
  expected, label = builtin.moving_shapes_video('test', int(example['id']))
  assert example['label'] == label
  # JPEG (quality 90, 4:2:0 chroma) on per-pixel noise; swapped colour channels would be far worse.
  direct = np.abs(video.astype(float) - expected).mean()
  swapped = np.abs(video.astype(float) - expected[..., ::-1]).mean()
  assert direct < 16 and swapped > 2 * direct, (direct, swapped)

  image = builtin.ensure_built('moving_shapes/image_tiny', tiny_data_dir)
  assert tuple(image.info.features['label'].names) == builtin.SHAPES
  assert image.as_data_source('train')[0]['image'].shape == (40, 40, 3)
  assert 'tensorflow' not in sys.modules


def test_jpeg_helpers_roundtrip():
  frames, _ = builtin.moving_shapes_video('train', 0)
  encoded = [transforms.encode_jpeg(f) for f in frames[:3]]
  decoded = transforms.decode_frames(encoded, [2, 0])
  assert decoded.shape == (2, 40, 40, 3)
  assert np.abs(decoded[0].astype(float) - frames[2]).mean() < 16  # RGB order survives cv2's BGR.
  with pytest.raises(transforms.DecodeError):
    transforms.decode_frames([b'not a jpeg'])
  with pytest.raises(transforms.DecodeError):
    transforms.decode_frames([])


def test_ensure_built_reuses_the_cache(tiny_data_dir):
  version_dir = os.path.join(tiny_data_dir, 'moving_shapes', 'video_tiny',
                             str(builtin.MovingShapes.VERSION))
  before = os.stat(os.path.join(version_dir, 'dataset_info.json')).st_mtime_ns
  builtin.ensure_built('moving_shapes/video_tiny', tiny_data_dir)
  assert os.stat(os.path.join(version_dir, 'dataset_info.json')).st_mtime_ns == before


def test_two_processes_build_once(tmp_path):
  script = textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {REPO!r})
      from sparse_tubes.data import builtin
      b = builtin.ensure_built('moving_shapes/image_tiny', {str(tmp_path)!r})
      print('SPLITS', b.info.splits['train'].num_examples)
  """)
  procs = [subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  assert all('SPLITS 64' in o for o in outs)
  # Printed once per build: the second process found the data ready after the lock.
  assert sum(o.count('Building the built-in dataset') for o in outs) == 1, outs
  # A first run prints nothing a user cannot act on: no TFDS warnings, no "Downloading ...".
  for o in outs:
    assert 'WARNING' not in o and 'dataset_info.json' not in o and 'Downloading' not in o, o


def test_missing_dataset_names_the_fix(tmp_path):
  with pytest.raises(ValueError) as e:
    builtin.ensure_built('no_such_dataset/full', str(tmp_path))
  msg = str(e.value)
  assert 'no_such_dataset/full' in msg and str(tmp_path) in msg and 'prepare' in msg
  assert 'config.data_dir' in msg


def test_resolve_data_dir(monkeypatch):
  assert builtin.resolve_data_dir('/data/tfds') == '/data/tfds'
  monkeypatch.setenv('SPARSE_TUBES_DATA_DIR', '/env/tfds')
  assert builtin.resolve_data_dir('') == '/env/tfds'
  monkeypatch.delenv('SPARSE_TUBES_DATA_DIR')
  assert builtin.resolve_data_dir('') == os.path.expanduser('~/.cache/sparse_tubes/tfds')


def test_videos_unchanged_images_larger_and_cleaner():
  """Version 1.2.0 changed the images only: a video is the 1.1.0 one, bit for bit."""
  import hashlib
  frames, direction = builtin.moving_shapes_video('test', 3)
  assert hashlib.sha256(frames.tobytes()).hexdigest()[:16] == '0b0c6491391219b1' and direction == 5
  # An image's shape covers at least the smallest IMAGE_SHAPE_SIZE triangle (half of 16x16 px).
  img, _ = builtin.moving_shapes_image('test', 3)
  bright = (img.max(-1) == 255).sum()
  assert bright >= 0.5 * builtin.IMAGE_SHAPE_SIZE[0] ** 2


def test_paper_size_variant_is_the_video_clip_upsampled():
  """moving_shapes/video_paper: Kinetics-sized clips (64 frames of 256x256 JPEG) of the same
  generator, for measuring the input pipeline at the papers' clip size."""
  import cv2
  import numpy as np
  import tensorflow_datasets as tfds
  from sparse_tubes.data import builtin
  b = tfds.builder('moving_shapes/video_paper', data_dir='/nonexistent', file_format='array_record')
  assert b.info.features['video'].shape == (None, 256, 256, 3)
  (index, ex), = list(b._generate_examples('train', 1))
  frames = [cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR) for f in ex['video']]
  assert len(frames) == 64 and frames[0].shape == (256, 256, 3)
  small, label, _ = builtin.generate('video', 'train', 0, num_frames=64)
  assert ex['label'] == label and index == 0


def test_paper_res_config_reads_the_paper_size_data():
  import os
  from sparse_tubes import config as config_lib
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  c = config_lib.load(os.path.join(repo, 'configs/synthetic/paper_res.py:vivit_b16x2_m1'))
  ds, = c.datasets.values()
  assert ds.tfds_name == 'moving_shapes/video_paper' and ds.num_frames == 32 and ds.crop_size == 224
