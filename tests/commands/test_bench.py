"""`python -m sparse_tubes bench step`: the step `train` runs, timed; FLOPs from models/costs.py."""
import json
import sys
import time

import pytest

from sparse_tubes import chips
from sparse_tubes.commands import bench
from sparse_tubes.models import costs
from sparse_tubes.train import step as step_lib


def test_peak_table_matches_device_kinds():
  assert chips.peak_flops('TPU v5 lite') == 197e12      # v5e
  assert chips.peak_flops('TPU v5') == 459e12           # v5p
  assert chips.peak_flops('TPU v6 lite') == 918e12
  assert chips.peak_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert chips.peak_flops('NVIDIA H200') == 989e12 and chips.hbm_gib('NVIDIA H200') == 141
  assert chips.hbm_gib('TPU v5 lite') == 16
  assert chips.peak_flops('cpu') is None


def test_variants_are_the_product_of_the_options():
  assert bench.variants({}) == [{}]
  v = bench.variants({'dtype': 'float32,bfloat16', 'scan_layers': 'true,false'})
  assert v == [dict(scan_layers=s, dtype=d) for s in (True, False) for d in ('float32', 'bfloat16')]
  with pytest.raises(ValueError, match='--scan_layers'):
    bench.variants({'scan_layers': 'yes'})


TINY = """
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.synthetic(images=False)
  c.model.update(name='vivit', tubes=(((2, 8, 8), (2, 8, 8), (0, 0, 0)),), image_tube=None,
                 posemb='learned', head='token', attention='joint', hidden_size=16, num_layers=1,
                 num_heads=2, mlp_dim=32)
  return c
"""


def test_step_json_reports_flops_and_mfu(capsys, monkeypatch, tmp_path):
  config = tmp_path / 'tiny.py'
  config.write_text(TINY)
  monkeypatch.setattr(chips, 'peak_flops', lambda kind: 1e12)   # as if on an accelerator
  bench.run(str(config), as_json=True, steps=2, warmup=1, batch_size=4, dtype='bfloat16')
  row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in ('compile_s', 'step_s', 'examples_per_s', 'tokens_per_s', 'flops_per_step',
              'flops_per_s', 'device_kind', 'mfu'):
    assert key in row
  assert row['dtype'] == 'bfloat16' and row['device_kind'] == 'cpu'
  assert row['compile_s'] > 0 and row['step_s_min'] <= row['step_s'] <= row['step_s_max']
  assert row['examples_per_s'] == pytest.approx(4 / row['step_s'])
  # 4 clips of 4x4x4 tubelets + the class token
  assert row['tokens_per_s'] == pytest.approx(4 * 65 / row['step_s'])
  # forward + backward = 3 x forward, 2 FLOPs per multiply-add; the forward as `info` counts it
  # analytically (the same count on every backend and kernel)
  from sparse_tubes import config as config_lib
  s = costs.summarize(config_lib.load(str(config)), activations=False)
  analytic = s['gflops_per_view_analytic']['shapes_video']
  assert row['flops_per_step'] == pytest.approx(3 * 2 * 4 * analytic * 1e9, rel=1e-6)
  assert row['flops_per_s'] == pytest.approx(row['flops_per_step'] / row['step_s'])
  assert row['mfu'] == pytest.approx(row['flops_per_s'] / 1e12)   # achieved / (peak x 1 device)


def test_splash_cuts_attention_temporaries_on_a_v5e_compile():
  """Compiled ahead of time for a v5e:2x2 slice from this CPU machine (libtpu, no TPU): the score
  matrix XLA materialises in the backward is gone with the splash kernel."""
  pytest.importorskip('libtpu')
  kw = dict(batch=4, tokens=3137, heads=12)   # ViViT-B M1: 16x14x14 tubelets + class token
  xla = bench.attention_memory('v5e:2x2', 'xla', **kw)
  splash = bench.attention_memory('v5e:2x2', 'splash', **kw)
  # one example per chip: 12 x 3137^2 float32 scores are 0.44 GiB, and the backward holds more
  assert xla > 0.4 and splash < xla / 20


