"""Training end to end on the tiny built-in datasets: logs, checkpoints, exact resumption, and the
same losses on 1 device and on 8 then 4 devices (a resume on another mesh)."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes.commands import train as train_cmd
from sparse_tubes.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def losses(workdir):
  """Last logged loss per step (a resumed run logs the steps after its checkpoint again)."""
  by_step = {}
  for row in metrics.read_jsonl(os.path.join(workdir, 'tensorboard')):
    if 'train/loss' in row:
      by_step[row['step']] = row['train/loss']
  return [by_step[s] for s in sorted(by_step)], sorted(by_step)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, make_config):
  workdir = str(tmp_path_factory.mktemp('full'))
  summary = train_cmd.train(make_config(eval_every_steps=3), workdir)
  return workdir, summary


def test_train_writes_logs_checkpoints_config(uninterrupted):
  workdir, summary = uninterrupted
  assert summary['step'] == 6
  values, steps = losses(workdir)
  assert steps == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(values))
  rows = metrics.read_jsonl(os.path.join(workdir, 'tensorboard'))
  keys = set().union(*rows)
  for key in ('train/loss/shapes_video', 'train/loss/shapes_image', 'train/accuracy/shapes_video',
              'train/learning_rate', 'train/grad_norm', 'perf/steps_per_sec'):
    assert key in keys, key
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))
  evals = [r for r in rows if 'eval/top1/shapes_video' in r]
  assert [r['step'] for r in evals] == [3, 6]  # config.eval_every_steps=3, during training
  assert all(0 <= r['eval/top1/shapes_image'] <= r['eval/top5/shapes_image'] <= 1 for r in evals)
  assert ckpt_lib.Checkpointer(workdir, read_only=True).all_steps() == [3, 6]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['total_steps'] == 6
  with open(os.path.join(workdir, 'parameters.txt')) as f:
    assert 'encoder/blocks' in f.read().replace('.', '/')


def test_resume_sees_the_same_batches(uninterrupted, make_config, tmp_path):
  """Stop after 4 steps (last checkpoint at 3), restart: steps 4-6 repeat the uninterrupted run's
  losses exactly, which needs the data iterator's position restored with the model."""
  full_workdir, _ = uninterrupted
  workdir = str(tmp_path)
  first = train_cmd.train(make_config(), workdir, stop_after_steps=4)
  assert first['step'] == 4
  assert ckpt_lib.Checkpointer(workdir, read_only=True).latest_step() == 3
  train_cmd.train(make_config(), workdir)
  resumed, steps = losses(workdir)
  expected, _ = losses(full_workdir)
  assert steps == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose(resumed, expected, rtol=1e-6)


def test_finished_run_does_not_train_again(uninterrupted, make_config):
  workdir, _ = uninterrupted
  again = train_cmd.train(make_config(), workdir)
  assert again['step'] == 6


CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from sparse_tubes.commands import train as train_cmd
import jax
assert jax.device_count() == {devices}, jax.devices()
train_cmd.train(tiny_config({data!r}, mesh__data={data_axis}, mesh__fsdp={fsdp}), {workdir!r},
           stop_after_steps={stop})
"""


def train_on(devices: int, data_axis: int, fsdp: int, workdir: str, data_dir: str, stop=None):
  """train_cmd.train in a child process with `devices` fake CPU devices; returns its stderr."""
  env = dict(os.environ, XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={devices}')
  code = CHILD.format(tests=os.path.join(REPO, 'tests'), data=data_dir, workdir=workdir,
                      devices=devices, data_axis=data_axis, fsdp=fsdp, stop=stop)
  proc = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


@pytest.mark.slow
def test_resume_on_another_mesh_and_process_count(uninterrupted, tiny_data_dir, tmp_path):
  """8 fake CPU devices (data=4 x fsdp=2) train 4 steps (checkpoint at 3); the run resumes on 4
  devices (data=1 x fsdp=4) from a checkpoint whose data states name another process count: the
  parameters, optimizer state and step are resharded, the iterators continue at 3 x batch_size,
  and all six losses are the 1-device run's."""
  workdir = str(tmp_path)
  train_on(8, 4, 2, workdir, tiny_data_dir, stop=4)
  # What a 2-process run writes instead of process_0-of-1.json: states that cannot apply here.
  for name in ('shapes_video', 'shapes_image'):
    data = os.path.join(workdir, 'checkpoints', '3', f'data_{name}')
    os.rename(os.path.join(data, 'process_0-of-1.json'), os.path.join(data, 'process_0-of-2.json'))
    os.symlink('process_0-of-2.json', os.path.join(data, 'process_1-of-2.json'))
  log = train_on(4, 1, 4, workdir, tiny_data_dir)
  assert ('data iterator states of shapes_image, shapes_video were saved by 2 processes, this run '
          'has 1') in log, log[-3000:]
  resumed, steps = losses(workdir)
  one, _ = losses(uninterrupted[0])
  assert steps == [1, 2, 3, 4, 5, 6]
  # Same parameters at init, same batches; only the order of the reductions differs.
  np.testing.assert_allclose(resumed, one, rtol=1e-4)


def test_bfloat16_compute_with_float32_params_and_profile(make_config, tmp_path):
  """bf16 activations with mixup+cutmix train (finite losses), parameters stay float32 in the
  checkpoint, and the profiler window writes a trace TensorBoard can open."""
  import jax
  from sparse_tubes.train import sharding, state as state_lib
  config = make_config(total_steps=4, model__dtype='bfloat16', checkpoint_every_steps=4,
                       mixup__mixup_alpha=0.3, mixup__cutmix_alpha=1.0,
                       profile__enabled=True, profile__start_step=1, profile__num_steps=2)
  workdir = str(tmp_path)
  summary = train_cmd.train(config, workdir)
  assert np.isfinite(summary['train/loss'])
  mesh = sharding.make_mesh(config.mesh)
  spec = state_lib.model_spec(config.model, {'shapes_video': 8, 'shapes_image': 3}, mesh,
                              config.sharding_rules)
  params = ckpt_lib.Checkpointer(workdir, read_only=True).restore_params(
      4, state_lib.abstract_params(spec))
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype('float32')}
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'plugins', 'profile', '*', '*.xplane.pb'))
