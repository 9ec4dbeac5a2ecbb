"""`bench data`: per-core figures on the tiny datasets, and what a v5e host needs from a model."""
import json
import pathlib

from sparse_tubes.data import throughput
from sparse_tubes import config as config_lib
from sparse_tubes.models import costs


def test_required_rate_of_tubevit_b_on_a_v5e_host():
  cfg = config_lib.load(str(pathlib.Path(__file__).parents[2] / 'configs/data/kinetics400.py'))
  req = throughput.required_per_core(cfg)
  # TubeViT-B: 52 GMACs per 32x224x224 clip -> 313 GFLOP per training clip; 4 chips at 40% of
  # 197 TFLOP/s -> ~1,000 clips/s per host, 18 per core of 56.
  assert 17.5 < req['k400'] < 18.5, req
  # Co-training, one batch of 256 clips and one of 256 images per step: the step costs 256 x
  # (313 + 106) GFLOP, so the host needs 256 images per step at ~2.9 steps/s, 13.4 per core.
  assert 13.0 < req['imagenet'] < 13.8, req


def test_bench_data_json(make_config, tiny_data_dir, capsys):
  cfg = make_config()
  results = throughput.bench_data(cfg, data_dir=tiny_data_dir, workers=0, seconds=0.2, repeats=2,
                             as_json=True, synthetic=False)
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert lines == json.loads(json.dumps(results))
  assert sorted(r['dataset'] for r in lines) == ['shapes_image', 'shapes_video']
  host = throughput.V5E_HOST
  host_flops = host['chips'] * host['peak_tflops_per_chip'] * 1e12 * host['utilisation']
  for r in lines:
    ds = cfg.datasets[r['dataset']]
    assert r['per_core_clips_per_s'] > 1 and len(r['per_core_runs']) == 2
    lo, hi = r['per_core_spread']
    assert lo <= r['per_core_clips_per_s'] <= hi
    assert r['cores'] >= 1 and len(r['load_before']) == 3
    macs = costs.analytic_macs(cfg.model, costs.input_shape(ds), 8)['total']
    if ds.kind == 'video':
      expected = host_flops / (6 * macs) / host['cores']
      assert abs(r['required_per_core_clips_per_s'] - expected) < 1e-3 * expected
    assert r['margin'] == r['per_core_clips_per_s'] / r['required_per_core_clips_per_s']
