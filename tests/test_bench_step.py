"""`python -m sparse_tubes.bench step`: the real train step timed, FLOPs from `info`'s count."""
import json
import time

import pytest

from sparse_tubes import bench, bench_step, info


def test_peak_table_matches_device_kinds():
  assert bench_step.peak_flops('TPU v5 lite') == 197e12      # v5e
  assert bench_step.peak_flops('TPU v5') == 459e12           # v5p
  assert bench_step.peak_flops('TPU v6 lite') == 918e12
  assert bench_step.peak_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert bench_step.peak_flops('cpu') is None


def test_variants_are_the_product_of_the_options():
  assert bench_step.variants({}) == [{}]
  v = bench_step.variants({'dtype': 'float32,bfloat16', 'scan_layers': 'true,false'})
  assert v == [dict(scan_layers=s, dtype=d) for s in (True, False) for d in ('float32', 'bfloat16')]
  with pytest.raises(ValueError, match='--scan_layers'):
    bench_step.variants({'scan_layers': 'yes'})


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
  monkeypatch.setattr(bench_step, 'peak_flops', lambda kind: 1e12)   # as if on an accelerator
  bench.main(['step', f'--config={config}', '--json', '--steps=2', '--warmup=1',
              '--batch_size=4', '--dtype=bfloat16'])
  row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in ('compile_s', 'step_s', 'examples_per_s', 'tokens_per_s', 'flops_per_step',
              'flops_per_s', 'device_kind', 'mfu'):
    assert key in row
  assert row['dtype'] == 'bfloat16' and row['device_kind'] == 'cpu'
  assert row['compile_s'] > 0 and row['step_s_min'] <= row['step_s'] <= row['step_s_max']
  assert row['examples_per_s'] == pytest.approx(4 / row['step_s'])
  # 4 clips of 4x4x4 tubelets + the class token
  assert row['tokens_per_s'] == pytest.approx(4 * 65 / row['step_s'])
  # forward + backward = 3 x forward, 2 FLOPs per multiply-add; forward from `info`
  from sparse_tubes import config as config_lib
  gflops = info.summarize(config_lib.load(str(config)), activations=False)['gflops_per_view']
  assert row['flops_per_step'] == pytest.approx(3 * 2 * 4 * gflops['shapes_video'] * 1e9, rel=1e-6)
  assert row['flops_per_s'] == pytest.approx(row['flops_per_step'] / row['step_s'])
  assert row['mfu'] == pytest.approx(row['flops_per_s'] / 1e12)   # achieved / (peak x 1 device)


def test_splash_cuts_attention_temporaries_on_a_v5e_compile():
  """Compiled ahead of time for a v5e:2x2 slice from this CPU machine (libtpu, no TPU): the score
  matrix XLA materialises in the backward is gone with the splash kernel."""
  pytest.importorskip('libtpu')
  kw = dict(batch=4, tokens=3137, heads=12)   # ViViT-B M1: 16x14x14 tubelets + class token
  xla = bench_step.attention_memory('v5e:2x2', 'xla', **kw)
  splash = bench_step.attention_memory('v5e:2x2', 'splash', **kw)
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
  row = bench_step.measure(make_config(), steps=3, warmup=1, with_data=True)
  assert row['device_loop_step_s'] > 0
  assert row['loop_examples_per_s'] == pytest.approx(16 / row['loop_step_s'])
  assert row['data_wait_frac'] == pytest.approx(1 - row['device_loop_step_s'] / row['loop_step_s'])
  assert row['loop_step_s'] > 0.7   # two datasets, 0.4 s each, read one after the other
  assert row['data_wait_frac'] > 0.5 and row['input_wait_s'] > 0.3
