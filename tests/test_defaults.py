"""defaults.py is the one place a config key gets its default: code reads `config.x`, never
`config.get('x', default)` (a second default that can drift from the first, or hide a typo), and a
workdir's config.json written before a key existed is completed from the defaults when it loads."""
import ast
import json
import pathlib

import ml_collections
import pytest

from sparse_tubes import defaults
from sparse_tubes import validation
from sparse_tubes import workdir as workdir_lib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'sparse_tubes'

# Names a config, or a part of one, goes by in the package: a `.get` whose receiver starts with one
# of these (or passes through a section of the config, e.g. `x.model.get`) reads a config.
# Dicts that are not configs (a Hugging Face config.json `hf`, a data element, a JSON result, a
# converted.json `info`) go by other names and may use `.get`.
CONFIG_NAMES = {'config', 'cfg', 'c', 'ds', 'ds_cfg', 'model_cfg', 'm', 'opt_cfg', 'freeze_cfg',
                'init', 'init_cfg', 'mesh_cfg', 'grain_cfg', 'mixup_cfg', 'profile_cfg', 'mixup',
                'saved', 'spec_cfg'}
SECTIONS = {k for k, v in defaults.base().items() if isinstance(v, ml_collections.ConfigDict)}


def config_keys() -> set[str]:
  """Every key of the schema, at any depth: base(), dataset() and model()."""
  keys = set()

  def walk(node):
    for key, value in node.items():
      keys.add(key)
      if isinstance(value, ml_collections.ConfigDict):
        walk(value)
  for tree in (defaults.base(), defaults.dataset(), defaults.model()):
    walk(tree)
  return keys


def _chain(node) -> tuple[str | None, list[str]]:
  """(root name, attribute names) of a receiver like `config.datasets[name].model`."""
  attrs = []
  while True:
    if isinstance(node, ast.Attribute):
      attrs.append(node.attr)
      node = node.value
    elif isinstance(node, ast.Subscript):
      node = node.value
    else:
      return (node.id if isinstance(node, ast.Name) else None), attrs[::-1]


def violations(source: str, filename: str = '<source>', keys: set[str] | None = None) -> list[str]:
  """'file:line: call' of each `.get('<config key>', ...)` on a config in `source`."""
  keys = config_keys() if keys is None else keys
  out = []
  for node in sorted(ast.walk(ast.parse(source, filename)), key=lambda n: getattr(n, 'lineno', 0)):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == 'get' and node.args
            and isinstance(node.args[0], ast.Constant) and node.args[0].value in keys):
      continue
    root, attrs = _chain(node.func.value)
    if root in CONFIG_NAMES or SECTIONS & set(attrs):
      out.append(f'{filename}:{node.lineno}: {ast.unparse(node)}')
  return out


def test_scan_catches_a_planted_get_and_leaves_other_dicts_alone():
  planted = '\n'.join([
      'def f(config, hf, element, info):',
      "  a = config.mesh.get('slices', 1)",                 # a violation
      "  b = cfg.get('seed')",                              # a violation, default None
      "  c = obj.optimizer.get('step_boundaries', ())",     # through a section: a violation
      "  d = config.datasets[name].get('num_frames', 8)",   # a violation
      "  e = hf.get('hidden_size', 768)",                   # a Hugging Face dict: allowed
      "  f = element.get('id', '?')",                       # a data element: allowed
      "  g = config.get('not_a_config_key', 0)",            # not a key of the schema: allowed
      '  return config.mesh.slices',
  ])
  found = violations(planted, 'planted.py')
  assert [line.split(':')[1] for line in found] == ['2', '3', '4', '5'], found
  assert found[0] == "planted.py:2: config.mesh.get('slices', 1)"


def test_no_config_key_is_read_with_get():
  found = []
  for path in sorted(PACKAGE.rglob('*.py')):
    found += violations(path.read_text(), str(path.relative_to(PACKAGE.parent)))
  assert not found, ('config keys read with .get(key, default); read them as config.key (the '
                     'default lives in sparse_tubes/defaults.py only):\n' + '\n'.join(found))


# Keys a workdir written before they existed lacks, one per kind of reader: the mesh, the optimizer,
# config.freeze (a whole section), config.init_from, a dataset and the model.
NEWER_KEYS = (('mesh', 'slices'), ('optimizer', 'step_boundaries'),
              ('optimizer', 'end_learning_rate_factor'), ('freeze',), ('init_from', 'tube_projection'),
              ('datasets', 'shapes_video', 'eval_aggregation'), ('model', 'space_cls_average'))


def test_an_older_workdir_config_gets_the_newer_keys_and_trains(make_config, tmp_path):
  from sparse_tubes.commands import train as train_cmd
  workdir = str(tmp_path)
  workdir_lib.save_workdir(make_config(), workdir)
  path = tmp_path / workdir_lib.WORKDIR_CONFIG
  saved = json.loads(path.read_text())
  for *parents, leaf in NEWER_KEYS:
    node = saved
    for p in parents:
      node = node[p]
    del node[leaf]
  path.write_text(json.dumps(saved))
  config = workdir_lib.load_workdir(workdir)
  want = defaults.base()
  assert config.mesh.slices == want.mesh.slices == 1
  assert config.optimizer.step_boundaries == want.optimizer.step_boundaries
  assert config.optimizer.end_learning_rate_factor == want.optimizer.end_learning_rate_factor
  assert config.freeze.to_dict() == want.freeze.to_dict()
  assert config.init_from.tube_projection == want.init_from.tube_projection
  assert config.datasets.shapes_video.eval_aggregation == defaults.dataset().eval_aggregation
  assert config.model.space_cls_average == defaults.model().space_cls_average
  validation.validate(config, num_devices=1, process_count=1)
  # One step of the tiny config (the program tests/commands/test_train.py compiles: cached).
  assert train_cmd.train(config, workdir, stop_after_steps=1)['step'] == 1
