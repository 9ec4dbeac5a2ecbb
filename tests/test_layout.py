"""tests/ mirrors the package: every module of sparse_tubes/ with logic (a function or a class) has
its own test module, at the same place under tests/ with `test_` before its name.

  sparse_tubes/checkpoints.py       -> tests/test_checkpoints.py
  sparse_tubes/train/metrics.py     -> tests/train/test_metrics.py

tests/ has no __init__.py, so pytest imports each test module by its bare file name: two test files
of one name in two folders cannot both be collected. Modules that share a name (commands/prepare.py
and data/prepare.py) therefore take their folder into it: tests/commands/test_commands_prepare.py,
tests/data/test_data_prepare.py.
"""
import ast
import collections
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def has_logic(path: pathlib.Path) -> bool:
  """A module with a function or a class; constants-only modules have nothing to test alone."""
  tree = ast.parse(path.read_text(), str(path))
  return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
             for n in ast.walk(tree))


def modules(package: pathlib.Path) -> list[str]:
  """Paths relative to `package` ('train/metrics.py') of the modules that need a test module."""
  out = []
  for path in sorted(package.rglob('*.py')):
    if path.name in ('__init__.py', '__main__.py') or '__pycache__' in path.parts:
      continue
    if has_logic(path):
      out.append(path.relative_to(package).as_posix())
  return out


def mirrors(module_paths: list[str]) -> dict[str, str]:
  """{module path: its test module's path under tests/}."""
  names = collections.Counter(os.path.basename(m) for m in module_paths)
  out = {}
  for m in module_paths:
    folder, name = os.path.split(m)
    if names[name] > 1:  # Same file name in two folders: the folder keeps the test names apart.
      name = folder.replace('/', '_') + '_' + name
    out[m] = os.path.join(folder, 'test_' + name)
  return out


def missing(package: pathlib.Path, tests: pathlib.Path) -> list[str]:
  """One line per module whose mirrored test module does not exist."""
  return [f'{package.name}/{m} has no test module: expected {tests.name}/{t}'
          for m, t in mirrors(modules(package)).items() if not (tests / t).is_file()]


def test_every_module_with_logic_has_its_test_module():
  problems = missing(REPO / 'sparse_tubes', REPO / 'tests')
  assert not problems, '\n'.join(problems)


def test_test_module_names_are_unique():
  """pytest (rootdir imports, no __init__.py) refuses a second test module of the same name."""
  names = collections.defaultdict(list)
  for path in (REPO / 'tests').rglob('test_*.py'):
    names[path.name].append(path.relative_to(REPO).as_posix())
  clashes = {n: sorted(p) for n, p in names.items() if len(p) > 1}
  assert not clashes, clashes


@pytest.mark.parametrize('module,expected', [
    ('checkpoints.py', 'test_checkpoints.py'),
    ('train/metrics.py', 'train/test_metrics.py'),
    ('models/video_vit.py', 'models/test_video_vit.py'),
])
def test_mirror_of_a_module(module, expected):
  assert mirrors([module, 'other.py'])[module] == expected


def test_modules_of_one_name_take_their_folder():
  assert mirrors(['commands/prepare.py', 'data/prepare.py', 'data/pipeline.py']) == {
      'commands/prepare.py': 'commands/test_commands_prepare.py',
      'data/prepare.py': 'data/test_data_prepare.py',
      'data/pipeline.py': 'data/test_pipeline.py'}


def test_a_missing_test_module_is_named(tmp_path):
  """The check on a small tree: what it asks for, and what it leaves alone."""
  package, tests = tmp_path / 'pkg', tmp_path / 'tests'
  files = {
      'pkg/__init__.py': 'def helper():\n  pass\n',  # never needs a test module of its own
      'pkg/__main__.py': 'def main():\n  pass\n',
      'pkg/a.py': 'class A:\n  pass\n',
      'pkg/constants.py': 'X = 1\n',  # no logic
      'pkg/sub/__init__.py': '',
      'pkg/sub/b.py': 'def b():\n  return 1\n',
      'pkg/sub/c.py': 'async def c():\n  return 1\n',
      'tests/test_a.py': '',
      'tests/sub/test_c.py': '',
      'tests/test_b.py': '',  # in the wrong folder: does not count for sub/b.py
  }
  for rel, text in files.items():
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(text)
  assert modules(package) == ['a.py', 'sub/b.py', 'sub/c.py']
  assert missing(package, tests) == ['pkg/sub/b.py has no test module: expected tests/sub/test_b.py']
  (tests / 'sub' / 'test_b.py').write_text('')
  assert missing(package, tests) == []
