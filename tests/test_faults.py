"""Fault injection on the tiny config: divergence, two runs on one workdir, damaged checkpoints,
kills, and bad inputs. Each ends in a checked state: exit code or error, message, which
checkpoints exist, resumed losses equal to an uninterrupted run, metrics rows for every logged step.

Every run shares one config (6 steps, a log line per step, checkpoints at 3 and 6) and a persistent
compilation cache, so after the baseline's compile each run (subprocesses too) loads its step.
"""
import contextlib
import errno
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
  from sparse_tubes import compat  # reset: the cache is set up once per process otherwise
  path = str(tmp_path_factory.mktemp('jax_cache'))
  keys = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
          'jax_persistent_cache_min_entry_size_bytes')
  before = {k: getattr(jax.config, k) for k in keys}
  for k, v in zip(keys, (path, 0, 0)):
    jax.config.update(k, v)
  compat.reset_compilation_cache()
  yield path
  for k, v in before.items():
    jax.config.update(k, v)
  compat.reset_compilation_cache()


@pytest.fixture(scope='module')
def baseline(cache_dir, make_config, tmp_path_factory):
  """An uninterrupted run: its workdir (checkpoints 3 and 6) and its losses per step."""
  workdir = str(tmp_path_factory.mktemp('baseline'))
  train_cmd.train(make_config(), workdir)
  return workdir, losses(workdir)


def losses(workdir) -> dict[int, float]:
  """The logged loss per step (a resumed run replaces the rows after its checkpoint)."""
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


# ------------------------------------------------------- issue 19: the config contract on resume

def test_breaking_config_change_is_refused_and_touches_nothing(baseline, make_config, tmp_path):
  workdir = copy_run(baseline, tmp_path)
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = f.read()
  with pytest.raises(workdir_lib.ConfigMismatch) as e:
    train_cmd.train(make_config(model__hidden_size=32, model__mlp_dim=64), workdir)
  message = str(e.value)
  assert 'config.model.hidden_size: 24 -> 32' in message and 'config.model.mlp_dim: 48 -> 64' in message
  assert 'another --workdir' in message and '--config.init_from.kind=checkpoint' in message
  assert '\n' not in message
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == saved  # Never overwritten by a refused run.
  assert steps(workdir) == [3, 6]
  assert not os.path.exists(os.path.join(workdir, 'damaged_checkpoints'))
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK))


def test_config_change_classes():
  from sparse_tubes import config as config_lib
  from conftest import TINY_CONFIG
  old = config_lib.load(TINY_CONFIG)
  new = config_lib.load(TINY_CONFIG)
  new.total_steps = 5000
  new.log_every_steps = 7
  new.optimizer.warmup_steps = 9
  new.optimizer.learning_rate = 1e-4
  new.datasets.shapes_video.batch_size = 64
  new.model.dropout = 0.1
  breaking, safe = workdir_lib.config_changes(json.loads(workdir_lib.config_to_json(old)), new)
  assert breaking == []
  assert {k for k, _, _ in safe} == {'total_steps', 'log_every_steps', 'optimizer.warmup_steps',
                                     'optimizer.learning_rate', 'datasets.shapes_video.batch_size',
                                     'model.dropout'}
  for change in ({'model': {'num_layers': 3}}, {'optimizer': {'name': 'sgd'}},
                 {'optimizer': {'grad_clip_norm': 0.0}}, {'freeze': {'layers_before': 1}},
                 {'datasets': {'shapes_video': {'tfds_name': 'moving_shapes/video_other'}}}):
    cfg = config_lib.load(TINY_CONFIG)
    cfg.update_from_flattened_dict(
        {f'{a}.{b}' if not isinstance(v, dict) else f'{a}.{b}.{next(iter(v))}':
         v if not isinstance(v, dict) else next(iter(v.values()))
         for a, d in change.items() for b, v in d.items()})
    breaking, _ = workdir_lib.config_changes(json.loads(workdir_lib.config_to_json(old)), cfg)
    assert len(breaking) == 1, (change, breaking)
  old_json = json.loads(workdir_lib.config_to_json(old))
  del old_json['datasets']['shapes_image']  # A head added.
  breaking, _ = workdir_lib.config_changes(old_json, config_lib.load(TINY_CONFIG))
  assert breaking == [('datasets.shapes_image', None, 'present')]


