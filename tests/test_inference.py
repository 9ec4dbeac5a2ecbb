"""Video files outside the prepared datasets: the frame rate a dataset was stored at, --segments,
a file's eval views, segments of a long file, and batches padded to one shape."""
import types

import jax
import numpy as np
import pytest

from sparse_tubes import defaults
from sparse_tubes import inference
from sparse_tubes.data import video_io


@pytest.mark.parametrize('name,fps', [
    ('kinetics400', 25.0), ('kinetics700/10fps_128px', 10.0), ('kinetics400/12.5fps_256px', 12.5),
    ('ssv2', None), ('ssv2/native_256px', None), ('moving_shapes/video', None)])
def test_dataset_fps(name, fps):
  assert inference.dataset_fps(name) == fps


def test_decode_fps_prefers_the_flag():
  ds = types.SimpleNamespace(tfds_name='kinetics400')
  assert inference.decode_fps(ds) == 25.0 and inference.decode_fps(ds, 8.0) == 8.0


@pytest.mark.parametrize('value,out', [('10', (10.0, 10.0)), ('10:5', (10.0, 5.0)),
                                       ('2.5:7', (2.5, 7.0))])
def test_parse_segments(value, out):
  assert inference.parse_segments(value) == out


@pytest.mark.parametrize('value', ['', 'x', '10:', '0', '-1', '10:0', '1:2:3', 'inf'])
def test_parse_segments_errors(value):
  with pytest.raises(ValueError, match='give SECONDS or SECONDS:STRIDE'):
    inference.parse_segments(value)


DS = defaults.dataset(tfds_name='moving_shapes/video', kind='video', num_frames=4, frame_stride=1,
                      crop_size=24, min_resize=28, max_resize=32, eval_temporal_views=2,
                      eval_spatial_views=3)


@pytest.fixture(scope='module')
def video(tmp_path_factory):
  """2 s at 10 fps, 32x48 frames."""
  path = str(tmp_path_factory.mktemp('video') / 'clip.mp4')
  frames = np.random.default_rng(0).integers(0, 255, (20, 32, 48, 3), np.uint8)
  video_io.write_video(path, frames, 10)
  return path


def test_video_views_are_the_evaluations_views(video):
  views = inference.video_views(video, DS)
  assert views.shape == (6, 4, 24, 24, 3) and views.dtype == np.float32
  assert inference.video_views(video, DS, fps=5.0).shape == (6, 4, 24, 24, 3)


def test_segments_cover_the_file_holding_one_segment(video):
  stats = {}
  segs = list(inference.segments(video, DS, seconds=0.8, stride=0.6, stats=stats))
  # 20 frames, windows of 8 every 6: [0, 8), [6, 14), [12, 20); nothing left after the last.
  assert [(s.index, s.start, s.end, s.frames) for s in segs] == [
      (0, 0.0, 0.8, 8), (1, 0.6, 1.4, 8), (2, 1.2, 2.0, 8)]
  assert all(s.views.shape == (6, 4, 24, 24, 3) for s in segs)
  assert stats == {'fps': 10.0, 'max_buffered': 8, 'frames': 20}
  last = list(inference.segments(video, DS, seconds=1.5))  # a shorter last segment
  assert [(s.start, s.end, s.frames) for s in last] == [(0.0, 1.5, 15), (1.5, 2.0, 5)]
  whole = list(inference.segments(video, DS, seconds=60))
  assert [(s.start, s.end, s.frames) for s in whole] == [(0.0, 2.0, 20)]


def test_batches_are_padded_to_one_shape():
  model = object.__new__(inference.Model)  # the batching alone: no checkpoint
  mesh = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  model.restored = types.SimpleNamespace(mesh=mesh, rules=())
  model.params, model.batch_size = 10.0, 4
  shapes = []

  def fn(params, x):
    shapes.append(x.shape)
    return x.reshape(len(x), -1).sum(-1) + params

  x = np.arange(9 * 2, dtype=np.float32).reshape(9, 2)
  out = model._run(fn, x)
  assert shapes == [(4, 2)] * 3
  np.testing.assert_array_equal(out, x.sum(-1) + 10.0)
