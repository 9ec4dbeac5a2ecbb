import copy
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from sparse_tubes.commands import evaluate
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes.data import sources
from sparse_tubes import workdir as workdir_lib
from sparse_tubes import multiview
from sparse_tubes.commands import train as train_cmd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_topk_accuracy():
  logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
  labels = np.array([2, 0])
  assert multiview.topk_accuracy(logits, labels, 1) == 0.5
  assert multiview.topk_accuracy(logits, labels, 2) == 1.0
  assert multiview.topk_accuracy(logits, labels, 5) == 1.0  # k larger than the class count.


def test_parse_checkpoint():
  assert evaluate.parse_checkpoint(None) == 'latest'
  assert evaluate.parse_checkpoint('all') == 'all'
  assert evaluate.parse_checkpoint('12') == 12
  assert evaluate.parse_checkpoint(None, step=3) == 3  # --step stays an alias
  with pytest.raises(ValueError, match='--checkpoint'):
    evaluate.parse_checkpoint('best')
  with pytest.raises(ValueError, match='disagree'):
    evaluate.parse_checkpoint('5', step=3)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, make_config):
  """A tiny co-trained run with checkpoints at steps 3 and 6 (read only by the tests below)."""
  workdir = str(tmp_path_factory.mktemp('eval'))
  config = make_config()
  train_cmd.train(config, workdir)
  return config, workdir


def _with(config, **overrides):
  """A changed copy: the module's trained config stays as it is."""
  return evaluate.config_lib.override(copy.deepcopy(config), **overrides)


def _copy(workdir, tmp_path):
  """A copy of the trained workdir without its evaluation results."""
  out = str(tmp_path / 'run')
  shutil.copytree(workdir, out, ignore=shutil.ignore_patterns('eval', 'eval_results.json'))
  return out


def test_multiview_evaluation(trained, tmp_path):
  config, workdir = trained
  workdir = _copy(workdir, tmp_path)
  npz = str(tmp_path / 'pred.npz')
  summary = evaluate.evaluate(config, workdir, save_predictions=npz)
  assert summary['step'] == 6
  video = summary['datasets']['shapes_video']
  ds = config.datasets.shapes_video
  views = ds.eval_temporal_views * ds.eval_spatial_views
  assert video['views_per_video'] == f'{ds.eval_temporal_views}x{ds.eval_spatial_views}'
  # Every video of the split counted once, every view once.
  assert video['num_videos'] == video['split_size'] == 16
  assert video['num_views'] == 16 * views and video['corrupt_videos'] == 0
  assert 0.0 <= video['top1'] <= video['top5'] <= 1.0
  assert 0.0 <= video['view_top1'] <= video['view_top5'] <= 1.0
  image = summary['datasets']['shapes_image']
  assert image['num_views'] == image['num_videos'] == image['split_size'] == 16
  # Result files per dataset and checkpoint.
  with open(evaluate.result_path(workdir, 'shapes_video', 'test', 6)) as f:
    saved = json.load(f)
  assert saved['num_views'] == video['num_views'] and saved['step'] == 6
  with open(evaluate.result_path(workdir, 'shapes_video', 'test', 6, '_classes.csv')) as f:
    rows = f.read().splitlines()
  assert rows[0] == 'class,name,videos,top1' and len(rows) == 1 + video['num_classes']
  assert sum(int(r.split(',')[2]) for r in rows[1:]) == 16
  assert os.path.getsize(evaluate.result_path(workdir, 'shapes_video', 'test', 6,
                                              '_confusion.png')) > 1000
  with open(os.path.join(workdir, 'eval_results.json')) as f:
    assert json.load(f)['datasets']['shapes_video']['num_views'] == video['num_views']
  # Predictions: aggregated scores per video agree with the reported top-1.
  pred = np.load(npz)
  assert sorted(pred['shapes_video/index']) == list(range(16))
  # The dataset's own ids (TFDS stores the split in another order than the ids).
  assert sorted(pred['shapes_video/id'], key=int) == [str(i) for i in range(16)]
  top1 = np.mean(pred['shapes_video/scores'].argmax(-1) == pred['shapes_video/label'])
  assert top1 == pytest.approx(video['top1'])
  table = evaluate.results_table(summary)
  assert 'shapes_video' in table and 'top-1' in table and '16/16' in table


