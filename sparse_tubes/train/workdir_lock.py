"""One `train` per workdir: WORKDIR/train.lock names the run that holds it (host, pid, start).

Two runs on one workdir would overwrite each other's checkpoints, config.json and metrics, so a
second `train` refuses to start while the holder is alive. The holder refreshes the file's mtime
(its heartbeat) every `HEARTBEAT_S`; a lock whose process is gone (same host) or whose heartbeat is
older than `STALE_S` (another host that died) is taken over with a warning. On a multi-host run the
lock belongs to the run: process 0 takes it and tells the others whether it could.

`evaluate` takes one such lock per dataset it evaluates (WORKDIR/evaluate_<dataset>.lock): two
evaluators on one workdir would write every result and TensorBoard row twice. `predict` only reads,
and takes no lock.
"""
import contextlib
import json
import os
import socket
import threading
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

LOCK = 'train.lock'
HEARTBEAT_S = 20.0
STALE_S = 300.0


class WorkdirLocked(RuntimeError):
  """Another live `train` (or `evaluate` of the same dataset) holds the workdir."""


def eval_lock(dataset: str) -> str:
  """The lock file of `evaluate` on one dataset of a workdir."""
  return f'evaluate_{dataset}.lock'


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    return True
  return True


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):  # Half-written or unreadable: judged by its heartbeat alone.
    return {}


def stale_reason(path: str, *, stale_s: float = STALE_S) -> str | None:
  """Why the lock at `path` may be taken over ('gone': it vanished), or None while its holder
  lives."""
  holder = _read(path)
  try:
    age = time.time() - os.path.getmtime(path)
  except FileNotFoundError:
    return 'gone'
  if holder.get('host') == socket.gethostname() and 'pid' in holder and not _alive(holder['pid']):
    return f"its process {holder['pid']} is gone"
  if age > stale_s:
    return f'its heartbeat is {age:.0f} s old (> {stale_s:.0f} s)'
  return None


class Lock:
  """The lock file of one workdir, held by this process (see the module docstring)."""

  def __init__(self, workdir: str, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S,
               name: str = LOCK, command: str = 'train'):
    self.path = os.path.join(workdir, name)
    self.command = command
    self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
    self._stop = threading.Event()
    self._thread = None
    self.me = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.time()}

  def acquire(self):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    for _ in range(3):  # Retried only when a stale lock vanished under us.
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        reason = stale_reason(self.path, stale_s=self.stale_s)
        if reason is None:
          h = _read(self.path)
          age = time.time() - os.path.getmtime(self.path)
          raise WorkdirLocked(
              f"{os.path.dirname(os.path.abspath(self.path))} is in use by another "
              f"`{self.command}` (host "
              f"{h.get('host', '?')}, pid {h.get('pid', '?')}, heartbeat {age:.0f} s ago; "
              f'{self.path}): wait for it to finish, or give another --workdir.')
        if reason != 'gone':
          logging.warning('Taking over the stale lock %s (%s, held by %s).', self.path, reason,
                          _read(self.path) or 'unknown')
          print(f'Warning: taking over the stale lock {self.path} ({reason}).', flush=True)
          with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(self.me, f)
      self._thread = threading.Thread(target=self._beat, daemon=True, name='workdir-lock')
      self._thread.start()
      return self
    raise WorkdirLocked(f'Could not take {self.path}: other runs keep creating it.')

  def _beat(self):
    while not self._stop.wait(self.heartbeat_s):
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def release(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      if _read(self.path).get('pid') == self.me['pid']:  # Never remove a lock another run took.
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)


@contextlib.contextmanager
def hold(workdir: str, *, name: str = LOCK, command: str = 'train'):
  """The workdir's lock for the whole run: process 0 takes it; on a multi-host run the others
  learn whether it could, so every process stops together with the same message."""
  lock, error = None, ''
  if jax.process_index() == 0:
    try:
      lock = Lock(workdir, name=name, command=command).acquire()
    except WorkdirLocked as e:
      error = str(e)
  if jax.process_count() > 1:
    ok = multihost_utils.broadcast_one_to_all(int(not error))
    if not ok and not error:
      error = f'{workdir} is in use by another `{command}` (process 0 found its lock, {name}).'
  if error:
    raise WorkdirLocked(error)
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
