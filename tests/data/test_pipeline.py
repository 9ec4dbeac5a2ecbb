"""Grain pipelines: train batches, determinism, host slices, checkpointing, eval views, bad data."""
import sys

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sparse_tubes import defaults
from sparse_tubes.data import pipeline
from sparse_tubes.data import transforms


def video_cfg(**kw):
  return defaults.dataset(**{**dict(
      tfds_name='moving_shapes/video_tiny', kind='video', batch_size=8, eval_batch_size=20,
      num_frames=8, crop_size=32, min_resize=36, max_resize=40, flip=False,
      eval_temporal_views=2, eval_spatial_views=3), **kw})


def image_cfg(**kw):
  return defaults.dataset(**{**dict(
      tfds_name='moving_shapes/image_tiny', kind='image', batch_size=8, eval_batch_size=8,
      crop_size=32, min_resize=36, max_resize=40, flip=True), **kw})


def grain_cfg(workers=0):
  g = defaults.base().grain
  g.worker_count = workers
  g.read_threads = 2
  return g


def train(cfg, data_dir, *, seed=0, process_index=0, process_count=1, workers=0, stats=None):
  return pipeline.train_iterator(cfg, data_dir=data_dir, seed=seed, process_index=process_index,
                                 process_count=process_count, grain_cfg=grain_cfg(workers),
                                 stats=stats)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
  for a, b in zip(batches_a, batches_b, strict=True):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_train_batches_video_and_image(tiny_data_dir):
  batch = next(train(video_cfg(), tiny_data_dir))
  assert set(batch) == {'inputs', 'label'}
  assert batch['inputs'].shape == (8, 8, 32, 32, 3) and batch['inputs'].dtype == np.float32
  assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
  assert -1 <= batch['inputs'].min() < -0.5 and 0.5 < batch['inputs'].max() <= 1
  assert batch['label'].min() >= 0 and batch['label'].max() < 8
  # Consecutive frames of a clip differ (the shape moves, the noise is fresh).
  assert np.abs(batch['inputs'][:, 1] - batch['inputs'][:, 0]).mean() > 0.05

  batch = next(train(image_cfg(normalization='imagenet'), tiny_data_dir, process_count=2))
  assert batch['inputs'].shape == (4, 32, 32, 3) and batch['inputs'].dtype == np.float32
  assert batch['inputs'].min() < -1.5 and batch['inputs'].max() > 1.5  # mean/std, not [-1, 1].
  assert batch['label'].max() < 3
  assert 'tensorflow' not in sys.modules


def test_segment_sampling_and_stride_longer_than_video(tiny_data_dir):
  for cfg in (video_cfg(sampling='segment', num_frames=4), video_cfg(frame_stride=4)):
    batch = next(train(cfg, tiny_data_dir))
    assert batch['inputs'].shape == (8, cfg.num_frames, 32, 32, 3)


def test_train_is_deterministic_and_seed_dependent(tiny_data_dir):
  a = take(train(video_cfg(), tiny_data_dir, seed=3), 3)
  assert_same(a, take(train(video_cfg(), tiny_data_dir, seed=3), 3))
  b = take(train(video_cfg(), tiny_data_dir, seed=4), 3)
  assert not np.array_equal(a[0]['inputs'], b[0]['inputs'])


def _image_ids(batches, lookup):
  return [lookup[np.asarray(x).tobytes()] for b in batches for x in b['inputs']]


def test_host_slices_are_disjoint_and_cover_the_epoch(tiny_data_dir):
  # No augmentation (resize and crop 40 = the frame size, no flip), so an output identifies its image.
  cfg = image_cfg(crop_size=40, min_resize=40, max_resize=40, flip=False)
  source = pipeline.data_source(cfg, tiny_data_dir, 'train')
  lookup = {transforms.normalize(transforms.decode_frames(source[i]['image'])[0],
                                 cfg.normalization).tobytes(): i for i in range(len(source))}
  assert len(lookup) == 64
  # 8 batches of 4 = 32 images = one epoch of each host; two epochs.
  hosts = [_image_ids(take(train(cfg, tiny_data_dir, process_index=p, process_count=2), 16), lookup)
           for p in range(2)]
  for epoch in (slice(0, 32), slice(32, 64)):
    a, b = hosts[0][epoch], hosts[1][epoch]
    assert len(set(a)) == len(set(b)) == 32
    assert set(a).isdisjoint(b) and set(a) | set(b) == set(range(64))
  # Every epoch is a fresh global shuffle, dealt out to the hosts again.
  assert hosts[0][:32] != hosts[0][32:]


