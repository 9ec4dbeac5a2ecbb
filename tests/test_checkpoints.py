"""The checkpoint store: a model-only checkpoint written and read back, its heads and kinds from
the metadata, the checks before a save; a killed job leaves loadable checkpoints and SIGTERM saves
and stops cleanly."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
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


PARAMS = {'encoder': {'w': np.arange(6, dtype=np.float32).reshape(2, 3)},
          'heads': {'k400': {'kernel': np.ones((3, 4), np.float32), 'bias': np.zeros(4, np.float32)},
                    'img': {'kernel': np.ones((3, 2), np.float32), 'bias': np.zeros(2, np.float32)}}}


def test_model_only_checkpoint_round_trip(tmp_path):
  workdir = str(tmp_path / 'run')
  assert ckpt_lib.finalized_steps(workdir) == [] and not os.path.exists(workdir)
  assert ckpt_lib.write_params(workdir, PARAMS, step=7) == ckpt_lib.checkpoint_dir(workdir)
  assert ckpt_lib.finalized_steps(workdir) == [7]
  assert ckpt_lib.checkpoint_heads(workdir, 7) == {'k400': 4, 'img': 2}
  assert not ckpt_lib.has_train_state(workdir, 7) and not ckpt_lib.has_ema(workdir, 7)
  for path in (workdir, ckpt_lib.checkpoint_dir(workdir)):  # a workdir or its checkpoints/
    back = ckpt_lib.read_params(path)
    np.testing.assert_array_equal(back['encoder']['w'], PARAMS['encoder']['w'])
    assert back['heads']['img']['kernel'].shape == (3, 2)
  with pytest.raises(FileExistsError, match='already holds checkpoints'):
    ckpt_lib.write_params(workdir, PARAMS)
  with pytest.raises(FileNotFoundError, match='no checkpoint directory there'):
    ckpt_lib.read_params(str(tmp_path / 'nothing'))


def test_all_finite_and_state_bytes():
  assert ckpt_lib.all_finite(PARAMS)
  bad = {**PARAMS, 'encoder': {'w': np.array([1.0, np.nan], np.float32)}}
  assert not ckpt_lib.all_finite(bad)
  assert ckpt_lib.all_finite({'step': np.int32(3)})  # integers are not checked
  assert ckpt_lib.state_bytes(PARAMS) == 4 * (6 + 12 + 4 + 6 + 2)


def test_restore_params_refuses_an_unknown_kind_or_an_empty_workdir(tmp_path):
  with pytest.raises(ValueError, match='--params=best: use one of auto, ema, raw'):
    ckpt_lib.restore_params(None, str(tmp_path), params='best')
  with pytest.raises(FileNotFoundError, match='No checkpoint in .* Train first'):
    ckpt_lib.restore_params(None, str(tmp_path))
