"""launch/local.py: 2 processes x 2 fake devices, as 2 emulated slices (--slices=2: the data axis
spans the processes, as it spans TPU slices over the data-centre network), train like 1 process x 4
devices; a SIGTERM to one of them stops both at one step with one checkpoint, from which a restart
on one slice continues (a checkpoint restores across slice counts)."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCAL = os.path.join(REPO, 'launch', 'local.py')

CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config

def get_config(arg=None):
  # 12 steps: 1.5 epochs of the 64 tiny videos; one checkpoint at the end (and at preemption),
  # evaluated there.
  return tiny_config({data!r}, total_steps=12, checkpoint_every_steps=100, eval_every_steps=100)
"""
STEPS = 12


def command(processes: int, devices: int, config: str, workdir: str, slices: int = 1) -> list[str]:
  return [sys.executable, LOCAL, f'--processes={processes}', f'--devices_per_process={devices}',
          f'--slices={slices}', '--', 'train', f'--config={config}', f'--workdir={workdir}']


def local(processes: int, devices: int, config: str, workdir: str) -> str:
  out = subprocess.run(command(processes, devices, config, workdir), cwd=REPO, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return out.stdout


def preempt_one(config: str, workdir: str, stderr) -> tuple[int, str]:
  """2 x 2 run on 2 emulated slices; once step 2 is printed, SIGTERM to process 1 (slice 1) alone.
  Returns (exit code, stdout)."""
  launcher = subprocess.Popen(command(2, 2, config, workdir, slices=2), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=stderr, text=True)
  lines, deadline = [], time.time() + 600
  for line in launcher.stdout:
    lines.append(line)
    if line.startswith('step      2/') or time.time() > deadline:
      break
  children = open(f'/proc/{launcher.pid}/task/{launcher.pid}/children').read().split()
  assert len(children) == 2, (children, ''.join(lines))
  os.kill(int(children[1]), signal.SIGTERM)   # process 1: not the coordinator, not the printer
  lines += launcher.stdout.readlines()
  return launcher.wait(timeout=600), ''.join(lines)


def results(workdir: str):
  """(train losses by step, final evaluation, final parameters) of a workdir."""
  rows = metrics.read_jsonl(os.path.join(workdir, 'tensorboard'))
  losses = {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}
  evals = [{k: v for k, v in r.items() if k.startswith('eval/')} for r in rows
           if any(k.startswith('eval/') for k in r)]
  return [losses[s] for s in sorted(losses)], evals[-1], ckpt_lib.read_params(workdir)


@pytest.mark.slow
def test_two_processes_match_one_through_a_preemption(tiny_data_dir, tmp_path):
  config = str(tmp_path / 'tiny.py')
  with open(config, 'w') as f:
    f.write(CONFIG.format(tests=os.path.join(REPO, 'tests'), data=tiny_data_dir))
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  out1 = local(1, 4, config, one)
  assert out1.count(f'Trained to step {STEPS}') == 1

  with open(tmp_path / 'stderr.txt', 'w') as stderr:
    code, out2 = preempt_one(config, two, stderr)
  assert code == 0, out2[-2000:] + (tmp_path / 'stderr.txt').read_text()[-3000:]
  # Both processes agreed on one step, mid-run, and wrote their parts of one checkpoint there.
  assert out2.count('Stopped by preemption at step') == 1, out2   # only process 0 prints
  stop = int(out2.split('Stopped by preemption at step ')[1].split(';')[0])
  assert 2 <= stop < STEPS
  ckpt = ckpt_lib.Checkpointer(two, read_only=True)
  assert ckpt.all_steps() == [stop]
  data = os.path.join(ckpt.directory, str(stop), 'data_shapes_video')
  assert sorted(f for f in os.listdir(data) if f.endswith('.json')) == [
      'process_0-of-2.json', 'process_1-of-2.json']
  with open(os.path.join(two, 'config.json')) as f:
    assert json.load(f)['mesh']['slices'] == 2   # trained so far on two slices

  out3 = local(2, 2, config, two)  # the restart, on one slice
  assert f'Resuming from step {stop}' in out3 and out3.count(f'Trained to step {STEPS}') == 1
  assert "mesh {'data': 4" in out3

  losses1, eval1, params1 = results(one)
  losses2, eval2, params2 = results(two)
  assert len(losses1) == STEPS
  # Same global batches (the hosts' slices interleave into the same examples), same updates, on two
  # slices and on one, across the preemption.
  np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
  assert {'eval/top1/shapes_video', 'eval/top1/shapes_image'} <= set(eval1)
  assert eval2 == pytest.approx(eval1, abs=1e-6)
  # The final checkpoints, read on this 1-device process, agree to 1e-3 of each array's norm: Adam
  # divides each gradient by its own running scale, so gradients that are ~0 but for rounding
  # (the attention key biases, which softmax ignores) move by different ~1e-6 steps, and single
  # elements differ by up to ~1e-4 (seen: 1.3e-4 on a tokenizer kernel entry of 0.075).
  for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params1)):
    assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(b) + 1e-4, (a.shape, np.abs(a - b).max())


def test_worst_exit_code_and_usage():
  sys.path.insert(0, os.path.join(REPO, 'launch'))
  import local as local_lib
  assert local_lib.exit_code(-15) == 143 and local_lib.exit_code(3) == 3
  with pytest.raises(SystemExit):   # on CPU a slice is a process
    local_lib.main(['--processes=2', '--slices=4', '--', 'train'])
  env = local_lib.child_env(1, 2, 4, 1234)
  assert env['SPARSE_TUBES_PROCESS_ID'] == '1' and env['SPARSE_TUBES_NUM_PROCESSES'] == '2'
  assert '--xla_force_host_platform_device_count=4' in env['XLA_FLAGS']
  # A failing process (unknown command) fails the launch with its exit code.
  assert local_lib.launch(['no_such_command'], processes=2, devices_per_process=1) != 0