def _recording(ev):
  """Wraps the Evaluator's compiled steps so every view's outputs are kept."""
  seen = {}
  for name, step in list(ev.steps.items()):
    def record(params, batch, _step=step, _name=name):
      out = _step(params, batch)
      seen.setdefault(_name, []).append({k: np.asarray(v) for k, v in out.items()})
      return out
    ev.steps[name] = record
  return seen


def _eval(config, workdir, *, record=False):
  restored = ckpt_lib.restore_params(config, workdir)
  data_dir, infos = sources.dataset_infos(config)
  ev = multiview.Evaluator(config, restored.spec, restored.mesh, restored.rules, data_dir, infos)
  seen = _recording(ev) if record else None
  results, pred = ev(restored.params, with_predictions=True)
  return results, pred, seen


@pytest.mark.parametrize('aggregation', ['mean_logits', 'mean_softmax'])
def test_aggregation_matches_numpy(trained, aggregation):
  """Per-video scores = the plain NumPy mean over that video's views' logits (or softmax)."""
  config, workdir = trained
  config = _with(config, datasets__shapes_video__eval_batch_size=7,
                                        datasets__shapes_video__eval_aggregation=aggregation,
                                        eval_datasets=('shapes_video',))
  results, pred, seen = _eval(config, workdir, record=True)
  outs = seen['shapes_video']
  cat = {k: np.concatenate([o[k] for o in outs]) for k in ('logits', 'video_id', 'mask', 'view')}
  keep = cat['mask']
  logits, vid = cat['logits'][keep].astype(np.float64), cat['video_id'][keep]
  if aggregation == 'mean_softmax':
    logits = np.exp(logits - logits.max(-1, keepdims=True))
    logits /= logits.sum(-1, keepdims=True)
  # Each (video, view) once; padding only at the end.
  pairs = set(zip(vid.tolist(), cat['view'][keep].tolist()))
  assert len(pairs) == keep.sum() == 16 * 6
  expected = np.stack([logits[vid == v].mean(0) for v in range(16)])
  p = pred['shapes_video']
  np.testing.assert_allclose(p.scores[np.argsort(p.index)], expected, rtol=1e-5, atol=1e-6)
  assert results['shapes_video']['aggregation'] == aggregation


def _scores(pred):
  return {n: p.scores[np.argsort(p.index)] for n, p in pred.items()}


def test_batch_size_invariance(trained):
  """Batch sizes 1, 7 (divides neither 96 views nor 16 images) and 48: the same numbers."""
  config, workdir = trained
  ref = None
  for bs in (1, 7, 48):
    cfg = _with(config, datasets__shapes_video__eval_batch_size=bs,
                                       datasets__shapes_image__eval_batch_size=bs)
    results, pred, _ = _eval(cfg, workdir)
    for r in results.values():
      assert r['num_videos'] == r['split_size'] == 16
    got = (results, _scores(pred))
    if ref is None:
      ref = got
      continue
    for name in results:
      np.testing.assert_allclose(got[1][name], ref[1][name], rtol=1e-4, atol=1e-5)
      for key in ('top1', 'top5', 'view_top1', 'num_views', 'mean_class_accuracy'):
        assert got[0][name][key] == pytest.approx(ref[0][name][key]), (bs, name, key)


EIGHT_DEVICES = """
import json, sys
sys.path.insert(0, {tests!r})
import jax
assert jax.device_count() == 8, jax.devices()
from conftest import tiny_config
from sparse_tubes.commands import evaluate
out = {{}}
for bs in (8, 48):
  config = tiny_config({data!r}, datasets__shapes_video__eval_batch_size=bs,
                       datasets__shapes_image__eval_batch_size=bs)
  s = evaluate.evaluate(config, {workdir!r}, save_predictions={npz!r}.format(bs))
  out[bs] = s['datasets']
print('RESULT ' + json.dumps(out), flush=True)
"""


@pytest.mark.slow
def test_device_count_invariance(trained, tmp_path):
  """8 fake CPU devices (data-parallel eval batches of 8 and 48) give the 1-device numbers."""
  config, workdir = trained
  workdir = _copy(workdir, tmp_path)
  ref_results, ref_pred, _ = _eval(config, workdir)
  npz = str(tmp_path / 'pred{}.npz')
  env = dict(os.environ, XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-c', EIGHT_DEVICES.format(tests=os.path.join(REPO, 'tests'),
                                                  data=config.data_dir, workdir=workdir, npz=npz)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith('RESULT '))[7:])
  for bs in ('8', '48'):
    pred = np.load(npz.format(bs))
    for name, r in out[bs].items():
      assert r['num_videos'] == r['split_size'] == 16
      order = np.argsort(pred[f'{name}/index'])
      np.testing.assert_allclose(pred[f'{name}/scores'][order], _scores(ref_pred)[name],
                                 rtol=1e-4, atol=1e-5)
      for key in ('top1', 'top5', 'view_top1', 'num_views'):
        assert r[key] == pytest.approx(ref_results[name][key]), (bs, name, key)


