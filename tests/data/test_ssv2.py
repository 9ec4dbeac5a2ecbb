"""Something-Something v2: labels are the templates without brackets, looked up in the labels file;
the label file must number its classes 0..n-1; a missing validation JSON leaves its split out."""
import json
import types

import pytest

from sparse_tubes.data import ssv2


def list_videos(manual_dir):
  # list_videos reads only the builder's name: no TFDS builder (and no data_dir) is needed.
  return ssv2.Ssv2.list_videos(types.SimpleNamespace(name='ssv2'), str(manual_dir))


def write(path, obj):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj))


def test_template_label():
  assert ssv2.template_label('Pushing [something] from left to right') == (
      'Pushing something from left to right')


def test_labels_from_templates_and_files(tmp_path, capsys):
  write(tmp_path / 'labels' / ssv2.LABELS, {'Pushing something': '1', 'Holding something': '0'})
  write(tmp_path / 'anno' / ssv2.SPLITS['train'], [
      {'id': '7', 'template': 'Pushing [something]', 'label': 'pushing a cup'},
      {'id': 8, 'template': 'Holding [something]'},
      {'id': '9', 'template': 'Dropping [something]'}])  # not in the labels file
  (tmp_path / 'videos').mkdir()
  (tmp_path / 'videos' / '8.webm').write_bytes(b'')
  names, splits = list_videos(tmp_path)
  assert names == ['Holding something', 'Pushing something']
  assert list(splits) == ['train']
  assert "the 'validation' split is left out" in capsys.readouterr().out
  train = splits['train']
  assert [(v.video_id, v.label, v.label_name) for v in train] == [
      ('7', 1, 'Pushing something'), ('8', 0, 'Holding something'), ('9', None, 'Dropping something')]
  assert train[1].path == str(tmp_path / 'videos' / '8.webm') and train[0].path is None


def test_label_indices_must_count_from_zero(tmp_path):
  write(tmp_path / ssv2.LABELS, {'a': '0', 'b': '2'})
  with pytest.raises(ValueError, match=r'label indices are not 0\.\.1'):
    list_videos(tmp_path)


def test_missing_files_say_what_to_download(tmp_path):
  with pytest.raises(ValueError, match='No something-something-v2-labels.json'):
    list_videos(tmp_path)
  write(tmp_path / ssv2.LABELS, {'a': '0'})
  with pytest.raises(ValueError, match='No something-something-v2-train.json'):
    list_videos(tmp_path)
