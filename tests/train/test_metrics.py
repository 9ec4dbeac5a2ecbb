"""Metric writing: metrics.jsonl beside the TensorBoard events, a resumed run's rows replaced, a line
cut short skipped; progress lines and rates."""
import os

import ml_collections

from sparse_tubes.train import metrics


def test_jsonl_rows_and_event_files(tmp_path):
  w = metrics.MetricWriter(str(tmp_path), enabled=True)
  w.write_scalars(1, {'train/loss': 2.5, 'train/accuracy/k400': 0.25})
  w.write_scalars(2, {})  # nothing to write: no row
  w.write_texts(2, {'note': 'hello'})
  w.write_hparams({'lr': 1e-3})
  w.close()
  assert metrics.read_jsonl(str(tmp_path)) == [
      {'step': 1, 'train/loss': 2.5, 'train/accuracy/k400': 0.25}]
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(tmp_path))


def test_a_resumed_run_replaces_the_steps_it_does_again(tmp_path):
  w = metrics.MetricWriter(str(tmp_path), enabled=True)
  for step in (1, 2, 3, 4):
    w.write_scalars(step, {'train/loss': float(step)})
  w.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 5, "train/lo')  # the killed run's last line, cut short
  assert [r['step'] for r in metrics.read_jsonl(str(tmp_path))] == [1, 2, 3, 4]
  w = metrics.MetricWriter(str(tmp_path), enabled=True, resume_step=2)
  w.write_scalars(3, {'train/loss': 30.0})
  w.close()
  assert [(r['step'], r['train/loss']) for r in metrics.read_jsonl(str(tmp_path))] == [
      (1, 1.0), (2, 2.0), (3, 30.0)]


def test_a_disabled_writer_writes_nothing(tmp_path):
  w = metrics.MetricWriter(str(tmp_path / 'tb'), enabled=False)
  w.write_scalars(1, {'train/loss': 1.0})
  w.flush()
  w.close()
  assert not (tmp_path / 'tb').exists()


def test_progress_line():
  line = metrics.ReportProgress.line(12, 100, {
      'train/loss': 1.23456, 'train/accuracy/b': 0.5, 'train/accuracy/a': 0.25,
      'train/learning_rate': 3e-4, 'perf/steps_per_sec': 2.5, 'perf/examples_per_sec': 640.0,
      'perf/eta_s': 3725.0})
  assert line == ('step     12/100 | loss 1.2346 | acc[a] 0.250 | acc[b] 0.500 | lr 3.00e-04 | '
                  '2.50 steps/s | 640 ex/s | ETA 1:02:05')
  assert metrics.ReportProgress.line(1, 5, {'train/loss': 0.5}) == 'step      1/5 | loss 0.5000'


def test_rates_start_after_the_first_report(monkeypatch):
  clock = iter([0.0, 10.0, 12.0])
  monkeypatch.setattr(metrics.time, 'perf_counter', lambda: next(clock))
  p = metrics.ReportProgress(total_steps=100, examples_per_step=8, start_step=0)
  assert p(1) == {} and p.first_step_s == 10.0  # the first interval holds the compile
  assert p(5) == {'steps_per_sec': 2.0, 'examples_per_sec': 16.0, 'eta_s': 47.5}


def test_profile_window(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(metrics.jax.profiler, 'start_trace', lambda d: calls.append(('start', d)))
  monkeypatch.setattr(metrics.jax.profiler, 'stop_trace', lambda: calls.append(('stop',)))
  cfg = ml_collections.ConfigDict({'enabled': True, 'start_step': 3, 'num_steps': 2})
  p = metrics.Profile(cfg, str(tmp_path))
  for step in range(1, 8):
    p(step)
  assert calls == [('start', str(tmp_path)), ('stop',)] and not p.active
  off = metrics.Profile(ml_collections.ConfigDict({'enabled': False, 'start_step': 1,
                                                   'num_steps': 1}), str(tmp_path))
  off(1)
  assert len(calls) == 2


def test_writer_does_not_load_torch(tmp_path):
  """tensorboardX would import torch (the [torch] extra) at load: 1.5 s per train process."""
  import subprocess
  import sys
  code = ('import sys\nfrom sparse_tubes.train import metrics\n'
          f'w = metrics.MetricWriter({str(tmp_path)!r}, enabled=True)\n'
          'w.write_scalars(1, {"a": 1.0}); w.close()\n'
          'import importlib.util\n'
          'installed = importlib.util.find_spec("torch") is not None\n'
          'print("torch" in sys.modules, installed)\n'
          'if installed:\n'
          '  import torch  # still importable afterwards (check=True fails the test if not)\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  loaded, _ = out.stdout.split()
  assert loaded == 'False', out.stdout
  assert (tmp_path / 'metrics.jsonl').read_text().count('"a": 1.0') == 1
