"""`features`: per-video pre-logit embeddings of a prepared split (sharded, resumable, aggregated
over views like evaluation) and of video files; a linear probe on them recovers the label."""
import copy
import json
import os

import numpy as np
import optax
import pytest
from flax import nnx

from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes import inference
from sparse_tubes import workdir as workdir_lib
from sparse_tubes.commands import evaluate, features
from sparse_tubes.data import builtin, pipeline, sources, video_io
from sparse_tubes.models import video_vit
from tests.test_main import cli

STEPS = 150   # the built-in images' shape: about 70% top-1 after 150 steps (chance 33%)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, make_config, tiny_data_dir):
  """The tiny TubeViT with its encoder and image head trained for STEPS steps on the 2048 built-in
  images (label: shape) by a plain optax loop on the training pipeline's batches, saved as a
  model-only checkpoint. (The suite's other fixtures train 6 steps: too few for features that
  carry a label; `train` itself would also evaluate and checkpoint, for seconds more.)"""
  builtin.ensure_built('moving_shapes/image', tiny_data_dir)
  config = make_config()
  config.datasets.shapes_image.update(tfds_name='moving_shapes/image', batch_size=32,
                                      eval_batch_size=128)
  config.eval_datasets = ('shapes_video',)
  _, infos = sources.dataset_infos(config)
  classes = sources.num_classes(config, infos)
  model = video_vit.build_model(config.model, classes, rngs=nnx.Rngs(params=0))
  schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, STEPS)
  opt = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y):
    def loss(m):
      logits = m(x, dataset='shapes_image', train=False)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = nnx.grad(loss)(model)
    opt.update(model, grads)

  batches = pipeline.train_iterator(config.datasets.shapes_image, data_dir=tiny_data_dir, seed=0,
                                    process_index=0, process_count=1, grain_cfg=config.grain)
  for _ in range(STEPS):
    batch = next(batches)
    step(model, opt, batch['inputs'], batch['label'])
  workdir = str(tmp_path_factory.mktemp('features') / 'work')
  ckpt_lib.write_params(workdir, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  workdir_lib.save_workdir(config, workdir, command='train')
  return config, workdir


def probe_accuracy(train: dict, test: dict) -> float:
  """A linear probe: least squares from standardized features to one-hot labels (ridge 1e-2)."""
  mu, sd = train['features'].mean(0), train['features'].std(0) + 1e-6
  design = lambda f: np.c_[(f - mu) / sd, np.ones(len(f))]  # noqa: E731
  a = design(train['features'])
  targets = np.eye(train['label'].max() + 1)[train['label']]
  w = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ targets)
  return float(np.mean(np.argmax(design(test['features']) @ w, 1) == test['label']))


def test_features_of_a_split_carry_the_label(trained, tmp_path):
  config, workdir = trained
  summary = features.split_features(config, workdir, 'shapes_image', 'test', str(tmp_path))
  assert summary['videos'] == 256 and summary['dim'] == 24 and summary['shards'] == 1
  f = dict(np.load(tmp_path / 'features.npz'))
  assert f['features'].shape == (256, 24) and list(f['views']) == [1] * 256
  assert sorted(f['id'], key=int) == [str(i) for i in range(256)]
  fit = {k: v[:160] for k, v in f.items()}
  held_out = {k: v[160:] for k, v in f.items()}
  accuracy = probe_accuracy(fit, held_out)
  # 96 held-out images, 3 shapes: chance is 33%; the trained encoder's features give about 70%.
  assert accuracy > 0.5, accuracy


