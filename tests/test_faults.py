"""Fault injection on the tiny config: divergence, two runs on one workdir, damaged checkpoints,
kills, and bad inputs. Each ends in a checked state: exit code or error, message, which
checkpoints exist, resumed losses equal to an uninterrupted run, metrics rows for every logged step.

Every run shares one config (6 steps, a log line per step, checkpoints at 3 and 6) and a persistent
compilation cache, so after the baseline's compile each run (subprocesses too) loads its step.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sparse_tubes import validation
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes import workdir as workdir_lib
from sparse_tubes.commands import predict
from sparse_tubes.commands import train as train_cmd
from sparse_tubes.train import metrics, nonfinite, sharding, workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6  # tiny_config: total_steps=6, log_every_steps=1, checkpoint_every_steps=3


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  """A persistent compilation cache for this module (and its subprocesses), then back as it was."""
  from jax._src import compilation_cache  # reset: the cache is set up once per process otherwise
  path = str(tmp_path_factory.mktemp('jax_cache'))
  keys = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
          'jax_persistent_cache_min_entry_size_bytes')
  before = {k: getattr(jax.config, k) for k in keys}
  for k, v in zip(keys, (path, 0, 0)):
    jax.config.update(k, v)
  compilation_cache.reset_cache()
  yield path
  for k, v in before.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


@pytest.fixture(scope='module')
def baseline(cache_dir, make_config, tmp_path_factory):
  """An uninterrupted run: its workdir (checkpoints 3 and 6) and its losses per step."""
  workdir = str(tmp_path_factory.mktemp('baseline'))
  train_cmd.train(make_config(), workdir)
  return workdir, losses(workdir)


def losses(workdir) -> dict[int, float]:
  """The last logged loss per step (a resumed run logs the steps after its checkpoint again)."""
  out = {}
  for row in metrics.read_jsonl(os.path.join(workdir, 'tensorboard')):
    if 'train/loss' in row:
      out[row['step']] = row['train/loss']
  return out


def assert_same_losses(workdir, baseline):
  got, want = losses(workdir), baseline[1]
  assert sorted(got) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=1e-6)


def steps(workdir):
  return ckpt_lib.Checkpointer(workdir, read_only=True).all_steps()


def copy_run(baseline, tmp_path) -> str:
  workdir = str(tmp_path / 'run')
  shutil.copytree(baseline[0], workdir)
  return workdir


@contextlib.contextmanager
def nan_inputs(at_steps, dataset='shapes_video'):
  """NaN in `dataset`'s input batch at the given steps (counted from this run's first step)."""
  original, calls = sharding.global_batch, [0]

  def global_batch(batch, mesh, rules):
    calls[0] += 1
    if calls[0] in at_steps:
      x = np.full_like(batch[dataset]['inputs'], np.nan)
      batch = {**batch, dataset: {**batch[dataset], 'inputs': x}}
    return original(batch, mesh, rules)

  sharding.global_batch = global_batch
  try:
    yield
  finally:
    sharding.global_batch = original


# ---------------------------------------------------------------------------------- divergence

def test_nan_input_stops_naming_step_dataset_and_good_checkpoint(baseline, make_config, tmp_path):
  workdir = str(tmp_path)
  with nan_inputs({5}), pytest.raises(nonfinite.NonFiniteError) as e:
    train_cmd.train(make_config(), workdir)
  message = str(e.value)
  assert 'step 5' in message and 'shapes_video' in message and 'shapes_image' not in message
  assert 'last good checkpoint is step 3' in message
  assert steps(workdir) == [3]  # Nothing saved after the bad step.
  assert sorted(losses(workdir)) == [1, 2, 3, 4, 5]  # The bad step's metrics are written.
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK))
  # Training again resumes from the good checkpoint and matches the uninterrupted run.
  train_cmd.train(make_config(), workdir)
  assert_same_losses(workdir, baseline)


def test_huge_learning_rate_exits_nonzero_and_keeps_finite_checkpoints(baseline, make_config,
                                                                      tmp_path):
  workdir = str(tmp_path)
  workdir_lib.save_workdir(make_config(), workdir, command='train')
  proc = subprocess.run(
      [sys.executable, '-m', 'sparse_tubes', 'train', f'--workdir={workdir}',
       f'--config={workdir}/config.py', '--config.optimizer.learning_rate=1e8'],
      cwd=REPO, capture_output=True, text=True, timeout=600, env=child_env(baseline))
  assert proc.returncode != 0, proc.stdout[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('Error: Training stopped at step 4: the loss of dataset'), last
  assert 'last good checkpoint is step 3' in last and 'learning_rate' in last
  assert steps(workdir) == [3]
  ckpt = ckpt_lib.Checkpointer(workdir, read_only=True)
  assert ckpt.readable_steps() == [3]  # Finite parameters: keep-N deleted nothing good.
  assert sorted(losses(workdir)) == [1, 2, 3, 4]
  assert not np.isfinite(losses(workdir)[4])


def _opt_counts(workdir, step):
  tree = ocp.StandardCheckpointer().restore(
      os.path.join(ckpt_lib.checkpoint_dir(workdir), str(step), 'train_state'))
  leaves = jax.tree_util.tree_flatten_with_path(tree['opt_state'])[0]
  return {int(v) for p, v in leaves if 'count' in jax.tree_util.keystr(p)}


def test_skip_leaves_state_unchanged_and_stops_after_n_in_a_row(baseline, make_config, tmp_path):
  workdir = str(tmp_path / 'skip')
  with nan_inputs({2}):
    summary = train_cmd.train(make_config(on_nonfinite='skip'), workdir)
  assert summary['step'] == STEPS
  rows = {r['step']: r for r in metrics.read_jsonl(os.path.join(workdir, 'tensorboard'))
          if 'train/skipped' in r}
  assert [rows[s]['train/skipped'] for s in sorted(rows)] == [0, 1, 0, 0, 0, 0]
  assert _opt_counts(workdir, 3) == {2}  # 3 steps, 2 updates: the optimizer state did not move.
  assert ckpt_lib.Checkpointer(workdir, read_only=True).readable_steps() == [3, 6]

  workdir = str(tmp_path / 'stops')
  with nan_inputs({2, 3, 4, 5, 6}), pytest.raises(nonfinite.NonFiniteError) as e:
    train_cmd.train(make_config(on_nonfinite='skip', max_nonfinite_skips=2), workdir)
  assert '2 non-finite steps in a row up to step 3' in str(e.value)
  assert 'last good checkpoint is none' in str(e.value) and steps(workdir) == []


# ------------------------------------------------------------------------------------- kills

CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from sparse_tubes.commands import train as train_cmd
from sparse_tubes.train import metrics
flush = metrics.MetricWriter.flush
def slow_flush(self):  # A step every ~0.5 s, so a signal lands where the test says.
  flush(self)
  time.sleep(0.5)
metrics.MetricWriter.flush = slow_flush
train_cmd.train(tiny_config({data!r}), {workdir!r})
"""


