"""Kinetics as the CVDF release lays it out: clip names, the CSV header check, the class list from
train.csv, clips found anywhere below the folder, and splits without labels left out."""
import types

import pytest

from sparse_tubes.data import kinetics

HEADER = 'label,youtube_id,time_start,time_end,split\n'


def test_clip_name_pads_the_times_and_reads_float_strings():
  assert kinetics.clip_name('abc', 7, 17) == 'abc_000007_000017'
  assert kinetics.clip_name('-x_y', '12.0', '22.0') == '-x_y_000012_000022'


def test_read_csv_rejects_a_csv_without_the_official_columns(tmp_path):
  good, bad = tmp_path / 'good.csv', tmp_path / 'bad.csv'
  good.write_text(HEADER + 'dancing,abc,1,11,train\n')
  bad.write_text('label,video\ndancing,abc\n')
  assert kinetics.read_csv(str(good)) == [
      {'label': 'dancing', 'youtube_id': 'abc', 'time_start': '1', 'time_end': '11', 'split': 'train'}]
  with pytest.raises(ValueError, match=r"lacks the columns \['time_end', 'time_start', 'youtube_id'\]"):
    kinetics.read_csv(str(bad))


def list_videos(manual_dir):
  # list_videos reads only the builder's name: no TFDS builder (and no data_dir) is needed.
  return kinetics.Kinetics400.list_videos(types.SimpleNamespace(name='kinetics400'), str(manual_dir))


def test_classes_splits_and_files(tmp_path, capsys):
  (tmp_path / 'annotations').mkdir()
  (tmp_path / 'annotations' / 'train.csv').write_text(
      HEADER + 'zumba,aaa,0,10,train\nabseiling,bbb,5,15,train\nzumba,ccc,1,11,train\n')
  (tmp_path / 'annotations' / 'validate.csv').write_text(HEADER + 'abseiling,ddd,2,12,val\n')
  (tmp_path / 'annotations' / 'test.csv').write_text(HEADER + ',eee,0,10,test\n')  # no labels
  (tmp_path / 'clips' / 'deep').mkdir(parents=True)
  (tmp_path / 'clips' / 'deep' / 'bbb_000005_000015.mp4').write_bytes(b'')
  (tmp_path / 'ddd_000002_000012.mp4').write_bytes(b'')
  names, splits = list_videos(tmp_path)
  assert names == ['abseiling', 'zumba']  # sorted: label k is the k-th published class
  assert sorted(splits) == ['train', 'validation']
  assert 'the \'test\' split is left out' in capsys.readouterr().out
  train = splits['train']
  assert [v.video_id for v in train] == ['aaa_000000_000010', 'bbb_000005_000015', 'ccc_000001_000011']
  assert [v.label for v in train] == [1, 0, 1]
  assert [v.index for v in train] == [0, 1, 2]
  assert train[0].path is None  # not downloaded: prepare reports it, the listing keeps it
  assert train[1].path == str(tmp_path / 'clips' / 'deep' / 'bbb_000005_000015.mp4')
  assert splits['validation'][0].label == 0
  assert splits['validation'][0].path == str(tmp_path / 'ddd_000002_000012.mp4')


def test_no_train_csv_says_how_to_download(tmp_path):
  with pytest.raises(ValueError, match='No annotations/train.csv .*cvdfoundation'):
    list_videos(tmp_path)
