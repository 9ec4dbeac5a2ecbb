"""`predict` on a real video file (written with PyAV) through the eval views, and on a .npy batch."""
import json

import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

from sparse_tubes.commands import convert
from sparse_tubes import workdir as workdir_lib
from sparse_tubes.commands import predict
from sparse_tubes.data import video_io  # noqa: E402
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