def test_iterator_state_restores_through_orbax(tiny_data_dir, tmp_path):
  it = train(video_cfg(), tiny_data_dir, seed=1)
  take(it, 3)
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  checkpointer.save(tmp_path / 'ckpt', args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointSave(it)))
  expected = take(it, 3)

  restored = train(video_cfg(), tiny_data_dir, seed=1)
  checkpointer.restore(tmp_path / 'ckpt', args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointRestore(restored)))
  assert_same(take(restored, 3), expected)


def test_worker_processes_give_the_same_elements_and_resume(tiny_data_dir):
  # Each element's augmentation depends on its position only; two workers deal the positions out
  # alternately (batch 0: even positions, batch 1: odd), so two batches hold the same clips.
  def clips(batches):
    return sorted(x.tobytes() for b in batches for x in b['inputs'])

  in_process = take(train(video_cfg(), tiny_data_dir, seed=2), 2)
  it = train(video_cfg(), tiny_data_dir, seed=2, workers=2)
  assert clips(take(it, 2)) == clips(in_process)
  state = it.get_state()
  expected = take(it, 2)
  resumed = train(video_cfg(), tiny_data_dir, seed=2, workers=2)
  resumed.set_state(state)
  assert_same(take(resumed, 2), expected)


def test_eval_views_two_hosts(tiny_data_dir):
  cfg = video_cfg()  # 16 test videos x (2 x 3) views = 96 views; 2 hosts x 10 per batch.
  source = pipeline.data_source(cfg, tiny_data_dir, 'test')
  data = [pipeline.eval_batches(cfg, data_dir=tiny_data_dir, process_index=p, process_count=2)
          for p in range(2)]
  assert data[0].num_videos == 16 and data[0].views_per_video == 6
  assert len(data[0]) == len(data[1]) == 5  # ceil(96 / 20), the same on both hosts.
  batches = [list(d) for d in data]
  assert [len(b) for b in batches] == [5, 5]
  seen, padding = [], 0
  for b in batches[0] + batches[1]:
    assert b['inputs'].shape == (10, 8, 32, 32, 3) and b['inputs'].dtype == np.float32
    assert {k: b[k].dtype for k in ('label', 'video_id', 'view', 'mask')} == {
        'label': np.int32, 'video_id': np.int32, 'view': np.int32, 'mask': np.bool_}
    padding += int((~b['mask']).sum())
    assert (b['video_id'][~b['mask']] == -1).all()
    for vid, view, label in zip(b['video_id'][b['mask']], b['view'][b['mask']],
                                b['label'][b['mask']]):
      assert label == source[int(vid)]['label']
      seen.append((int(vid), int(view)))
  assert padding == 100 - 96
  assert sorted(seen) == [(v, w) for v in range(16) for w in range(6)]
  # Re-iterable: a second pass gives the same batches.
  assert_same(list(data[0]), batches[0])


def test_eval_views_differ_and_centre_crop(tiny_data_dir):
  cfg = video_cfg(eval_batch_size=6)
  first = next(iter(pipeline.eval_batches(cfg, data_dir=tiny_data_dir, process_index=0,
                                          process_count=1)))
  assert (first['video_id'] == 0).all() and list(first['view']) == list(range(6))
  x = first['inputs']
  assert not np.array_equal(x[0], x[1])  # Left vs centre crop.
  assert not np.array_equal(x[0], x[3])  # Two temporal views, same crop.
  # Taller-than-wide frames are crossed top to bottom; one view is the centre.
  frames = np.arange(1 * 50 * 40 * 3).reshape(1, 50, 40, 3)
  assert transforms.spatial_view_crop(frames, 32, 0, 3)[0, 0, 0, 0] == frames[0, 0, 4, 0]
  assert transforms.spatial_view_crop(frames, 32, 2, 3)[0, 0, 0, 0] == frames[0, 18, 4, 0]
  assert transforms.spatial_view_crop(frames, 32, 0, 1)[0, 0, 0, 0] == frames[0, 9, 4, 0]


