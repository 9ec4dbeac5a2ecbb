"""Video files in and out: output sizes, decoding at a frame rate, the reasons a video is unusable,
and a work shard written and read back."""
import os

import numpy as np
import pytest

from sparse_tubes.data import video_io


def frames(n, h, w, seed=0):
  """Frames whose content encodes the frame index: a bright column moving right 2 px per frame."""
  base = np.random.default_rng(seed).integers(0, 120, (1, h, w, 3), np.uint8).repeat(n, 0)
  for t in range(n):
    base[t, :, (2 * t) % w] = 255
  return base


@pytest.mark.parametrize('h,w,side,out', [
    (240, 320, 128, (128, 171)), (320, 240, 128, (171, 128)), (100, 100, 64, (64, 64)),
    (48, 64, None, (48, 64)), (48, 64, 96, (96, 128))])
def test_output_size_keeps_the_aspect(h, w, side, out):
  assert video_io.output_size(h, w, side) == out


def test_decode_video_resampling_and_failures(tmp_path):
  path = str(tmp_path / 'a.mp4')
  video_io.write_video(path, frames(30, 48, 64), 30)  # 1 s
  for fps, n in ((None, 30), (10, 10), (25, 25), (60, 60)):
    d = video_io.decode_video(path, fps=fps, short_side=None)
    assert len(d.frames) == n and (d.height, d.width) == (48, 64)
  assert video_io.decode_video(path, fps=10, short_side=96).width == 128  # Upscaled too.
  with pytest.raises(video_io.VideoError, match='missing'):
    video_io.decode_video(str(tmp_path / 'nope.mp4'))


CFG = {'fps': 10.0, 'short_side': 32, 'jpeg_quality': 90, 'min_fraction': 0.5}


def test_decode_clip_reasons(tmp_path):
  junk = tmp_path / 'junk.mp4'
  junk.write_bytes(np.random.default_rng(0).bytes(3000))
  cases = [(video_io.Video(0, 'a', None, 'juggling', str(junk)), 'unknown_label'),
           (video_io.Video(1, 'b', 0, 'x', None), 'missing'),
           (video_io.Video(2, 'c', 0, 'x', str(junk)), 'undecodable')]
  for v, reason in cases:
    example, failure = video_io.decode_clip(v, CFG)
    assert example is None
    assert failure['video_id'] == v.video_id and failure['reason'] == reason, failure
    assert failure['reason'] in video_io.REASONS


def test_decode_shard_writes_the_examples_and_the_summary(tmp_path):
  good = str(tmp_path / 'good.mp4')
  video_io.write_video(good, frames(20, 32, 48), 20)  # 1 s at 20 fps -> 10 frames at 10 fps
  videos = [video_io.Video(0, 'good', 3, 'x', good), video_io.Video(1, 'gone', 1, 'x', None)]
  data, sidecar = str(tmp_path / 'shard.array_record'), str(tmp_path / 'shard.json')
  summary = video_io.decode_shard((videos, data, sidecar, CFG))
  assert (summary['videos'], summary['written'], summary['frames']) == (2, 1, 10)
  assert [f['reason'] for f in summary['failures']] == ['missing']
  assert os.path.isfile(sidecar) and not os.path.exists(data + '.tmp')
  [example] = list(video_io.read_shard(data))
  assert (example['id'], example['video_id'], example['label']) == (0, 'good', 3)
  assert len(example['video']) == 10 and example['fps'] == 10.0 and example['source_fps'] == 20.0
  assert example['video'][0][:2] == b'\xff\xd8'  # JPEG