def test_whole_video_mode(trained):
  """eval_temporal_views=0: non-overlapping 8-frame clips over the 16-frame videos, 2 per video."""
  config, workdir = trained
  cfg = _with(config, datasets__shapes_video__eval_temporal_views=0,
                                     datasets__shapes_video__eval_spatial_views=1,
                                     datasets__shapes_video__eval_batch_size=7,
                                     eval_datasets=('shapes_video',))
  results, pred, seen = _eval(cfg, workdir, record=True)
  r = results['shapes_video']
  assert r['num_videos'] == 16 and r['num_views'] == 16 * 2
  assert r['views_per_video'].startswith('full(2-2')
  outs = seen['shapes_video']
  views = np.concatenate([o['view'][o['mask']] for o in outs])
  assert sorted(set(views.tolist())) == [0, 1]


def test_all_checkpoints(trained, tmp_path):
  config, workdir = trained
  config = _with(config, eval_datasets=('shapes_video',))  # one dataset is enough here
  workdir = _copy(workdir, tmp_path)
  steps = [s['step'] for s in evaluate.evaluate_checkpoints(config, workdir, 'all')]
  assert steps == [3, 6]
  for s in (3, 6):
    assert os.path.exists(evaluate.result_path(workdir, 'shapes_video', 'test', s))
    assert not os.path.exists(evaluate.result_path(workdir, 'shapes_image', 'test', s))
  # Results on disk: nothing to do again, unless forced.
  assert evaluate.evaluate_checkpoints(config, workdir, 'all') == []
  assert [s['step'] for s in evaluate.evaluate_checkpoints(config, workdir, 'all', force=True)] \
      == [3, 6]


def test_watch_skips_a_deleted_checkpoint(trained, tmp_path, monkeypatch, capsys):
  """keep-N deletes a checkpoint after the watcher listed it: skipped with a line, no crash, and
  the watcher still stops after the final step."""
  config, workdir = trained
  workdir = _copy(workdir, tmp_path)
  real = ckpt_lib.restore_params

  def deleted_under_it(config, workdir, step=None, *args, **kw):
    if step == 3:
      shutil.rmtree(os.path.join(ckpt_lib.checkpoint_dir(workdir), '3'))
    return real(config, workdir, step, *args, **kw)

  monkeypatch.setattr(ckpt_lib, 'restore_params', deleted_under_it)
  done = evaluate.evaluate_checkpoints(config, workdir, 'watch', watch_timeout=30, poll_s=0.1)
  assert [s['step'] for s in done] == [6]
  out = capsys.readouterr().out
  assert 'step 3: checkpoint deleted' in out and 'final step 6' in out


def test_watch_times_out(make_config, tmp_path, capsys):
  done = evaluate.evaluate_checkpoints(make_config(), str(tmp_path), 'watch', watch_timeout=0.3,
                                       poll_s=0.1)
  assert done == [] and '--watch_timeout' in capsys.readouterr().out


def test_logits_are_averaged_per_video(monkeypatch):
  """Video 0 has views voting 2:1 for class 0, but the mean logit favours class 1; padding views
  (mask False) must be ignored."""
  from sparse_tubes import defaults
  from sparse_tubes.train import sharding
  logits = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 5.0],     # video 0: mean favours class 1
                     [3.0, 0.0], [99.0, -99.0], [0.0, 0.0]], np.float32)  # video 1; a pad; a pad
  key = np.zeros((3, multiview.pipeline.KEY_BYTES), np.uint8)
  batches = [dict(inputs=logits[:3], label=np.array([1, 1, 1], np.int32), key=key,
                  video_id=np.array([0, 0, 0], np.int32), mask=np.array([True] * 3)),
             dict(inputs=logits[3:], label=np.array([0, 0, 0], np.int32), key=key,
                  video_id=np.array([1, -1, -1], np.int32), mask=np.array([True, False, False]))]
  data = multiview.pipeline.EvalData(batches, num_videos=2, views_per_video=np.array([3, 1]),
                                     num_batches=2, local_batch_size=3,
                                     stats=multiview.pipeline.DataStats())
  monkeypatch.setattr(multiview.pipeline, 'eval_batches', lambda *a, **k: data)
  fake_step = lambda params, b: {**b, 'logits': b['inputs']}
  mesh = sharding.make_mesh(defaults.base().mesh)
  ds = defaults.dataset(eval_temporal_views=3, eval_spatial_views=1)
  res = multiview.evaluate_dataset(fake_step, None, ds, data_dir='', mesh=mesh,
                                   rules=defaults.base().sharding_rules, num_videos=2)
  assert res['num_videos'] == 2 and res['num_views'] == 4
  assert res['top1'] == 1.0 and res['view_top1'] == 0.5
  # A view counted twice is an error, not a number.
  batches[1]['video_id'] = np.array([0, -1, -1], np.int32)
  with pytest.raises(RuntimeError, match='twice'):
    multiview.evaluate_dataset(fake_step, None, ds, data_dir='', mesh=mesh,
                               rules=defaults.base().sharding_rules, num_videos=2)


