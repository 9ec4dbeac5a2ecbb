"""`python -m sparse_tubes info`: parameters, tokens, GFLOPs per view, activation memory."""
import json
import os
import subprocess
import sys

import jax
import pytest

from sparse_tubes import config as config_lib
from sparse_tubes.data import sources
from sparse_tubes.commands import info
from sparse_tubes.models import costs
from sparse_tubes.models import tokenizers
from sparse_tubes.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, 'configs', 'synthetic', 'tubevit_tiny.py')


@pytest.fixture(scope='module')
def tiny():
  config = config_lib.load(TINY)
  return config, costs.summarize(config)


def test_json_keys_and_types(tiny):
  _, s = tiny
  for key in ('params', 'tokens', 'gflops_per_view', 'params_by_module',
              'activation_mib_per_example', 'flops_convention'):
    assert key in s
  assert isinstance(s['params'], int)
  assert set(s['tokens']) == set(s['gflops_per_view']) == {'shapes_video', 'shapes_image'}
  assert 'multiply-add' in s['flops_convention']
  json.dumps(s)  # JSON-able as it is


def test_params_are_the_abstract_parameter_tree(tiny):
  config, s = tiny
  classes = sources.num_classes(config)
  assert classes == {'shapes_video': 8, 'shapes_image': 3}
  mesh = jax.make_mesh((1, 1, 1), ('data', 'fsdp', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  spec = state_lib.model_spec(config.model, classes, mesh, config.sharding_rules)
  assert s['params'] == state_lib.param_count(spec.abstract_params)
  assert sum(s['params_by_module'].values()) == s['params']
  assert set(s['params_by_module']) >= {'tokenizer', 'encoder', 'pool', 'heads'}
  d = config.model.hidden_size
  assert s['params_heads'] == {'shapes_video': d * 8 + 8, 'shapes_image': d * 3 + 3}


def test_tokens_are_count_tokens(tiny):
  config, s = tiny
  for name, ds in config.datasets.items():
    expected = tokenizers.count_tokens(config.model, config_lib.input_shape(ds))
    assert s['tokens'][name]['total'] == expected['total']
    assert s['tokens'][name]['per_tube'] == expected['per_tube']
  # The image goes through the 2D-patch tube only: (32/8)^2 tokens.
  assert s['tokens']['shapes_image']['per_tube'] == [0, 0, 0, 16]


def test_xla_flops_agree_with_the_analytic_count(tiny):
  _, s = tiny
  for name in s['gflops_per_view']:
    xla, analytic = s['gflops_per_view'][name], s['gflops_per_view_analytic'][name]
    # XLA also counts elementwise work (softmax, GELU, LayerNorm), which matters at width 64.
    assert analytic <= xla <= 1.25 * analytic, name


def test_flops_scale_with_views_and_activations_are_positive(tiny):
  _, s = tiny
  t, v = s['views']['shapes_video']
  assert (t, v) == (2, 3)
  assert s['gflops_per_video']['shapes_video'] == pytest.approx(6 * s['gflops_per_view']['shapes_video'])
  assert all(v > 0 for v in s['activation_mib_per_example'].values())
  # A video holds more tokens than an image, so more activations.
  assert s['activation_mib_per_example']['shapes_video'] > s['activation_mib_per_example']['shapes_image']


def test_text_output_says_the_convention(tiny, capsys):
  config, _ = tiny
  info.run(config, as_json=False)
  out = capsys.readouterr().out
  assert 'multiply-add' in out and 'parameters' in out and 'shapes_video' in out


def test_cli_json():
  proc = subprocess.run([sys.executable, '-m', 'sparse_tubes', 'info', f'--config={TINY}', '--json'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  s = json.loads(proc.stdout)
  assert {'params', 'tokens', 'gflops_per_view'} <= set(s)
  assert s['tokens']['shapes_video']['total'] == 82