def test_temporal_sampling_indices():
  rng = np.random.default_rng(0)
  assert list(transforms.stride_indices(5, 4, 2, 3)) == [3, 0, 2, 4]  # Short videos loop.
  for _ in range(20):
    start = transforms.stride_start_train(16, 8, 2, rng)
    assert 0 <= start <= 16 - 15
    seg = transforms.segment_indices_train(16, 4, rng)
    assert all(4 * i <= s < 4 * (i + 1) for i, s in enumerate(seg))
  assert list(transforms.stride_starts_eval(16, 8, 1, 3)) == [0, 4, 8]
  assert list(transforms.segment_indices_eval(16, 4, 0, 1)) == [2, 6, 10, 14]
  assert list(transforms.segment_indices_train(2, 4, rng)) == [0, 0, 1, 1]


class _Corrupt:
  """A data source whose chosen indices hold garbage frames (or none at all)."""

  def __init__(self, source, bad):
    self.source, self.bad = source, bad

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    element = self.source[i]
    if i in self.bad:
      frames = [b'\xff\xd8garbage'] * 3 if i % 2 else []
      element = {**element, 'video': np.array(frames, dtype=object)}
    return element


def test_corrupt_examples_are_skipped_counted_and_logged(tiny_data_dir, monkeypatch, caplog):
  bad = {3, 10}
  real = pipeline.data_source
  monkeypatch.setattr(pipeline, 'data_source',
                      lambda *a, **kw: _Corrupt(real(*a, **kw), bad))
  cfg = video_cfg()
  stats = pipeline.DataStats()
  batches = take(train(cfg, tiny_data_dir, seed=5, stats=stats), 8)  # 64 good clips.
  assert all(b['inputs'].shape == (8, 8, 32, 32, 3) for b in batches)
  # Which positions the stream crossed to find 64 good clips: the same shuffle, replayed.
  order = grain.MapDataset.range(64).shuffle(seed=5).repeat()
  good = skipped = position = 0
  while good < 64:
    skipped, good = (skipped + 1, good) if order[position] in bad else (skipped, good + 1)
    position += 1
  assert skipped >= 2 and stats.skipped == skipped
  assert 'Skipping example id=' in caplog.text

  # Eval keeps the views of a bad video as masked-out padding, so every host keeps its batch count.
  data = pipeline.eval_batches(cfg, data_dir=tiny_data_dir, process_index=0, process_count=1)
  batches = list(data)
  masked_videos = {int(v) for b in batches for v in b['video_id'][~b['mask']]} - {-1}
  assert masked_videos == bad and data.stats.skipped == 2 * 6


@pytest.mark.parametrize('override,message', [
    (dict(crop_size=48), 'config.datasets.vid.crop_size=48 is larger than min_resize=36'),
    (dict(max_resize=30, crop_size=24), 'config.datasets.vid.max_resize=30'),
    (dict(batch_size=10), 'config.datasets.vid.batch_size=10 is not divisible'),
    (dict(eval_batch_size=6), 'config.datasets.vid.eval_batch_size=6'),
    (dict(kind='audio'), "config.datasets.vid.kind='audio'"),
    (dict(sampling='random'), "config.datasets.vid.sampling='random'"),
    (dict(normalization='zscore'), "config.datasets.vid.normalization='zscore'"),
    (dict(num_frames=0), 'config.datasets.vid.num_frames=0'),
    (dict(tfds_name=''), 'config.datasets.vid.tfds_name'),
    (dict(kind='image'), "config.datasets.vid.kind='image' but moving_shapes/video_tiny"),
    (dict(train_split='validation'), "config.datasets.vid.train_split='validation'"),
    (dict(tfds_name='kinetics_missing/400'), 'prepare'),
])
def test_config_errors_name_the_key(tiny_data_dir, override, message):
  with pytest.raises(ValueError, match=message.replace('(', r'\(')):
    pipeline.train_iterator(video_cfg(**override), data_dir=tiny_data_dir, seed=0,
                            process_index=0, process_count=4, grain_cfg=grain_cfg(), name='vid')


def test_dataset_info(tiny_data_dir):
  info = pipeline.dataset_info(video_cfg(), tiny_data_dir)
  assert info.num_classes == 8 and info.class_names[0] == 'right'
  assert info.num_examples == {'train': 64, 'test': 16}
  assert pipeline.dataset_info(image_cfg(), tiny_data_dir).num_classes == 3