def test_split_features_are_averaged_over_views_like_evaluate(trained, tmp_path, capsys):
  config, workdir = trained
  out = str(tmp_path / 'video')
  summary = features.split_features(config, workdir, 'shapes_video', 'test', out, per_view=True,
                                    videos_per_shard=6)
  assert summary['shards'] == 3 and summary['views'] == '2x3'
  assert sorted(os.listdir(out)) == ['features.json', 'features.npz'] + [
      features.shard_name(i, 3) for i in range(3)]
  f = np.load(os.path.join(out, 'features.npz'))
  assert f['features'].shape == (16, 24) and list(f['views']) == [6] * 16
  assert list(f['index']) == list(range(16))
  # Every view once, temporal-major; their mean is the video's feature.
  assert f['view_features'].shape == (96, 24)
  assert list(f['view']) == list(range(6)) * 16 and list(f['view_video']) == sorted(
      list(range(16)) * 6)
  np.testing.assert_allclose(f['view_features'].reshape(16, 6, 24).mean(1), f['features'],
                             atol=1e-6)
  # The head on the mean feature = the evaluation's mean of the views' logits (the head is linear).
  npz = str(tmp_path / 'pred.npz')
  evaluate.evaluate(config, workdir, save_predictions=npz)
  pred = np.load(npz)
  params = ckpt_lib.read_params(workdir)['heads']['shapes_video']
  order = np.argsort(pred['shapes_video/index'])
  assert list(pred['shapes_video/id'][order]) == list(f['id'])
  np.testing.assert_allclose(f['features'] @ params['kernel'] + params['bias'],
                             pred['shapes_video/scores'][order], atol=1e-4)
  assert list(f['label']) == list(pred['shapes_video/label'][order])

  # Resumed: finished shards are skipped, a missing one is redone, the result is the same.
  before = {k: f[k] for k in f.files}
  os.remove(os.path.join(out, features.shard_name(1, 3)))
  os.remove(os.path.join(out, 'features.npz'))
  capsys.readouterr()
  features.split_features(config, workdir, 'shapes_video', 'test', out, per_view=True,
                          videos_per_shard=6)
  lines = capsys.readouterr().out
  assert lines.count('present, skipped') == 2 and '16/16 videos' in lines
  after = np.load(os.path.join(out, 'features.npz'))
  for k, v in before.items():
    np.testing.assert_array_equal(after[k], v)
  # A shard of another run (other options) is not taken for this one's.
  with pytest.raises(ValueError, match='another run'):
    features.split_features(config, workdir, 'shapes_video', 'test', out, videos_per_shard=6)


def test_features_of_video_files(trained, tmp_path):
  config, workdir = trained
  folder = tmp_path / 'videos'
  (folder / 'sub').mkdir(parents=True)
  for i, name in enumerate(['a.mp4', 'sub/b.webm']):
    frames, _, _ = builtin.generate('video', 'test', i)
    video_io.write_video(str(folder / name), frames, fps=8)
  (folder / 'broken.mp4').write_bytes(b'not a video')
  (folder / 'notes.txt').write_text('not a video either')
  out = tmp_path / 'out'
  summary = features.file_features(config, workdir, str(folder), str(out), per_view=True)
  assert summary['videos'] == 3 and summary['failed'] == ['broken.mp4']
  assert summary['failures'][0]['reason'] == 'undecodable'
  f = np.load(out / 'features.npz')
  assert list(f['id']) == ['a.mp4', 'sub/b.webm'] and list(f['label']) == [-1, -1]
  model = inference.Model(config, workdir)
  ds = config.datasets.shapes_video
  for row, name in enumerate(f['id']):
    views = inference.video_views(str(folder / name), ds)
    np.testing.assert_allclose(f['features'][row], model.features(views).mean(0), atol=1e-5)
    assert f['views'][row] == len(views) == 6


def test_cli_features_of_one_video(trained, tmp_path):
  _, workdir = trained
  frames, _, _ = builtin.generate('video', 'test', 3)
  video_io.write_video(str(tmp_path / 'clip.mp4'), frames, fps=8)
  proc = cli('features', f'--workdir={workdir}', f'--input={tmp_path / "clip.mp4"}',
             f'--output={tmp_path / "out"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Features of 1 videos (24 dims, 2x3 views averaged' in proc.stdout
  assert np.load(tmp_path / 'out' / 'features.npz')['features'].shape == (1, 24)
  both = cli('features', f'--workdir={workdir}', '--split=shapes_video', f'--input={tmp_path}',
             f'--output={tmp_path / "x"}')
  assert both.returncode != 0 and 'Give one of --split' in both.stderr


def test_eval_batches_of_a_run_of_videos_on_two_hosts(make_config, tiny_data_dir):
  """A shard's views (pipeline.eval_batches(videos=...)) split over 2 processes: together they
  are every view of those videos, once, and nothing else but padding."""
  ds = make_config().datasets.shapes_video
  seen = []
  for p in range(2):
    data = pipeline.eval_batches(ds, data_dir=tiny_data_dir, process_index=p, process_count=2,
                                 videos=(5, 11))
    for batch in data:
      real = batch['video_id'] >= 0
      assert batch['mask'][real].all() and not batch['mask'][~real].any()
      seen += list(zip(batch['video_id'][real].tolist(), batch['view'][real].tolist()))
  assert sorted(seen) == [(v, i) for v in range(5, 11) for i in range(6)]