def test_no_checkpoint_is_a_clear_error(make_config, tmp_path):
  with pytest.raises(FileNotFoundError, match='Train first'):
    evaluate.evaluate(make_config(), str(tmp_path))
  with pytest.raises(FileNotFoundError, match='Train first'):
    evaluate.evaluate_checkpoints(make_config(), str(tmp_path), 'all')


TRAIN = """
import sys
import time
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from sparse_tubes.commands import train as train_cmd
train_cmd.train(tiny_config({data!r}, total_steps=20, checkpoint_every_steps=5, keep_checkpoints=10,
                       log_every_steps=5, eval_datasets=('shapes_video',)), {workdir!r})
"""


@pytest.mark.slow
def test_watch_beside_training(tiny_data_dir, tmp_path):
  """`evaluate --checkpoint=watch --workdir=DIR` in its own process beside `train`: every
  checkpoint the training writes (asynchronously) is evaluated once, and the watcher exits after
  the last one."""
  workdir = str(tmp_path / 'run')
  train = subprocess.Popen(
      [sys.executable, '-c', TRAIN.format(tests=os.path.join(REPO, 'tests'), data=tiny_data_dir,
                                          workdir=workdir)],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + 300
    while not workdir_lib.has_workdir_config(workdir):  # --workdir alone: the config train wrote
      assert train.poll() is None and time.monotonic() < deadline, train.communicate()[0][-3000:]
      time.sleep(0.2)
    watch = subprocess.run(
        [sys.executable, '-m', 'sparse_tubes', 'evaluate', f'--workdir={workdir}',
         '--checkpoint=watch', '--watch_timeout=300'],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    train_out = train.communicate(timeout=600)[0]
  finally:
    train.kill()
  assert train.returncode == 0, train_out[-3000:]
  assert watch.returncode == 0, watch.stderr[-3000:]
  assert 'Evaluated the final step 20' in watch.stdout
  assert watch.stdout.count('Evaluation of step') == 4
  for step in (5, 10, 15, 20):
    with open(evaluate.result_path(workdir, 'shapes_video', 'test', step)) as f:
      r = json.load(f)
    assert r['step'] == step and r['num_videos'] == r['split_size'] == 16


def test_most_confused_pairs():
  confusion = np.array([[5, 2, 0], [7, 1, 1], [0, 0, 3]])
  pairs = multiview.most_confused(confusion, ['a', 'b', 'c'], n=2)
  assert pairs == [{'label': 'b', 'predicted': 'a', 'videos': 7},
                   {'label': 'a', 'predicted': 'b', 'videos': 2}]


def test_corrupt_videos_are_counted_and_listed(monkeypatch):
  """Video 1's views failed to decode (mask False, video_id set): listed with its id, not scored,
  and the views still add up (nothing dropped)."""
  from sparse_tubes import defaults
  from sparse_tubes.train import sharding
  key = np.zeros((4, multiview.pipeline.KEY_BYTES), np.uint8)
  key[2:, :3] = np.frombuffer(b'abc', np.uint8)
  batch = dict(inputs=np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]], np.float32),
               label=np.array([0, 0, 1, 1], np.int32), key=key,
               video_id=np.array([0, 0, 1, 1], np.int32), mask=np.array([True, True, False, False]))
  data = multiview.pipeline.EvalData([batch], num_videos=2, views_per_video=2, num_batches=1,
                                     local_batch_size=4, stats=multiview.pipeline.DataStats())
  monkeypatch.setattr(multiview.pipeline, 'eval_batches', lambda *a, **k: data)
  mesh = sharding.make_mesh(defaults.base().mesh)
  res = multiview.evaluate_dataset(lambda p, b: {**b, 'logits': b['inputs']}, None,
                                   defaults.dataset(eval_temporal_views=2), data_dir='', mesh=mesh,
                                   rules=defaults.base().sharding_rules, num_videos=2)
  assert res['num_videos'] == 1 and res['split_size'] == 2 and res['num_views'] == 2
  assert res['corrupt_videos'] == 1
  assert res['corrupt'] == [{'index': 1, 'id': 'abc', 'views_failed': 2}]


