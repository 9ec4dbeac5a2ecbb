"""launch/local.py: 2 processes x 2 fake devices train like 1 process x 4 devices."""
import os
import subprocess
import sys

import numpy as np
import pytest

from sparse_tubes.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCAL = os.path.join(REPO, 'launch', 'local.py')

CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config

def get_config(arg=None):
  return tiny_config({data!r}, total_steps=3, checkpoint_every_steps=3)
"""


def local(processes: int, devices: int, config: str, workdir: str):
  out = subprocess.run(
      [sys.executable, LOCAL, f'--processes={processes}', f'--devices_per_process={devices}', '--',
       'train', f'--config={config}', f'--workdir={workdir}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  rows = [r for r in metrics.read_jsonl(os.path.join(workdir, 'tensorboard')) if 'train/loss' in r]
  return out.stdout, [r['train/loss'] for r in sorted(rows, key=lambda r: r['step'])]


@pytest.mark.slow
def test_two_processes_match_one(tiny_data_dir, tmp_path):
  config = tmp_path / 'tiny.py'
  config.write_text(CONFIG.format(tests=os.path.join(REPO, 'tests'), data=tiny_data_dir))
  out1, losses1 = local(1, 4, str(config), str(tmp_path / 'one'))
  out2, losses2 = local(2, 2, str(config), str(tmp_path / 'two'))
  assert len(losses1) == 3
  # Same global batches (the hosts' slices interleave into the same examples), same updates.
  np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
  for out in (out1, out2):  # Only process 0 prints.
    assert out.count('Trained to step 3') == 1, out
  assert "mesh {'data': 4" in out2


def test_worst_exit_code_and_usage():
  sys.path.insert(0, os.path.join(REPO, 'launch'))
  import local as local_lib
  assert local_lib.exit_code(-15) == 143 and local_lib.exit_code(3) == 3
  env = local_lib.child_env(1, 2, 4, 1234)
  assert env['SPARSE_TUBES_PROCESS_ID'] == '1' and env['SPARSE_TUBES_NUM_PROCESSES'] == '2'
  assert '--xla_force_host_platform_device_count=4' in env['XLA_FLAGS']
  # A failing process (unknown command) fails the launch with its exit code.
  assert local_lib.launch(['no_such_command'], processes=2, devices_per_process=1) != 0