def test_with_data_shows_a_step_that_waits_for_the_pipeline(make_config, monkeypatch):
  """--with_data runs the loop on the real pipeline through the prefetch thread; a pipeline slower
  than the step shows up as the share of the step spent waiting."""
  from sparse_tubes.data import pipeline
  real = pipeline.train_iterator

  def slow(*args, **kw):   # 0.4 s a batch: far slower than the tiny step
    it = real(*args, **kw)

    class Slow:
      def __next__(self):
        time.sleep(0.4)
        return next(it)

      def get_state(self):
        return it.get_state()
    return Slow()
  monkeypatch.setattr(pipeline, 'train_iterator', slow)
  row = bench.measure(make_config(), steps=3, warmup=1, with_data=True)
  assert row['device_loop_step_s'] > 0
  assert row['loop_examples_per_s'] == pytest.approx(16 / row['loop_step_s'])
  assert row['data_wait_frac'] == pytest.approx(1 - row['device_loop_step_s'] / row['loop_step_s'])
  assert row['loop_step_s'] > 0.7   # two datasets, 0.4 s each, read one after the other
  assert row['data_wait_frac'] > 0.5 and row['input_wait_s'] > 0.3


def test_bench_times_the_step_train_runs(make_config, monkeypatch, tmp_path):
  """`train` and `bench step` compile the identical program (the same lowered HLO) from one builder,
  micro-batches and the non-finite guard included."""
  from sparse_tubes.commands import train
  texts = []
  real = step_lib.TrainProgram.compile

  def recording(self, state, batch):
    texts.append(self.step.lower(state, batch).as_text())
    return real(self, state, batch)
  monkeypatch.setattr(step_lib.TrainProgram, 'compile', recording)
  config = make_config(microbatches=2, on_nonfinite='skip', total_steps=2, optimizer__warmup_steps=1,
                       eval_every_steps=0)
  train.train(config, str(tmp_path / 'run'))
  bench.measure(config, steps=1, warmup=0)
  assert len(texts) == 2 and texts[0] == texts[1]
  assert 'while' in texts[0]          # the micro-batch scan
  assert 'is_finite' in texts[0]      # the guard


def test_bench_command_takes_config_overrides(tmp_path):
  """`sparse_tubes bench step` is a command like the others: --config.field overrides apply."""
  import subprocess
  config = tmp_path / 'tiny.py'
  config.write_text(TINY)
  out = subprocess.run(
      [sys.executable, '-m', 'sparse_tubes', 'bench', 'step', f'--config={config}', '--json',
       '--steps=1', '--warmup=0', '--config.datasets.shapes_video.batch_size=6'],
      capture_output=True, text=True, timeout=300, cwd=tmp_path,
      env={**__import__('os').environ, 'JAX_PLATFORMS': 'cpu',
           'PYTHONPATH': str(__import__('pathlib').Path(__file__).resolve().parents[2])})
  assert out.returncode == 0, out.stderr[-2000:]
  row = json.loads(out.stdout.strip().splitlines()[-1])
  assert row['batch_size'] == 6


def test_zoo_runs_each_config_and_reports_kernel_and_memory(capsys):
  rows = bench.zoo(['synthetic/vivit_tiny'], batch_size=2, steps=1, warmup=0)
  row, = rows
  assert row['config'] == 'synthetic/vivit_tiny' and row['batch'] == 2 and 'error' not in row
  assert row['attention_kernels'] == ['einsum']     # what 'auto' resolves to on a CPU
  assert row['flops_per_step'] > 0 and row['peak_gib'] > 0 and row['mfu'] is None
  assert 'synthetic/vivit_tiny' in capsys.readouterr().out


def test_zoo_halves_a_batch_that_does_not_fit_and_reports_other_failures(monkeypatch):
  seen = []

  def fake(config, **kw):
    b = config.datasets.shapes_video.batch_size
    seen.append(b)
    if b > 2:
      raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB')
    return dict(step_s=1.0)
  monkeypatch.setattr(bench, 'measure', fake)
  row, = bench.zoo(['synthetic/vivit_tiny'], batch_size=8, as_json=True)
  assert seen == [8, 4, 2] and row['batch'] == 2

  monkeypatch.setattr(bench, 'measure', lambda config, **kw: 1 / 0)
  row, = bench.zoo(['synthetic/vivit_tiny'], batch_size=8, as_json=True)
  assert row['error'].startswith('ZeroDivisionError') and row['batch'] == 8