def test_safe_config_change_resumes_and_is_recorded(baseline, make_config, tmp_path, capsys):
  workdir = copy_run(baseline, tmp_path)
  capsys.readouterr()
  # total_steps=9, as in the storage tests below: one compile (the schedule's length) for all.
  summary = train_cmd.train(make_config(total_steps=9, log_every_steps=3), workdir)
  assert summary['step'] == 9
  out = capsys.readouterr().out
  assert 'config changes' in out and 'config.total_steps: 6 -> 9' in out
  assert 'config.log_every_steps: 1 -> 3' in out and 'Resuming from step 6' in out
  assert steps(workdir) == [3, 6, 9]
  assert not os.path.exists(os.path.join(workdir, 'damaged_checkpoints'))
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['total_steps'] == 9  # The config the checkpoints now go with.
  rows = [json.loads(l) for l in open(os.path.join(workdir, workdir_lib.CHANGES))]
  assert rows[-1]['resumed_step'] == 6
  assert rows[-1]['changes']['total_steps'] == {'old': 6, 'new': 9}


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_checkpoint_of_another_config_is_not_moved_aside(baseline, make_config, tmp_path):
  """Without config.json to compare with, the restore itself tells a config mismatch (the files
  read as saved) from damage: nothing goes to damaged_checkpoints."""
  workdir = copy_run(baseline, tmp_path)
  os.remove(os.path.join(workdir, 'config.json'))
  with pytest.raises(ckpt_lib.CheckpointError, match=r'step 6 .* reads as it was saved, but not '
                     r'into the model .*init_from'):
    train_cmd.train(make_config(model__hidden_size=32, model__mlp_dim=64), workdir)
  assert steps(workdir) == [3, 6]
  assert not os.path.exists(os.path.join(workdir, 'damaged_checkpoints'))
  assert not os.path.exists(os.path.join(workdir, 'config.json'))


# ----------------------------------------------------------------------- issue 19: Ctrl-C

@contextlib.contextmanager
def at_step(n, action):
  """Runs `action()` once the loop has logged step `n` (from inside the loop, like a signal)."""
  original, calls = metrics.MetricWriter.flush, [0]

  def flush(self):
    original(self)
    if os.path.basename(self.logdir) == 'tensorboard':
      calls[0] += 1
      if calls[0] == n:
        action()

  metrics.MetricWriter.flush = flush
  try:
    yield
  finally:
    metrics.MetricWriter.flush = original


def per_step_rows(workdir) -> dict[int, int]:
  count = {}
  for row in metrics.read_jsonl(os.path.join(workdir, 'tensorboard')):
    if 'train/loss' in row:
      count[row['step']] = count.get(row['step'], 0) + 1
  return count


