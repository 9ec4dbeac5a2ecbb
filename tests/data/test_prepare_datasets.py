"""`prepare` on a mini-Kinetics (h264 mp4, the CVDF CSV layout) and a mini-SSv2 (vp9/vp8 webm, JSON):
counts, labels, frame rates, sizes, the report, resuming, and the pipelines reading the result."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sparse_tubes import defaults
from sparse_tubes.data import builtin
from sparse_tubes.data import pipeline
from sparse_tubes.data import prepare, video_builder
from sparse_tubes.data import transforms
from sparse_tubes.data import video_io

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K_LABELS = ('abseiling', 'air drumming', 'passing American football (in game)')


def _frames(n, h, w, seed):
  """Frames whose content encodes the frame index: a bright column moving right 2 px per frame."""
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 120, (1, h, w, 3), np.uint8).repeat(n, 0)
  for t in range(n):
    base[t, :, (2 * t) % w] = 255
  return base


def _write_csv(path, rows, header=('label', 'youtube_id', 'time_start', 'time_end', 'split')):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def make_mini_kinetics(root):
  """9 listed train clips (7 good, 1 corrupt, 1 truncated), 3 validation (1 missing, 1 with a label
  that is not a training class), 2 test; clips spread over sub-folders like the CVDF archives."""
  # (youtube_id, label, fps, frames, (h, w)): 2 s each at various rates; one portrait clip.
  train = [('aaaaaaaaaa1', 0, 30, 60, (48, 64)), ('bbbbbbbbbb2', 1, 25, 50, (48, 64)),
           ('cccccccccc3', 2, 24, 48, (48, 64)), ('dddddddddd4', 0, 30, 60, (64, 48)),
           ('eeeeeeeeee5', 1, 30, 60, (48, 64)), ('ffffffffff6', 2, 30, 60, (48, 64)),
           ('gggggggggg7', 0, 15, 30, (48, 64))]
  rows = {'train': [], 'validate': [], 'test': []}
  for i, (yid, label, fps, n, (h, w)) in enumerate(train):
    d = os.path.join(root, 'train', f'part_{i % 2}')
    os.makedirs(d, exist_ok=True)
    video_io.write_video(os.path.join(d, f'{yid}_{i:06d}_{i + 10:06d}.mp4'),
                         _frames(n, h, w, i), fps)
    rows['train'].append((K_LABELS[label], yid, i, i + 10, 'train'))
  # Corrupt: random bytes with the right name. Truncated: the second half of a faststart mp4 cut.
  os.makedirs(os.path.join(root, 'train', 'part_0'), exist_ok=True)
  with open(os.path.join(root, 'train', 'part_0', 'corrupt0001_000000_000010.mp4'), 'wb') as f:
    f.write(np.random.default_rng(0).bytes(5000))
  rows['train'].append((K_LABELS[1], 'corrupt0001', 0, 10, 'train'))
  truncated = os.path.join(root, 'train', 'part_1', 'truncated01_000005_000015.mp4')
  video_io.write_video(truncated, _frames(60, 48, 64, 9), 30,
                       container_options={'movflags': 'faststart'})
  data = open(truncated, 'rb').read()
  with open(truncated, 'wb') as f:
    f.write(data[:len(data) * 2 // 5])
  rows['train'].append((K_LABELS[2], 'truncated01', 5.0, 15.0, 'train'))

  for i, label in enumerate((0, 2)):
    os.makedirs(os.path.join(root, 'val'), exist_ok=True)
    video_io.write_video(os.path.join(root, 'val', f'valvalval{i:02d}_000001_000011.mp4'),
                         _frames(50, 48, 64, 20 + i), 25)
    rows['validate'].append((K_LABELS[label], f'valvalval{i:02d}', 1, 11, 'validate'))
  rows['validate'].append((K_LABELS[1], 'missingclip', 3, 13, 'validate'))
  rows['validate'].insert(1, ('juggling fire', 'valvalval00', 1, 11, 'validate'))
  for i in range(2):
    os.makedirs(os.path.join(root, 'test'), exist_ok=True)
    video_io.write_video(os.path.join(root, 'test', f'testtest{i:03d}_000000_000010.mp4'),
                         _frames(40, 48, 64, 30 + i), 20)
    rows['test'].append((K_LABELS[i], f'testtest{i:03d}', 0, 10, 'test'))
  for split, file in (('train', 'train'), ('validate', 'val'), ('test', 'test')):
    _write_csv(os.path.join(root, 'annotations', f'{file}.csv'), rows[split])
  return root


SSV2_TEMPLATES = ('Pushing [something] from left to right', 'Pushing [something] from right to left',
                  'Holding [something]', 'Dropping [something] into [something]')


def make_mini_ssv2(root):
  """4 classes; 5 train videos (vp9 and vp8 webm, one missing), 2 validation (one with zero frames)."""
  os.makedirs(os.path.join(root, 'labels'))
  os.makedirs(os.path.join(root, '20bn-something-something-v2'))
  labels = {video_io_label(t): str(i) for i, t in enumerate(SSV2_TEMPLATES)}
  with open(os.path.join(root, 'labels', 'something-something-v2-labels.json'), 'w') as f:
    json.dump(labels, f)
  splits = {'train': [(101, 0, 'libvpx-vp9'), (102, 1, 'libvpx'), (103, 2, 'libvpx-vp9'),
                      (104, 3, 'libvpx'), (105, 1, None)],
            'validation': [(201, 3, 'libvpx-vp9'), (202, 0, 'empty')]}
  for split, entries in splits.items():
    items = []
    for vid, label, codec in entries:
      path = os.path.join(root, '20bn-something-something-v2', f'{vid}.webm')
      if codec == 'empty':  # The header and the start of a cluster: opens, holds no frame.
        video_io.write_video(path, _frames(24, 48, 64, vid), 12)
        data = open(path, 'rb').read()
        with open(path, 'wb') as f:
          f.write(data[:600])
      elif codec:
        video_io.write_video(path, _frames(24, 48, 64, vid), 12, codec=codec)
      template = SSV2_TEMPLATES[label]
      items.append({'id': str(vid), 'label': template.replace('[something]', 'a cup'),
                    'template': template, 'placeholders': ['a cup']})
    with open(os.path.join(root, 'labels', f'something-something-v2-{split}.json'), 'w') as f:
      json.dump(items, f)
  return root


def video_io_label(template):
  return template.replace('[', '').replace(']', '')


@pytest.fixture(scope='session')
def mini_kinetics(tmp_path_factory):
  return make_mini_kinetics(str(tmp_path_factory.mktemp('kinetics_release')))


@pytest.fixture(scope='session')
def mini_ssv2(tmp_path_factory):
  return make_mini_ssv2(str(tmp_path_factory.mktemp('ssv2_release')))


@pytest.fixture(scope='session')
def prepared(mini_kinetics, mini_ssv2, tmp_path_factory):
  """Both prepared into one data_dir: Kinetics at 10 fps, short side 32, with 2 worker processes;
  SSv2 at its native rate in-process. Returns (data_dir, kinetics report, ssv2 report)."""
  data_dir = str(tmp_path_factory.mktemp('prepared'))
  k = prepare.run('kinetics400/10fps_32px', manual_dir=mini_kinetics, data_dir=data_dir, workers=2,
                  videos_per_shard=3)
  s = prepare.run('ssv2/native_32px', manual_dir=mini_ssv2, data_dir=data_dir, workers=1,
                  videos_per_shard=2)
  return data_dir, k, s


def _source(data_dir, name, split):
  return builtin.ensure_built(name, data_dir).as_data_source(split)


def test_kinetics_counts_labels_and_report(prepared):
  data_dir, report, _ = prepared
  builder = builtin.ensure_built('kinetics400/10fps_32px', data_dir)
  info = builder.info
  assert tuple(info.features['label'].names) == tuple(sorted(K_LABELS))
  assert {s: v.num_examples for s, v in info.splits.items()} == {
      'train': 7, 'validation': 2, 'test': 2}
  assert info.file_format.value == 'array_record'
  by_reason = {(f['split'], f['video_id']): f['reason'] for f in report['failures']}
  assert by_reason == {('train', 'corrupt0001_000000_000010'): 'undecodable',
                       ('train', 'truncated01_000005_000015'): 'truncated',
                       ('validation', 'valvalval00_000001_000011'): 'unknown_label',
                       ('validation', 'missingclip_000003_000013'): 'missing'}
  assert report['splits']['train'] == {'videos': 9, 'written': 7, 'frames': 140, 'unusable': 2,
                                       'reasons': {'undecodable': 1, 'truncated': 1}}
  with open(os.path.join(data_dir, 'kinetics400', '10fps_32px', video_builder.REPORT_NAME)) as f:
    assert json.load(f) == report
  # The work shards are gone once the dataset is complete.
  assert not os.path.exists(os.path.join(data_dir, 'kinetics400', '10fps_32px', '_work'))


def test_kinetics_frames_rates_sizes_and_metadata(prepared):
  data_dir = prepared[0]
  source = _source(data_dir, 'kinetics400/10fps_32px', 'train')
  examples = {source[i]['video_id'].decode(): source[i] for i in range(len(source))}
  assert set(examples) == {f'{y}_{i:06d}_{i + 10:06d}' for i, y in enumerate(
      ['aaaaaaaaaa1', 'bbbbbbbbbb2', 'cccccccccc3', 'dddddddddd4', 'eeeeeeeeee5', 'ffffffffff6',
       'gggggggggg7'])}
  names = sorted(K_LABELS)
  source_fps = {'aaaaaaaaaa1': 30, 'bbbbbbbbbb2': 25, 'cccccccccc3': 24, 'gggggggggg7': 15}
  for vid, ex in examples.items():
    video = np.stack(ex['video'])
    # Every source is 2 s long: 20 frames at 10 fps whatever the source rate.
    portrait = vid.startswith('dddd')
    assert video.shape == ((20, 43, 32, 3) if portrait else (20, 32, 43, 3)), vid
    assert ex['fps'] == 10 and abs(ex['duration'] - 2) < 1e-3
    if vid[:11] in source_fps:
      assert ex['source_fps'] == pytest.approx(source_fps[vid[:11]], rel=1e-3)
  # Labels follow the CSV, indexed in the sorted class list.
  row_labels = {'aaaaaaaaaa1': 'abseiling', 'bbbbbbbbbb2': 'air drumming',
                'cccccccccc3': 'passing American football (in game)'}
  for yid, label in row_labels.items():
    ex = next(e for v, e in examples.items() if v.startswith(yid))
    assert names[ex['label']] == label
  # Resampling picks the frame shown at k / 10 s: the bright column (2 px per source frame) moves
  # 6 px per output frame at 30 fps and 3 px at 15 fps.
  for yid, step in (('aaaaaaaaaa1', 6), ('gggggggggg7', 3)):
    ex = next(e for v, e in examples.items() if v.startswith(yid))
    video = np.stack(ex['video']).astype(int)
    cols = [int(np.argmax(f.sum(axis=(0, 2)))) for f in video[:6]]
    expected = [2 * (k * step // 2) * 43 / 64 for k in range(6)]
    assert all(abs(c - e) <= 1 for c, e in zip(cols, expected)), (cols, expected)


def test_ssv2_labels_from_templates_and_report(prepared):
  data_dir, _, report = prepared
  builder = builtin.ensure_built('ssv2/native_32px', data_dir)
  names = builder.info.features['label'].names
  assert names == [video_io_label(t) for t in SSV2_TEMPLATES]
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {
      'train': 4, 'validation': 1}
  source = builder.as_data_source('train')
  labels = {source[i]['video_id'].decode(): source[i]['label'] for i in range(len(source))}
  assert labels == {'101': 0, '102': 1, '103': 2, '104': 3}
  ex = source[0]
  assert np.stack(ex['video']).shape == (24, 32, 43, 3)  # Native 12 fps kept: 24 frames.
  assert ex['fps'] == pytest.approx(12) and ex['source_fps'] == pytest.approx(12)
  assert sorted((f['video_id'], f['reason']) for f in report['failures']) == [
      ('105', 'missing'), ('202', 'zero_frames')]


class _Interrupt(BaseException):
  pass


def test_rerun_resumes_without_redoing_finished_shards(mini_kinetics, tmp_path, monkeypatch,
                                                       capsys):
  """An interrupt in the middle keeps the finished shards; the next run decodes only the rest."""
  calls, armed = [], [True]
  real = video_io.decode_video

  def interrupting(path, **kw):
    calls.append(os.path.basename(path))
    if len(calls) == 5 and armed[0]:
      raise _Interrupt  # Like KeyboardInterrupt, which pytest itself would act on.
    return real(path, **kw)

  monkeypatch.setattr(video_io, 'decode_video', interrupting)
  kw = dict(manual_dir=mini_kinetics, data_dir=str(tmp_path), workers=1, videos_per_shard=2)
  with pytest.raises(_Interrupt):
    prepare.run('kinetics400/5fps_24px', **kw)
  assert 'Run the same command again' in capsys.readouterr().out
  work = tmp_path / 'kinetics400' / '5fps_24px' / '_work'
  done = sorted(p.name for p in work.glob('*.json') if p.name != 'params.json')
  assert done == ['train-00000-of-00005.json', 'train-00001-of-00005.json']

  calls.clear()
  armed[0] = False
  report = prepare.run('kinetics400/5fps_24px', keep_work=True, **kw)
  assert 'already done' in capsys.readouterr().out
  # Left: train rows 4-8 (5), validation 2 (the missing file and the unknown label are never
  # decoded), test 2.
  assert len(calls) == 9
  assert report['splits']['train']['written'] == 7
  builder = builtin.ensure_built('kinetics400/5fps_24px', str(tmp_path))
  assert builder.info.splits['train'].num_examples == 7
  assert np.stack(builder.as_data_source('train')[0]['video']).shape[0] == 10  # 2 s at 5 fps.

  # Once prepared, a re-run decodes nothing and only prints the report.
  calls.clear()
  prepare.run('kinetics400/5fps_24px', **kw)
  assert calls == [] and 'already prepared' in capsys.readouterr().out


def test_default_config_opens_by_plain_name_in_a_fresh_process(mini_ssv2, tmp_path):
  """`ensure_built('ssv2', data_dir)` opens the default config, even where nothing imported the
  builder classes (TFDS reads the prepared files), and the CLI runs the prepare command."""
  env = {**os.environ, 'PYTHONPATH': REPO}
  out = subprocess.run([sys.executable, '-m', 'sparse_tubes', 'prepare', 'ssv2',
                        f'--manual_dir={mini_ssv2}', f'--data_dir={tmp_path}', '--workers=1'],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'train: 4/5 videos written' in out.stdout
  code = ('import sys; from sparse_tubes.data import builtin; '
          f'b = builtin.ensure_built("ssv2", {str(tmp_path)!r}); '
          'print(b.info.config_name, b.info.splits["train"].num_examples, '
          '"sparse_tubes.data.ssv2" in sys.modules, "tensorflow" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ['native_256px', '4', 'False', 'False']


def _video_cfg(name, **kw):
  return defaults.dataset(**{**dict(
      tfds_name=name, kind='video', batch_size=4, eval_batch_size=6, num_frames=4,
      frame_stride=2, crop_size=24, min_resize=28, max_resize=32, flip=True,
      eval_split='validation', eval_temporal_views=2, eval_spatial_views=3), **kw})


def test_pipelines_read_prepared_kinetics_and_ssv2(prepared):
  data_dir = prepared[0]
  grain_cfg = defaults.base().grain
  grain_cfg.read_threads = 2
  for cfg in (_video_cfg('kinetics400/10fps_32px'),
              _video_cfg('ssv2/native_32px', sampling='segment', flip=False, num_frames=8)):
    it = pipeline.train_iterator(cfg, data_dir=data_dir, seed=0, process_index=0,
                                 process_count=1, grain_cfg=grain_cfg)
    batch = next(it)
    assert batch['inputs'].shape == (4, cfg.num_frames, 24, 24, 3)
    assert batch['inputs'].dtype == np.float32 and batch['label'].max() < 4
    data = pipeline.eval_batches(cfg, data_dir=data_dir, process_index=0, process_count=1)
    batches = list(data)
    mask = np.concatenate([b['mask'] for b in batches])
    assert mask.sum() == data.num_videos * 6
    info = pipeline.dataset_info(cfg, data_dir)
    assert info.num_examples['train'] in (7, 4)
  assert 'tensorflow' not in sys.modules
