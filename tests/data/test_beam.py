"""`prepare` on Apache Beam (data/beam.py): the DirectRunner on the mini-Kinetics of
test_prepare_datasets gives the examples and the report of the one-machine path."""
import dataclasses
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import pytest
from apache_beam.io.localfilesystem import LocalFileSystem
from array_record.python import array_record_module
from tensorflow_datasets.core import example_parser, file_adapters

from sparse_tubes.data import beam, builtin, prepare, video_builder, video_io
from tests.data.test_prepare_datasets import make_mini_kinetics

NAME = 'kinetics400/10fps_32px'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def both(tmp_path_factory):
  """The mini-Kinetics (a corrupt, a truncated and a missing clip, a label not in the class list)
  prepared on one machine and, by the command line, on Beam's DirectRunner: (local data_dir, report,
  beam data_dir, report, release)."""
  release = make_mini_kinetics(str(tmp_path_factory.mktemp('release')))
  local, on_beam = str(tmp_path_factory.mktemp('local')), str(tmp_path_factory.mktemp('beam'))
  a = prepare.run(NAME, manual_dir=release, data_dir=local, workers=1, videos_per_shard=3)
  # On Beam through the command line, as a user runs it (the flags reach prepare.run).
  out = subprocess.run([sys.executable, '-m', 'sparse_tubes', 'prepare', NAME,
                        f'--manual_dir={release}', f'--data_dir={on_beam}', '--workers=1',
                        '--beam_runner=DirectRunner', '--beam_options=--direct_num_workers=1'],
                       capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, 'PYTHONPATH': REPO})
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'to decode on Beam' in out.stdout and 'train: 7/9 videos written' in out.stdout
  with open(os.path.join(on_beam, 'kinetics400', '10fps_32px', video_builder.REPORT_NAME)) as f:
    b = json.load(f)
  return local, a, on_beam, b, release


def _records(data_dir, split):
  """The split's examples in stored order, parsed but not decoded: JPEG bytes as written.

  Whole files are not compared: the same examples serialize to different bytes from one process to
  the next (tf.Example's feature map has no fixed order), on one machine too."""
  builder = builtin.ensure_built(NAME, data_dir)
  parser = example_parser.ExampleParserNp(builder.info.features.get_serialized_info())
  out = []
  for name in builder.info.splits[split].filenames:
    reader = array_record_module.ArrayRecordReader(os.path.join(builder.data_dir, name))
    for record in reader.read_all():
      ex = parser.parse_example(record)
      out.append({**ex, 'video': list(ex['video'])})
    reader.close()
  return out


def test_direct_runner_writes_the_examples_and_report_of_one_machine(both):
  local, report, on_beam, beam_report, _ = both
  assert beam_report == report
  assert report['splits']['train']['reasons'] == {'undecodable': 1, 'truncated': 1}
  assert report['splits']['validation']['reasons'] == {'missing': 1, 'unknown_label': 1}
  # The work directory is gone.
  assert not os.path.exists(os.path.join(on_beam, 'kinetics400', '10fps_32px', '_work'))

  a, b = builtin.ensure_built(NAME, local).info, builtin.ensure_built(NAME, on_beam).info
  assert b.file_format.value == 'array_record'
  assert {s: (v.num_examples, v.shard_lengths) for s, v in b.splits.items()} == {
      s: (v.num_examples, v.shard_lengths) for s, v in a.splits.items()}
  assert b.features['label'].names == a.features['label'].names
  for split in ('train', 'validation', 'test'):
    x, y = _records(local, split), _records(on_beam, split)
    assert len(x) == len(y) == a.splits[split].num_examples
    assert [e['id'] for e in y] == [e['id'] for e in x]  # The same hashed-key order.
    for ex, ey in zip(x, y):
      assert ex.keys() == ey.keys()
      for k in ex:
        assert ex[k] == ey[k], (split, ex['video_id'], k)
  assert 'tensorflow' not in sys.modules


def test_a_split_without_a_readable_clip_is_named(both, tmp_path):
  """TFDS's Beam writer stops at an empty split with its own words; the error names the split and
  the reasons, as on one machine, and the report is written."""
  release = str(tmp_path / 'release')
  shutil.copytree(both[4], release, symlinks=True)
  # Train: two clips of the missing clip's class and another; validation: the missing clip.
  for name, keep in (('train.csv', ('aaaaaaaaaa1', 'bbbbbbbbbb2')), ('val.csv', ('missingclip',))):
    path = os.path.join(release, 'annotations', name)
    with open(path) as f:
      lines = f.read().splitlines()
    with open(path, 'w') as f:
      f.write('\n'.join([lines[0]] + [l for l in lines if l.split(',')[1] in keep]) + '\n')
  with pytest.raises(ValueError, match=r"no video of split 'validation' could be read \(1 listed; "
                                       r'unusable: missing 1\)'):
    prepare.run(NAME, manual_dir=release, data_dir=str(tmp_path / 'out'), workers=1,
                beam_runner='DirectRunner')
  with open(tmp_path / 'out' / 'kinetics400' / '10fps_32px' / video_builder.REPORT_NAME) as f:
    assert json.load(f)['splits']['train']['written'] == 2


