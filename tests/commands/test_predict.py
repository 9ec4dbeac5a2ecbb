"""`predict` on a real video file (written with PyAV) through the eval views, and on a .npy batch."""
import json
import os

import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

from flax import nnx

from sparse_tubes.commands import convert
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes import workdir as workdir_lib
from sparse_tubes.commands import predict
from sparse_tubes.data import builtin, pipeline, sources, transforms, video_io  # noqa: E402
from sparse_tubes.models import video_vit
from tests.pretrained import hf_helpers as H  # noqa: E402


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A HF TimeSformer (divided, 6 labels) converted without --config: one 'video' dataset at the
  checkpoint's clip size (4x32x32), 1x3 views, TimeSformer's Kinetics normalization."""
  root = tmp_path_factory.mktemp('predict')
  model = H.hf_model('timesformer', 'divided_space_time', num_labels=6, seed=4)
  model.save_pretrained(root / 'hf')
  convert.convert('hf', str(root / 'hf'), str(root / 'work'))
  return model, root / 'work'


def test_predict_video_file_through_eval_views(workdir, tmp_path, capsys):
  model, work = workdir
  config = workdir_lib.load_workdir(str(work))
  ds = config.datasets.video
  # The normalization of the source (TimeSformer: Kinetics mean 0.45, std 0.225), from convert.
  assert (ds.eval_temporal_views, ds.eval_spatial_views, ds.normalization) == (1, 3, 'kinetics')
  assert json.load(open(work / 'converted.json'))['preprocessing'] == {'normalization': 'kinetics'}
  config.unlock()
  ds.frame_stride = 2  # a 30-frame video holds a 4-frame clip at stride 2
  frames = np.random.default_rng(0).integers(0, 255, (30, 36, 48, 3), np.uint8)
  path = str(tmp_path / 'clip.mp4')
  video_io.write_video(path, frames, fps=25)

  views = predict.video_views(path, ds)
  assert views.shape == (3, H.T, H.SIZE, H.SIZE, 3) and views.dtype == np.float32
  # predict fed (pixel / 255 - 0.45) / 0.225: undone, the views are whole pixel values again.
  pixels = (views * 0.225 + 0.45) * 255
  np.testing.assert_allclose(pixels, np.round(pixels), atol=2e-3)
  assert pixels.min() > -0.01 and pixels.max() < 255.01
  result = predict.predict(config, str(work), path, top_k=2, save_logits=str(tmp_path / 'l.npy'))
  assert result['kind'] == 'video' and result['views'] == 3 and result['dataset'] == 'video'
  logits = np.load(tmp_path / 'l.npy')
  assert logits.shape == (1, 6)
  np.testing.assert_allclose(logits[0], H.hf_logits(model, views).mean(0), atol=1e-4)
  print(predict.format_result(result))
  out = capsys.readouterr().out
  best = f'class_{chr(97 + int(np.argmax(logits[0])))}'
  assert f'1. {best}' in out and '3 views averaged' in out and len(result['top'][0]) == 2


def test_predict_npy_fed_as_is(workdir, tmp_path):
  model, work = workdir
  config = workdir_lib.load_workdir(str(work))
  x = H.clips(batch=2, seed=9)
  np.save(tmp_path / 'x.npy', x)
  result = predict.predict(config, str(work), str(tmp_path / 'x.npy'), top_k=6)
  assert result['kind'] == 'npy' and result['logits'].shape == (2, 6)
  np.testing.assert_allclose(result['logits'], H.hf_logits(model, x), atol=1e-4)
  assert [t['label'] for t in result['top'][1]] == [
      f'class_{chr(97 + i)}' for i in np.argsort(-result['logits'][1])]
  with pytest.raises(ValueError, match='clip batch'):
    np.save(tmp_path / 'bad.npy', np.zeros((3, 3), np.float32))
    predict.predict(config, str(work), str(tmp_path / 'bad.npy'))


# ------------------------------------------------------------------------------ --segments

CLIP_SECONDS = 2.0  # a built-in clip: 16 frames, written at 8 fps


def _clips(direction: int, count: int, inverted: bool) -> list:
  """`count` built-in test clips moving in `direction`; colours inverted when `inverted`."""
  out, i = [], 0
  while len(out) < count:
    frames, d, _ = builtin.generate('video', 'test', i)
    i += 1
    if d == direction:
      out.append(255 - frames if inverted else frames)
  return out


@pytest.fixture(scope='module')
def segments_workdir(tmp_path_factory, make_config):
  """The tiny TubeViT, encoder at its random init, whose video head is set (least squares on the
  features of clips it never sees again) to say 'right' for the built-in clips as generated and
  'left' for the same kind with inverted colours: a property the test controls (telling motion
  directions apart takes minutes of training)."""
  config = make_config()
  ds = config.datasets.shapes_video
  classes = sources.num_classes(config, sources.dataset_infos(config)[1])
  model = video_vit.build_model(config.model, classes, rngs=nnx.Rngs(params=1))
  xs, ys = [], []
  for i in range(24):  # train clips, any direction; the test's video is made of test clips
    frames, _, _ = builtin.generate('video', 'train', i)
    inverted = i % 2 == 1
    jpegs = [transforms.encode_jpeg(f) for f in (255 - frames if inverted else frames)]
    views = pipeline.video_eval_views(ds, jpegs)
    xs.append(np.asarray(model.representation(views)))
    ys += [inverted] * len(views)
  x = np.concatenate(xs)
  a = np.c_[x, np.ones(len(x))]
  target = np.where(np.array(ys), -1.0, 1.0)  # + : 'right' (class 0), - : 'left' (class 4)
  w = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ target)  # ridge: modest weights
  kernel = np.zeros((x.shape[1], 8), np.float32)
  bias = np.full(8, -10.0, np.float32)
  kernel[:, 0], bias[0] = 4 * w[:-1], 4 * w[-1]
  kernel[:, 4], bias[4] = -4 * w[:-1], -4 * w[-1]
  model.heads['shapes_video'].kernel[...] = kernel
  model.heads['shapes_video'].bias[...] = bias
  workdir = str(tmp_path_factory.mktemp('segments') / 'work')
  ckpt_lib.write_params(workdir, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  workdir_lib.save_workdir(config, workdir, command='train')
  return config, workdir


def test_segments_flip_where_the_video_changes(segments_workdir, tmp_path, capsys):
  config, workdir = segments_workdir
  # 6 clips 'right' (12 s), then 5 clips 'left' (10 s): the label changes at 12 s.
  frames = np.concatenate(_clips(0, 6, inverted=False) + _clips(4, 5, inverted=True))
  path = str(tmp_path / 'long.mp4')
  video_io.write_video(path, frames, fps=8)
  switch, length = 6 * CLIP_SECONDS, 11 * CLIP_SECONDS

  stats = {}
  result = predict.predict_segments(config, workdir, path, '4:2', top_k=2,
                                    output=str(tmp_path / 'seg.json'), stats=stats)
  segs = result['segments']
  np.testing.assert_allclose([s['start'] for s in segs], np.arange(0, 19, 2.0))
  np.testing.assert_allclose([s['end'] for s in segs], np.arange(4, 23, 2.0))
  assert {s['frames'] for s in segs} == {32} and {s['views'] for s in segs} == {6}
  labels = [s['top'][0]['label'] for s in segs]
  for s, label in zip(segs, labels):
    if s['end'] <= switch:
      assert label == 'right', (s, labels)
    elif s['start'] >= switch:
      assert label == 'left', (s, labels)
  # Decoded once, front to back, holding one segment's frames (32 of the video's 176).
  assert stats['frames'] == 176 and stats['max_buffered'] == 32 and stats['fps'] == 8
  out = capsys.readouterr().out
  assert '10 segments' in out and '     0.00 -      4.00 s  right' in out
  # The files hold the same, written whole.
  assert json.load(open(tmp_path / 'seg.json'))['segments'] == segs
  rows = (tmp_path / 'seg.csv').read_text().splitlines()
  assert rows[0] == 'segment,start,end,frames,views,label_1,class_1,prob_1,label_2,class_2,prob_2'
  assert len(rows) == 11 and rows[1].startswith('0,0.000,4.000,32,6,right,0,')
  assert sorted(os.listdir(tmp_path)) == ['long.mp4', 'seg.csv', 'seg.json']

  # Side by side (STRIDE = SECONDS), the last segment is the shorter rest of the video.
  result = predict.predict_segments(config, workdir, path, '5', echo=False)
  assert [(s['start'], s['end']) for s in result['segments']] == [
      (0, 5), (5, 10), (10, 15), (15, 20), (20, length)]
  assert [s['top'][0]['label'] for s in result['segments']][:2] == ['right', 'right']
  assert [s['top'][0]['label'] for s in result['segments']][3:] == ['left', 'left']
  assert result['json'] == os.path.join(workdir, 'predictions', 'long_segments.json')


@pytest.mark.parametrize('value', ['0', '-3', 'ten', '4:2:1', '4:0', ''])
def test_segments_value_is_checked_first(value):
  with pytest.raises(ValueError, match='SECONDS or SECONDS:STRIDE'):
    predict.inference.parse_segments(value)
  assert predict.inference.parse_segments('10') == (10.0, 10.0)
  assert predict.inference.parse_segments('2.5:1') == (2.5, 1.0)
