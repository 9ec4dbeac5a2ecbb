"""Atomic file writes: the content goes to a temporary file in the same directory, which is renamed
over the target once complete (os.replace is atomic on POSIX file systems). A reader, or a command
that finds the file after a kill or a full disk, sees the old file or the new one, never half of
one: an evaluation result that exists is a complete result.
"""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def open_atomic(path: str, mode: str = 'w', **kwargs):
  """`open(path, mode)` whose file appears at `path` only when the block ends without an error;
  on an error the temporary file is removed and the old `path` (if any) is left as it was."""
  if mode not in ('w', 'wb'):
    raise ValueError(f'open_atomic writes whole files (mode w or wb), not {mode!r}.')
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  try:
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())  # On disk before the rename makes it visible.
    os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide results from the other users of a workdir.
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> str:
  with open_atomic(path) as f:
    f.write(text)
  return path