def child_env(baseline):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  env['PYTHONPATH'] = os.pathsep.join([REPO, env.get('PYTHONPATH', '')])
  return env


def start_child(baseline, data_dir, workdir):
  code = CHILD.format(tests=os.path.join(REPO, 'tests'), data=data_dir, workdir=workdir)
  return subprocess.Popen([sys.executable, '-c', code], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=child_env(baseline))


def wait_for_step(proc, n, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    if line.startswith('step') and int(line.split()[1].split('/')[0]) >= n:
      return
  raise AssertionError(f'the child stopped before step {n}')


@pytest.mark.slow
@pytest.mark.parametrize('sig,at', [(signal.SIGKILL, 4), (signal.SIGKILL, 3), (signal.SIGTERM, 4)])
def test_killed_run_resumes_exactly(sig, at, baseline, make_config, tiny_data_dir, tmp_path,
                                    capsys):
  workdir = str(tmp_path)
  proc = start_child(baseline, tiny_data_dir, workdir)
  try:
    wait_for_step(proc, 1)
    if at == 4:  # Meanwhile, a second train on the workdir refuses to start and touches nothing.
      with open(os.path.join(workdir, 'config.json')) as f:
        config_json = f.read()
      with pytest.raises(workdir_lock.WorkdirLocked, match=f'pid {proc.pid}'):
        train_cmd.train(make_config(seed=1), workdir)
      with open(os.path.join(workdir, 'config.json')) as f:
        assert f.read() == config_json
    wait_for_step(proc, at)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  logged = sorted(losses(workdir))
  assert logged[:at] == list(range(1, at + 1))  # Every logged step is on disk.
  if sig == signal.SIGTERM:
    assert proc.returncode == 0, out[-2000:]
    stop = ckpt_lib.Checkpointer(workdir, read_only=True).latest_step()
    assert stop >= at and 'preemption' in out.lower()
    assert logged == list(range(1, stop + 1))  # Pending metrics written before the exit.
  else:
    assert proc.returncode == -signal.SIGKILL
    assert set(steps(workdir)) <= {3, 6}
  capsys.readouterr()
  train_cmd.train(make_config(), workdir)
  if sig == signal.SIGKILL:  # The dead run's lock is taken over.
    assert 'taking over the stale lock' in capsys.readouterr().out
  assert_same_losses(workdir, baseline)


def test_stale_and_live_locks(tmp_path):
  path = os.path.join(tmp_path, workdir_lock.LOCK)
  with open(path, 'w') as f:
    json.dump({'host': 'elsewhere', 'pid': 1}, f)
  with pytest.raises(workdir_lock.WorkdirLocked, match='host elsewhere, pid 1'):
    workdir_lock.Lock(str(tmp_path)).acquire()
  old = time.time() - 2 * workdir_lock.STALE_S
  os.utime(path, (old, old))
  lock = workdir_lock.Lock(str(tmp_path), heartbeat_s=0.05).acquire()
  assert json.load(open(path))['pid'] == os.getpid()
  time.sleep(0.2)
  assert time.time() - os.path.getmtime(path) < 1  # The heartbeat.
  lock.release()
  assert not os.path.exists(path)


# ---------------------------------------------------------------------------- damaged checkpoints

def _damage(workdir, step, kind):
  path = os.path.join(ckpt_lib.checkpoint_dir(workdir), str(step))
  if kind == 'truncated params':
    for root, _, files in os.walk(os.path.join(path, 'params')):
      for name in files:
        if os.path.basename(root) == 'd':
          f = os.path.join(root, name)
          os.truncate(f, os.path.getsize(f) // 2)
  elif kind == 'missing _METADATA':
    os.remove(os.path.join(path, 'params', '_METADATA'))
  elif kind == 'empty iterator json':
    open(os.path.join(path, 'data_shapes_video', 'process_0-of-1.json'), 'w').close()


# A truncated array file makes TensorStore's reader threads print 'Event loop is closed' as they
# wind down; the checkpoint's own error is what the test checks.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('kind', ['truncated params', 'missing _METADATA', 'empty iterator json'])
def test_damaged_latest_checkpoint(kind, baseline, make_config, tmp_path, capsys):
  workdir = copy_run(baseline, tmp_path)
  _damage(workdir, 6, kind)
  config = make_config()
  with pytest.raises(ckpt_lib.CheckpointError) as e:  # evaluate: which step, why, and what to pass.
    ckpt_lib.restore_params(config, workdir)
  message = str(e.value)
  assert 'step 6' in message and 'readable steps [3]' in message and '\n' not in message
  capsys.readouterr()
  train_cmd.train(config, workdir)  # train: one line, falls back to step 3, redoes 4-6 exactly.
  out = capsys.readouterr().out
  assert [l for l in out.splitlines() if 'unreadable' in l][0].startswith('Checkpoint step 6 ')
  assert 'Resuming from step 3' in out
  assert steps(workdir) == [3, 6]
  assert os.path.isdir(os.path.join(workdir, 'damaged_checkpoints', '6'))  # Kept, not deleted.
  assert_same_losses(workdir, baseline)


# ------------------------------------------------------------------------------ smaller things

@pytest.mark.parametrize('key', ['checkpoint_every_steps', 'log_every_steps'])
def test_zero_intervals_fail_validation(key, make_config):
  with pytest.raises(ValueError, match=f'config.{key}=0 must be >= 1'):
    validation.validate(make_config(**{key: 0}))


def test_evaluate_unknown_step_lists_steps(baseline, make_config):
  with pytest.raises(FileNotFoundError, match=r'--step=999: .* its steps are \[3, 6\]'):
    ckpt_lib.restore_params(make_config(), baseline[0], 999)


@pytest.mark.parametrize('clips,match', [
    (np.full((1, 8, 32, 32, 3), np.nan, np.float32), 'NaN or Inf'),
    (np.full((1, 8, 32, 32, 3), 200, np.uint8), 'raw pixels'),
    (np.zeros((1, 2, 6, 6, 3), np.float32), r'do not fit the model .*trained on \(8, 32, 32, 3\)'),
])
def test_predict_rejects_bad_clips(clips, match, baseline, make_config, tmp_path):
  path = str(tmp_path / 'x.npy')
  np.save(path, clips)
  with pytest.raises(ValueError, match=match):
    predict.predict(make_config(), baseline[0], path)


def test_convert_random_file_is_not_a_checkpoint(tmp_path):
  from sparse_tubes.pretrained import weights
  path = tmp_path / 'random.pth'
  path.write_bytes(np.random.default_rng(0).bytes(4000))
  with pytest.raises(ValueError, match='is not a PyTorch checkpoint') as e:
    weights.read_torch_pickle(str(path))
  assert 'weights_only=False' not in str(e.value)


def test_prepare_without_clips_points_at_the_report(tmp_path):
  from sparse_tubes.data import prepare
  os.makedirs(tmp_path / 'k' / 'annotations')
  for split, file in (('train', 'train'), ('validate', 'val'), ('test', 'test')):
    with open(tmp_path / 'k' / 'annotations' / f'{file}.csv', 'w') as f:
      f.write(f'label,youtube_id,time_start,time_end,split\nabseiling,aaaaaaaaaa{len(file)},0,10,'
              f'{split}\n')
  with pytest.raises(ValueError, match=r"no video of split '\w+' could be read .*prepare_report"):
    prepare.run('kinetics400/10fps_32px', manual_dir=str(tmp_path / 'k'),
                data_dir=str(tmp_path / 'tfds'), workers=1)