def test_ctrl_c_saves_exits_130_and_resumes_with_one_row_per_step(baseline, make_config, tmp_path,
                                                                  capfd):
  import types
  workdir = str(tmp_path / 'run')
  workdir_lib.save_workdir(make_config(), workdir, command='train')
  flags = types.SimpleNamespace(workdir=workdir, config=make_config(), coordinator_address=None,
                                num_processes=None, process_id=None)
  with at_step(4, lambda: os.kill(os.getpid(), signal.SIGINT)), \
       pytest.raises(SystemExit) as e:
    train_cmd.main(flags, [])
  assert e.value.code == 130
  err_out = capfd.readouterr()
  assert 'Ctrl-C: saving a checkpoint' in err_out.err
  assert err_out.out.strip().splitlines()[-1].startswith('Interrupted (Ctrl-C) at step 4:')
  assert 'Traceback' not in err_out.out + err_out.err
  assert steps(workdir) == [3, 4]
  assert not [n for n in os.listdir(ckpt_lib.checkpoint_dir(workdir)) if ckpt_lib.TMP_MARK in n]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Handler given back.
  with open(os.path.join(workdir, 'tensorboard', 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 5, "train/loss": 1.0}\n{"step": 6, "trai')  # A later, torn row.
  train_cmd.train(make_config(), workdir)
  assert per_step_rows(workdir) == {s: 1 for s in range(1, STEPS + 1)}
  assert_same_losses(workdir, baseline)


@pytest.mark.slow
def test_second_ctrl_c_aborts_at_once_keeping_the_last_checkpoint(baseline, tiny_data_dir,
                                                                  tmp_path):
  workdir = str(tmp_path)
  proc = start_child(baseline, tiny_data_dir, workdir)
  try:
    wait_for_step(proc, 4)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 130, out[-2000:]
  assert 'Ctrl-C again: stopping now' in out and 'Traceback' not in out
  assert 3 in steps(workdir)
  assert ckpt_lib.Checkpointer(workdir, read_only=True).verify(max(steps(workdir)), deep=True) is None
  # The save in progress was removed; a writer thread may have recreated its directory before
  # the exit, which the next `train` (its Checkpointer) removes before anything else.
  ckpt_lib.Checkpointer(workdir).close()
  assert not [n for n in os.listdir(ckpt_lib.checkpoint_dir(workdir)) if ckpt_lib.TMP_MARK in n]


# ----------------------------------------------------------------- issue 19: storage failures

@contextlib.contextmanager
def failing_writes(directory, error, *, only='', from_step=1):
  """From this run's step `from_step` on, Python writes under `directory` (paths containing
  `only`) fail with `error`: a read-only mount (EROFS: files and directories) or a full disk
  (ENOSPC: files). Orbax creates its directories and writes its metadata through these calls
  (TensorStore writes the array bytes; without the metadata the step never commits)."""
  import builtins
  import errno as errno_lib
  import io
  real_open, real_mkdir, active = builtins.open, os.mkdir, [False]
  code = getattr(errno_lib, error)

  def hit(path):
    if not active[0] or not isinstance(path, (str, os.PathLike)):
      return False
    path = os.path.abspath(os.fspath(path))
    return path.startswith(directory) and only in path

  def bad_open(file, mode='r', *a, **k):
    if hit(file) and any(c in mode for c in 'wax+'):
      raise OSError(code, os.strerror(code), os.fspath(file))
    return real_open(file, mode, *a, **k)

  def bad_mkdir(path, *a, **k):
    if error == 'EROFS' and hit(path):
      raise OSError(code, os.strerror(code), os.fspath(path))
    return real_mkdir(path, *a, **k)

  builtins.open = io.open = bad_open
  os.mkdir = bad_mkdir
  try:
    with at_step(from_step, lambda: active.__setitem__(0, True)):
      yield
  finally:
    builtins.open = io.open = real_open
    os.mkdir = real_mkdir


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('error,only', [('EROFS', ''), ('ENOSPC', ckpt_lib.TMP_MARK)])
def test_failed_save_stops_within_that_save(error, only, baseline, make_config, tmp_path):
  workdir = copy_run(baseline, tmp_path)
  directory = ckpt_lib.checkpoint_dir(workdir)
  start = time.time()
  with failing_writes(directory, error, only=only), pytest.raises(ckpt_lib.StorageError) as e:
    train_cmd.train(make_config(total_steps=9), workdir)  # Resumes at 6; the save at 9 fails.
  message = str(e.value)
  assert time.time() - start < 60  # Not Orbax's 300 s wait for a directory never created.
  assert f'checkpoint step 9 in {directory}: {os.strerror(getattr(errno, error))}' in message
  assert '\n' not in message
  assert 'steps [3, 6]' in message and 'resumes from step 6' in message
  assert steps(workdir) == [3, 6]
  assert not [n for n in os.listdir(directory) if ckpt_lib.TMP_MARK in n]
  assert sorted(losses(workdir)) == list(range(1, 10))  # Steps 7-9 are logged all the same.


def test_no_room_for_a_checkpoint_stops_before_training(make_config, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  usage = type(shutil.disk_usage(workdir))  # (total, used, free), as shutil returns it
  monkeypatch.setattr(ckpt_lib.shutil, 'disk_usage',
                      lambda path: usage(10 * 2**20, 10 * 2**20 - 4096, 4096))
  with pytest.raises(ckpt_lib.StorageError, match=r'Cannot write checkpoints in .*: 0\.0 MiB '
                     r'free, a checkpoint needs about [\d.]+ MiB \(ENOSPC\)\. No checkpoint'):
    train_cmd.train(make_config(), workdir)
  assert not os.path.exists(os.path.join(workdir, 'tensorboard'))  # Not one step was run.
  assert not os.path.exists(os.path.join(workdir, 'config.json'))  # Nor a config recorded.


# ------------------------------------------------------------ issue 19: results and evaluators

def test_truncated_result_is_evaluated_again_and_results_are_atomic(baseline, make_config,
                                                                    tmp_path):
  from sparse_tubes.commands import evaluate
  workdir = copy_run(baseline, tmp_path)
  config = make_config(eval_datasets=('shapes_video',))
  split = config.datasets.shapes_video.eval_split
  os.makedirs(evaluate.eval_dir(workdir))
  with open(evaluate.result_path(workdir, 'shapes_video', split, 3), 'w') as f:
    json.dump({'step': 3}, f)  # Complete: step 3 counts as evaluated.
  with open(evaluate.result_path(workdir, 'shapes_video', split, 6), 'w') as f:
    f.write('{"step": 6, "top1": 0.')  # Cut short by a kill.
  done = evaluate.evaluate_checkpoints(config, workdir, 'all')
  assert [s['step'] for s in done] == [6]
  with open(evaluate.result_path(workdir, 'shapes_video', split, 6)) as f:
    assert json.load(f)['step'] == 6
  assert not [n for n in os.listdir(evaluate.eval_dir(workdir)) if n.endswith('.tmp')]
  assert not [n for n in os.listdir(workdir) if n.endswith('.lock')]  # The evaluate lock let go.


def test_second_evaluator_on_a_dataset_is_refused(baseline, make_config, tmp_path):
  from sparse_tubes.commands import evaluate
  workdir = copy_run(baseline, tmp_path)
  holder = workdir_lock.Lock(workdir, name=workdir_lock.eval_lock('shapes_video'),
                             command='evaluate').acquire()
  try:
    with pytest.raises(workdir_lock.WorkdirLocked,
                       match=rf'in use by another `evaluate \(dataset shapes_video\)` .*pid '
                             rf'{os.getpid()}'):
      evaluate.evaluate_checkpoints(make_config(), workdir, 'watch', watch_timeout=1)
  finally:
    holder.release()
  assert not os.path.exists(os.path.join(workdir, 'tensorboard', 'eval'))
  # The other dataset's lock, taken first (name order), was let go.
  assert os.listdir(workdir).count(workdir_lock.eval_lock('shapes_image')) == 0


def test_evaluate_on_a_mistyped_workdir_creates_nothing(make_config, tmp_path):
  from sparse_tubes.commands import evaluate
  typo = str(tmp_path / 'typo')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    evaluate.evaluate_checkpoints(make_config(), typo, 'latest')
  assert not os.path.exists(typo)


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_evaluate_damaged_latest_ends_with_its_one_line_error(baseline, tmp_path):
  """The command line: the one-line error last, no traceback of Orbax's event loops."""
  workdir = copy_run(baseline, tmp_path)
  _damage(workdir, 6, 'missing _METADATA')
  proc = subprocess.run(
      [sys.executable, '-m', 'sparse_tubes', 'evaluate', f'--workdir={workdir}'], cwd=REPO,
      capture_output=True, text=True, timeout=300, env=child_env(baseline))
  assert proc.returncode == 1
  output = proc.stdout + proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('Error: Checkpoint step 6 (the latest)')
  assert 'Traceback' not in output and 'Event loop is closed' not in output
  assert 'Metadata file does not exist' not in output
  assert len(output.strip().splitlines()) <= 3, output


# ---------------------------------------------------------------- issue 19: errors at the door

@pytest.mark.parametrize('content,match', [
    (None, 'does not exist'), (b'', r'is empty \(0 bytes\)'),
    (b'not a video at all' * 50, 'is not a video this can read')])
def test_predict_checks_its_input_before_the_checkpoint(content, match, make_config, tmp_path):
  path = str(tmp_path / 'clip.mp4')
  if content is not None:
    with open(path, 'wb') as f:
      f.write(content)
  # The workdir has no checkpoint: the input's error comes first, so it was checked first.
  with pytest.raises((FileNotFoundError, ValueError), match=match):
    predict.predict(make_config(), str(tmp_path / 'empty_workdir'), path)


def test_predict_warns_about_a_short_small_video(baseline, make_config, tmp_path, capsys):
  from sparse_tubes.data import video_io
  path = str(tmp_path / 'tiny.mp4')
  video_io.write_video(path, np.zeros((2, 16, 16, 3), np.uint8), fps=25)
  result = predict.predict(make_config(), baseline[0], path)
  err = capsys.readouterr().err
  assert 'Warning' in err and '2 frames' in err and '16x16 pixels, smaller than the 32x32 crop' in err
  assert result['kind'] == 'video' and result['logits'].shape[0] == 1


@pytest.mark.parametrize('body,line,error', [
    ('def get_config(arg=None):\n  c = dict(\n  return c\n', 2, 'SyntaxError'),
    ('import ml_collections\n\ndef get_config(arg=None):\n  c = ml_collections.ConfigDict()\n'
     '  c.model = undefined_name\n  return c\n', 5, "NameError: name 'undefined_name'"),
])
def test_config_file_that_does_not_load_is_one_line(body, line, error, tmp_path):
  from sparse_tubes import main
  path = str(tmp_path / 'bad.py')
  with open(path, 'w') as f:
    f.write(body)
  with pytest.raises(SystemExit) as e:
    main.check_overrides(['sparse_tubes', 'info', f'--config={path}'])
  message = str(e.value.code)
  assert message.startswith(f'Error: Config file {path}, line {line}: {error}'), message
  assert '\n' not in message


def test_workdir_config_py_parses_with_odd_paths(make_config, tmp_path):
  from sparse_tubes import config as config_lib
  workdir = str(tmp_path / 'a\\b"""c')
  workdir_lib.save_workdir(make_config(), workdir, command='train')
  loaded = config_lib.load(os.path.join(workdir, 'config.py'))
  assert loaded.total_steps == STEPS


def test_atomic_write_keeps_the_old_file_on_an_error(tmp_path):
  from sparse_tubes import atomic
  path = str(tmp_path / 'r.json')
  atomic.write_text(path, '{"old": 1}')
  with pytest.raises(OSError), atomic.open_atomic(path) as f:
    f.write('{"new": ')
    raise OSError(28, 'No space left on device')
  assert open(path).read() == '{"old": 1}' and os.listdir(tmp_path) == ['r.json']
