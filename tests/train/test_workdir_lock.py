"""One run per workdir: a live holder refuses a second run, a dead or silent one is taken over, and
a run only ever removes its own lock."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from sparse_tubes.train import workdir_lock


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid  # reaped: no process has it (pids are not reused this fast)


def write_lock(path, **holder):
  path.write_text(json.dumps({'host': socket.gethostname(), 'started': 0.0, **holder}))


def test_acquire_writes_the_holder_and_release_removes_it(tmp_path):
  lock = workdir_lock.Lock(str(tmp_path / 'run')).acquire()
  path = tmp_path / 'run' / workdir_lock.LOCK
  assert json.loads(path.read_text())['pid'] == os.getpid()
  lock.release()
  assert not path.exists()


def test_a_live_holder_refuses_a_second_run(tmp_path):
  write_lock(tmp_path / 'train.lock', pid=os.getpid())
  with pytest.raises(workdir_lock.WorkdirLocked, match=rf'in use by another `train` .*pid {os.getpid()}'):
    workdir_lock.Lock(str(tmp_path)).acquire()
  name = workdir_lock.eval_lock('k400')
  assert name == 'evaluate_k400.lock'
  write_lock(tmp_path / name, pid=os.getpid())
  with pytest.raises(workdir_lock.WorkdirLocked, match='another `evaluate`'):
    workdir_lock.Lock(str(tmp_path), name=name, command='evaluate').acquire()


def test_stale_reasons(tmp_path):
  path = tmp_path / 'train.lock'
  assert workdir_lock.stale_reason(str(path)) == 'gone'
  write_lock(path, pid=os.getpid())
  assert workdir_lock.stale_reason(str(path)) is None
  pid = dead_pid()
  write_lock(path, pid=pid)
  assert workdir_lock.stale_reason(str(path)) == f'its process {pid} is gone'
  write_lock(path, host='another-host', pid=1)  # cannot check its pid: judged by its heartbeat
  assert workdir_lock.stale_reason(str(path)) is None
  old = time.time() - 400
  os.utime(path, (old, old))
  assert workdir_lock.stale_reason(str(path)).startswith('its heartbeat is 400 s old (> 300 s)')
  path.write_text('{"host": ')  # half-written: its heartbeat alone decides
  assert workdir_lock.stale_reason(str(path), stale_s=1e6) is None


def test_a_stale_lock_is_taken_over_and_a_taken_lock_is_not_removed(tmp_path, capsys):
  path = tmp_path / 'train.lock'
  write_lock(path, pid=dead_pid())
  lock = workdir_lock.Lock(str(tmp_path)).acquire()
  assert 'taking over the stale lock' in capsys.readouterr().out
  assert json.loads(path.read_text())['pid'] == os.getpid()
  write_lock(path, pid=os.getpid() + 1)  # another run took it over meanwhile
  lock.release()
  assert path.exists()


def test_heartbeat_refreshes_the_mtime(tmp_path):
  lock = workdir_lock.Lock(str(tmp_path), heartbeat_s=0.01).acquire()
  path = tmp_path / 'train.lock'
  os.utime(path, (0, 0))
  deadline = time.time() + 5
  while os.path.getmtime(path) == 0 and time.time() < deadline:
    time.sleep(0.01)
  assert os.path.getmtime(path) > time.time() - 60  # the holder's thread touched it
  lock.release()
  assert not path.exists()


def test_hold_is_the_lock_for_a_block(tmp_path):
  with workdir_lock.hold(str(tmp_path)) as lock:
    assert (tmp_path / 'train.lock').exists() and lock is not None
    with pytest.raises(workdir_lock.WorkdirLocked):
      with workdir_lock.hold(str(tmp_path)):
        pass
  assert not (tmp_path / 'train.lock').exists()
