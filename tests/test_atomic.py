"""Atomic writes: the file appears whole at the end of the block, or not at all."""
import os
import stat

import pytest

from sparse_tubes import atomic


def test_write_text_creates_folders_and_a_readable_file(tmp_path):
  path = tmp_path / 'a' / 'b' / 'results.json'
  assert atomic.write_text(str(path), '{"top1": 0.5}') == str(path)
  assert path.read_text() == '{"top1": 0.5}'
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # not mkstemp's 0o600
  assert os.listdir(path.parent) == ['results.json']  # no temporary file left


def test_an_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / 'results.json'
  path.write_text('old')
  with pytest.raises(RuntimeError, match='disk full'):
    with atomic.open_atomic(str(path)) as f:
      f.write('half of the new')
      raise RuntimeError('disk full')
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['results.json']


def test_binary_writes_replace_and_other_modes_are_refused(tmp_path):
  path = tmp_path / 'x.bin'
  path.write_bytes(b'old')
  with atomic.open_atomic(str(path), 'wb') as f:
    f.write(b'\x00\x01')
  assert path.read_bytes() == b'\x00\x01'
  for mode in ('a', 'r', 'w+'):
    with pytest.raises(ValueError, match='whole files'):
      with atomic.open_atomic(str(path), mode):
        pass
