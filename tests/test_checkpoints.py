"""A killed job leaves loadable checkpoints; SIGTERM saves and stops cleanly."""
import os
import signal
import subprocess
import sys
import time

import pytest

from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes.commands import train as train_cmd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from sparse_tubes.commands import train as train_cmd
train_cmd.train(tiny_config({data!r}, total_steps=100000, checkpoint_every_steps=1, log_every_steps=1),
           {workdir!r})
"""


def start_child(data_dir, workdir):
  code = CHILD.format(tests=os.path.join(REPO, 'tests'), data=data_dir, workdir=workdir)
  return subprocess.Popen([sys.executable, '-c', code], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def wait_for_steps(proc, n, timeout=300):
  """Reads the child's progress lines until it has logged `n` steps."""
  deadline, seen = time.time() + timeout, 0
  while time.time() < deadline and seen < n:
    line = proc.stdout.readline()
    if not line:
      break
    if line.startswith('step'):
      seen += 1
  assert seen >= n, 'the child stopped before training'


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes(sig, tiny_data_dir, make_config, tmp_path):
  workdir = str(tmp_path)
  proc = start_child(tiny_data_dir, workdir)
  try:
    wait_for_steps(proc, 5)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  latest = ckpt_lib.Checkpointer(workdir, read_only=True).latest_step()
  assert latest is not None and latest >= 3
  if sig == signal.SIGTERM:
    assert proc.returncode == 0, out[-2000:]
    assert 'preemption' in out.lower()
  # Whatever the kill interrupted, the latest complete checkpoint restores and training goes on.
  summary = train_cmd.train(make_config(total_steps=latest + 2), workdir)
  assert summary['step'] == latest + 2