def test_summaries_merge_across_workers():
  """The per-clip records of a split folded in bundles on several workers and merged in any order
  give the counts, and the failures in listing order."""
  fail = lambda i, r: {'video_id': f'v{i}', 'path': None, 'reason': r, 'detail': ''}
  records = [(i, 10 + i, None) for i in range(20)] + [
      (20, 0, fail(20, 'missing')), (3, 0, fail(3, 'undecodable')), (11, 0, fail(11, 'missing'))]
  random.Random(0).shuffle(records)
  fn = beam.Summarize()
  accs = []
  for part in (records[:7], records[7:8], records[8:]):
    acc = fn.create_accumulator()
    for r in part:
      acc = fn.add_input(acc, r)
    accs.append(acc)
  merged = fn.extract_output(fn.merge_accumulators([accs[2], fn.merge_accumulators(accs[:2])]))
  assert (merged['videos'], merged['written'], merged['frames']) == (23, 20, sum(range(10, 30)))
  assert [f['video_id'] for f in merged['failures']] == ['v3', 'v11', 'v20']
  report = video_builder.make_report('x', {'train': [merged]})
  assert report['splits']['train']['reasons'] == {'missing': 2, 'undecodable': 1}


def test_bad_beam_flags_fail_before_any_work(tmp_path):
  kw = dict(manual_dir=str(tmp_path), data_dir=str(tmp_path), workers=1)
  with pytest.raises(ValueError, match='not one of'):
    prepare.run('kinetics700', beam_runner='Dataflow', **kw)
  with pytest.raises(ValueError, match='needs --beam_runner'):
    prepare.run('kinetics700', beam_options='--project=p', **kw)
  with pytest.raises(ValueError, match='not Beam flags'):
    prepare.run('kinetics700', beam_runner='DirectRunner', beam_options='project=p', **kw)
  with pytest.raises(ValueError, match='--manual_dir=.* and --data_dir=.*: Dataflow workers cannot'):
    prepare.run('kinetics700', beam_runner='DataflowRunner', beam_options='--project=p', **kw)
  opts = beam.pipeline_options('DirectRunner', '', 3).get_all_options()
  assert (opts['direct_num_workers'], opts['direct_running_mode']) == (3, 'multi_processing')
  opts = beam.pipeline_options('DataflowRunner', '--project=p --region=europe-west4', 3)
  assert opts.get_all_options()['region'] == 'europe-west4'
  assert not glob.glob(str(tmp_path / '*'))


class _FakeRemote(LocalFileSystem):
  """fakegs://PATH is ROOT/PATH: Beam's file-system interface as Dataflow's gs:// presents it."""
  ROOT = ''

  @classmethod
  def scheme(cls):
    return 'fakegs'

  def _local(self, path):
    return path.replace('fakegs://', self.ROOT + '/', 1)

  def match(self, patterns, limits=None):
    results = super().match([self._local(p) for p in patterns], limits)
    for r in results:
      for m in r.metadata_list:
        m.path = m.path.replace(self.ROOT + '/', 'fakegs://', 1)
    return results

  def open(self, path, *args, **kw):
    return super().open(self._local(path), *args, **kw)

  def create(self, path, *args, **kw):
    return super().create(self._local(path), *args, **kw)


def test_release_and_shards_on_a_remote_file_system(tmp_path, monkeypatch):
  """What Dataflow adds over the DirectRunner: the release listed and read through Beam's file
  systems, each clip decoded from a local copy (a corrupt one counted, an unreadable one 'missing'),
  ArrayRecord shards written locally and copied up."""
  release = make_mini_kinetics(str(tmp_path / 'release'))
  monkeypatch.setattr(_FakeRemote, 'ROOT', str(tmp_path))
  builder = prepare.make_builder('kinetics400/10fps_32px', str(tmp_path / 'out'))
  names, splits = builder.list_videos('fakegs://release')
  local_names, local_splits = builder.list_videos(release)
  assert names == local_names
  for split, videos in splits.items():
    assert [(v.video_id, v.label, v.path) for v in videos] == [
        (v.video_id, v.label, v.path and 'fakegs://' + os.path.relpath(v.path, tmp_path))
        for v in local_splits[split]]
  cfg = dict(fps=10.0, short_side=32, jpeg_quality=90, min_fraction=0.5)
  fn = beam.DecodeClip(cfg, 'train')
  fn.setup()
  train = {v.video_id[:11]: v for v in splits['train']}
  (key_example,) = [o for o in fn.process(train['aaaaaaaaaa1']) if isinstance(o, tuple)]
  expected, _ = video_io.decode_clip(local_splits['train'][0], cfg)
  assert key_example == (expected['id'], expected)
  (out,) = fn.process(train['corrupt0001'])
  assert out.value[2]['reason'] == 'undecodable' and out.value[2]['path'].startswith('fakegs://')
  gone = dataclasses.replace(train['bbbbbbbbbb2'], path='fakegs://release/gone.mp4')
  (out,) = fn.process(gone)
  assert out.value[2]['reason'] == 'missing'
  assert not glob.glob(os.path.join(tempfile.gettempdir(), 'sparse_tubes_clip_*'))  # Copies gone.

  records = [(i, b'record %d' % i) for i in range(5)]
  writer = beam.RemoteArrayRecordWriter(file_format=file_adapters.FileFormat.ARRAY_RECORD)
  writer.write('fakegs://shard.array_record', records)
  reader = array_record_module.ArrayRecordReader(str(tmp_path / 'shard.array_record'))
  assert reader.read_all() == [r for _, r in records]
