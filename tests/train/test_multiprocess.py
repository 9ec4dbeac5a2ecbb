"""Two JAX processes on one machine (as two hosts of a pod): per-host data slices, a global batch
from process-local data, one Orbax checkpoint written together, and an evaluation over all views."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from sparse_tubes.commands import evaluate
from sparse_tubes import checkpoints as ckpt_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = """
import json, sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize('localhost:{port}', num_processes=2, process_id={pid})
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from sparse_tubes.commands import evaluate
from sparse_tubes.commands import train as train_cmd
from sparse_tubes.train import workdir_lock
config = tiny_config({data!r})
try:  # A workdir another `train` holds: process 0 finds the lock, both processes stop.
  train_cmd.train(config, {locked!r})
  locked = ''
except workdir_lock.WorkdirLocked as e:
  locked = str(e)
summary = train_cmd.train(config, {workdir!r})
result = evaluate.evaluate(config, {workdir!r}, save_predictions={workdir!r} + '/pred2.npz')
every = evaluate.evaluate_checkpoints(config, {workdir!r}, 'all', force=True)
print('RESULT ' + json.dumps(dict(process_count=jax.process_count(), loss=summary['train/loss'],
                                  video=result['datasets']['shapes_video'], locked=locked,
                                  all=[(s['step'], s['datasets']['shapes_video']['top1'])
                                       for s in every])), flush=True)
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_evaluate(tiny_data_dir, make_config, tmp_path):
  port, workdir, locked = free_port(), str(tmp_path / 'run'), tmp_path / 'locked'
  locked.mkdir()   # held by a live `train` elsewhere: this process, heartbeat now
  (locked / 'train.lock').write_text(json.dumps({'host': socket.gethostname(), 'pid': os.getpid()}))
  procs = [subprocess.Popen(
      [sys.executable, '-c', CHILD.format(port=port, pid=pid, tests=os.path.join(REPO, 'tests'),
                                          data=tiny_data_dir, workdir=workdir, locked=str(locked))],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  results = [json.loads(next(l for l in out.splitlines() if l.startswith('RESULT '))[7:])
             for out in outs]
  assert all(r['process_count'] == 2 for r in results)
  # The lock: process 0 read it, process 1 learnt it by broadcast; neither wrote anything there.
  assert f'pid {os.getpid()}' in results[0]['locked'], results[0]['locked']
  assert 'process 0 found its lock' in results[1]['locked'], results[1]['locked']
  assert sorted(os.listdir(locked)) == ['train.lock']
  # --checkpoint=all on two processes: both steps, the same scores on both, the last = latest.
  assert [s for s, _ in results[0]['all']] == [3, 6] and results[0]['all'] == results[1]['all']
  assert results[0]['all'][-1][1] == pytest.approx(results[0]['video']['top1'])
  # Process 0 alone prints progress lines (train_cmd.train called directly, not through the CLI).
  progress = [[l for l in out.splitlines() if l.startswith('step ')] for out in outs]
  assert len(progress[0]) == 6 and progress[1] == [], outs[1][-2000:]
  # Both hosts computed the same global step and the same evaluation over every view.
  assert results[0]['loss'] == results[1]['loss']
  assert results[0]['video'] == results[1]['video']
  assert results[0]['video']['num_views'] == 16 * 2 * 3  # 16 test videos x 2 temporal x 3 spatial
  assert ckpt_lib.Checkpointer(workdir, read_only=True).all_steps() == [3, 6]
  # One process evaluating the same checkpoint: the same videos, views and scores.
  one = evaluate.evaluate(make_config(), workdir, save_predictions=str(tmp_path / 'pred1.npz'))
  video = one['datasets']['shapes_video']
  assert video['num_videos'] == results[0]['video']['num_videos'] == 16
  for key in ('top1', 'top5', 'view_top1', 'num_views'):
    assert results[0]['video'][key] == pytest.approx(video[key])
  p1, p2 = np.load(tmp_path / 'pred1.npz'), np.load(os.path.join(workdir, 'pred2.npz'))
  for name in ('shapes_video', 'shapes_image'):
    np.testing.assert_array_equal(p1[f'{name}/index'], p2[f'{name}/index'])
    np.testing.assert_allclose(p1[f'{name}/scores'], p2[f'{name}/scores'], rtol=1e-4, atol=1e-5)
