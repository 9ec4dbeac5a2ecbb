import json
import os

import numpy as np
import pytest

from sparse_tubes import evaluate, evaluator
from sparse_tubes.train import loop


def test_topk_accuracy():
  logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
  labels = np.array([2, 0])
  assert evaluator.topk_accuracy(logits, labels, 1) == 0.5
  assert evaluator.topk_accuracy(logits, labels, 2) == 1.0
  assert evaluator.topk_accuracy(logits, labels, 5) == 1.0  # k larger than the class count.


@pytest.fixture(scope='module')
def trained(tmp_path_factory, make_config):
  workdir = str(tmp_path_factory.mktemp('eval'))
  config = make_config()
  loop.train(config, workdir)
  return config, workdir


def test_multiview_evaluation(trained):
  config, workdir = trained
  summary = evaluate.evaluate(config, workdir)
  assert summary['step'] == 6
  video = summary['datasets']['shapes_video']
  ds = config.datasets.shapes_video
  views = ds.eval_temporal_views * ds.eval_spatial_views
  assert video['views_per_video'] == f'{ds.eval_temporal_views}x{ds.eval_spatial_views}'
  assert video['num_views'] == video['num_videos'] * views
  assert 0.0 <= video['top1'] <= video['top5'] <= 1.0
  assert summary['datasets']['shapes_image']['num_views'] == summary['datasets']['shapes_image']['num_videos']
  with open(os.path.join(workdir, 'eval_results.json')) as f:
    assert json.load(f)['datasets']['shapes_video']['num_views'] == video['num_views']
  table = evaluate.results_table(summary)
  assert 'shapes_video' in table and 'top-1' in table and workdir in table


def test_view_count_follows_config(trained):
  config, workdir = trained
  full = evaluate.evaluate(config, workdir)['datasets']['shapes_video']
  config.datasets.shapes_video.eval_temporal_views = 1
  config.datasets.shapes_video.eval_spatial_views = 1
  single = evaluate.evaluate(config, workdir)['datasets']['shapes_video']
  assert single['num_videos'] == full['num_videos']
  assert single['num_views'] * 6 == full['num_views']
  assert single['views_per_video'] == '1x1'


def test_logits_are_averaged_per_video(monkeypatch):
  """Video 0 has views voting 2:1 for class 0, but the mean logit favours class 1; padding views
  (mask False) must be ignored."""
  from sparse_tubes import defaults
  from sparse_tubes.train import sharding
  logits = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 5.0],     # video 0: mean favours class 1
                     [3.0, 0.0], [99.0, -99.0], [0.0, 0.0]], np.float32)  # video 1; a pad; a pad
  batches = [dict(inputs=logits[:3], label=np.array([1, 1, 1], np.int32),
                  video_id=np.array([0, 0, 0], np.int32), mask=np.array([True] * 3)),
             dict(inputs=logits[3:], label=np.array([0, 0, 0], np.int32),
                  video_id=np.array([1, 0, 0], np.int32), mask=np.array([True, False, False]))]
  data = evaluator.pipeline.EvalData(batches, num_videos=2, views_per_video=3, num_batches=2,
                                     local_batch_size=3, stats=evaluator.pipeline.DataStats())
  monkeypatch.setattr(evaluator.pipeline, 'eval_batches', lambda *a, **k: data)
  fake_step = lambda params, b: {'logits': b['inputs'], 'label': b['label'],
                                 'video_id': b['video_id'], 'mask': b['mask']}
  mesh = sharding.make_mesh(defaults.base().mesh)
  ds = defaults.dataset(eval_temporal_views=3, eval_spatial_views=1)
  res = evaluator.evaluate_dataset(fake_step, None, ds, data_dir='', mesh=mesh,
                                  rules=defaults.base().sharding_rules, num_videos=2)
  assert res['num_videos'] == 2 and res['num_views'] == 4
  assert res['top1'] == 1.0


def test_no_checkpoint_is_a_clear_error(make_config, tmp_path):
  with pytest.raises(FileNotFoundError, match='Train first'):
    evaluate.evaluate(make_config(), str(tmp_path))