def test_view_grid_and_reference_ids(trained, tmp_path, capsys):
  """--view_grid: every sub-grid of the 2x3 views, the full grid equal to the evaluation itself.
  --reference_ids: a list that names ids this copy lacks and leaves out some it has."""
  config, workdir = trained
  workdir = _copy(workdir, tmp_path)
  listed = [str(i) for i in range(12)]  # of the split's ids 0..15: 12..15 are not listed
  ref = tmp_path / 'official_test_ids.txt'
  ref.write_text('# official test ids\n' + '\n'.join(listed + ['lost_a', 'lost_b', '3']) + '\n\n')
  npz = str(tmp_path / 'pred.npz')
  summary = evaluate.evaluate(_with(config, eval_datasets=('shapes_video',)), workdir,
                              view_grid=True, reference_ids=str(ref), save_predictions=npz)
  video = summary['datasets']['shapes_video']
  assert summary['params'] == 'raw'  # trained without config.ema_decay

  with open(evaluate.result_path(workdir, 'shapes_video', 'test', 6, '_views.json')) as f:
    grid = json.load(f)
  rows = {(r['temporal_views'], r['spatial_views']): r for r in grid['grid']}
  assert sorted(rows) == [(t, s) for t in (1, 2) for s in (1, 2, 3)]
  for key in ('top1', 'top5', 'view_top1', 'mean_class_accuracy'):
    assert rows[(2, 3)][key] == video[key], key
  gflops = grid['gflops_per_view']
  assert gflops > 0 and rows[(1, 1)]['gflops_per_video'] == gflops
  assert rows[(2, 3)]['gflops_per_video'] == pytest.approx(6 * gflops)
  assert os.path.getsize(evaluate.result_path(workdir, 'shapes_video', 'test', 6,
                                              '_views.png')) > 1000

  r = video['reference']
  assert (r['reference_ids'], r['evaluated'], r['missing'], r['not_in_reference']) == (14, 12, 2, 4)
  pred = np.load(npz)
  keep = np.isin(pred['shapes_video/id'], listed)
  top1 = np.mean(pred['shapes_video/scores'][keep].argmax(-1) == pred['shapes_video/label'][keep])
  assert r['top1'] == pytest.approx(top1)
  with open(r['ids_file']) as f:
    assert f.read().split() == listed
  with open(r['missing_file']) as f:
    assert f.read().split() == ['lost_a', 'lost_b']
  table = evaluate.results_table(summary)
  assert '2 missing' in table and '2x3' in table and '1x1' in table


def test_bad_extras_fail_before_evaluating(trained, tmp_path):
  config, workdir = trained
  with pytest.raises(ckpt_lib.CheckpointError, match='--params=ema: .*config.ema_decay'):
    evaluate.evaluate(config, workdir, params='ema')
  with pytest.raises(FileNotFoundError, match='--reference_ids='):
    evaluate.evaluate(config, workdir, reference_ids=str(tmp_path / 'none.txt'))
  (tmp_path / 'empty.txt').write_text('# nothing\n')
  with pytest.raises(ValueError, match='lists no video ids'):
    evaluate.evaluate(config, workdir, reference_ids=str(tmp_path / 'empty.txt'))
  with pytest.raises(ValueError, match='eval_temporal_views=0'):
    evaluate.evaluate(_with(config, datasets__shapes_video__eval_temporal_views=0), workdir,
                      view_grid=True)


def test_reference_ids_read_an_official_kinetics_csv(tmp_path):
  path = tmp_path / 'validate.csv'
  path.write_text('label,youtube_id,time_start,time_end,split\n'
                  'abseiling,--33Lscn6sk,4,14,val\nabseiling,--33Lscn6sk,4,14,val\n'
                  'zumba,abc,30.0,40.0,val\n')
  assert multiview.read_reference_ids(str(path)) == ['--33Lscn6sk_000004_000014',
                                                     'abc_000030_000040']
