"""The machinery of `prepare` that needs no video: config names, finding the release's files, the
progress line and the report of unusable videos."""
import io
import json

import pytest

from sparse_tubes.data import video_builder


@pytest.mark.parametrize('fps,side,name', [
    (25.0, 256, '25fps_256px'), (12.5, 128, '12.5fps_128px'), (None, 256, 'native_256px'),
    (10, None, '10fps_nativepx'), (None, None, 'native_nativepx')])
def test_config_names_round_trip(fps, side, name):
  assert video_builder.config_name(fps, side) == name
  assert video_builder.parse_config_name(name) == (fps and float(fps), side)


@pytest.mark.parametrize('name', ['25fps', '256px', '25fps_256', 'fast_256px', '25fps_256px_x'])
def test_bad_config_names_show_the_form(name):
  with pytest.raises(ValueError, match='NAMEfps_SIZEpx'):
    video_builder.parse_config_name(name)


def test_make_config():
  c = video_builder.make_config(None, 256, jpeg_quality=80)
  assert (c.name, c.fps, c.short_side, c.jpeg_quality) == ('native_256px', None, 256, 80)


def test_index_files_and_find_file(tmp_path):
  for rel in ('a/clip1.mp4', 'b/c/clip2.WEBM', 'b/clip1.mkv', 'notes.txt', 'labels/x.json',
              'deep/er/x.json', 'deep/y.json'):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text('')
  found = video_builder.index_files(str(tmp_path))
  assert sorted(found) == ['clip1', 'clip2']  # extensions are case-blind; other files skipped
  assert found['clip2'] == str(tmp_path / 'b/c/clip2.WEBM')
  assert found['clip1'] in (str(tmp_path / 'a/clip1.mp4'), str(tmp_path / 'b/clip1.mkv'))
  # The preferred folders win over a search; then anywhere below; None when absent.
  assert video_builder.find_file(str(tmp_path), 'x.json') == str(tmp_path / 'labels/x.json')
  assert video_builder.find_file(str(tmp_path), 'y.json') == str(tmp_path / 'deep/y.json')
  assert video_builder.find_file(str(tmp_path), 'z.json') is None


def test_read_sidecars_and_make_report(tmp_path):
  shards = {'train-00000-of-00002.json': {'videos': 3, 'written': 2, 'frames': 40, 'failures': [
                {'video_id': 'a', 'reason': 'no video stream'}]},
            'train-00001-of-00002.json': {'videos': 2, 'written': 0, 'frames': 0, 'failures': [
                {'video_id': 'b', 'reason': 'missing'}, {'video_id': 'c', 'reason': 'missing'}]},
            'validation-00000-of-00001.json': {'videos': 1, 'written': 1, 'frames': 9,
                                               'failures': []}}
  for name, summary in shards.items():
    (tmp_path / name).write_text(json.dumps(summary))
  (tmp_path / 'train-00000-of-00002.array_record').write_bytes(b'')  # not a summary
  summaries = video_builder.read_sidecars(str(tmp_path), ['train', 'validation'])
  assert [len(summaries['train']), len(summaries['validation'])] == [2, 1]
  report = video_builder.make_report('Kinetics-400', summaries)
  assert report['dataset'] == 'Kinetics-400'
  assert report['splits']['train'] == {'videos': 5, 'written': 2, 'frames': 40, 'unusable': 3,
                                       'reasons': {'no video stream': 1, 'missing': 2}}
  assert report['splits']['validation']['unusable'] == 0
  assert report['failures'] == [{'split': 'train', 'video_id': v, 'reason': r} for v, r in
                                [('a', 'no video stream'), ('b', 'missing'), ('c', 'missing')]]


def test_progress_line_off_a_terminal():
  out = io.StringIO()
  p = video_builder.Progress('K400 train', total=4, stream=out)
  p.update(1, 0, force=True)
  p.update(3, 1)  # within 10 s of the last line: nothing printed until close
  p.close()
  lines = out.getvalue().splitlines()
  assert len(lines) == 2
  assert lines[0].startswith('K400 train: 1/4 videos (25.0%)') and lines[0].endswith('0 unusable')
  assert lines[1].startswith('K400 train: 4/4 videos (100.0%)') and lines[1].endswith('1 unusable')
