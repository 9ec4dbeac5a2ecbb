"""The package's import graph has no cycle, counting imports inside functions too: an import moved
into a function to dodge a circle would still be a circle, only one that fails later and more
confusingly. Function-level imports are fine for laziness (torch, the CLI's commands); they are
simply counted here like any other."""
import ast
import os

import pytest

import sparse_tubes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sparse_tubes.__file__)))
# (importer, imported) pairs left out of the graph, each with its reason. Empty: none needed.
ALLOWED: set[tuple[str, str]] = set()


def _modules() -> dict[str, str]:
  out = {}
  for dirpath, _, files in os.walk(os.path.join(ROOT, 'sparse_tubes')):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(dirpath, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[name.removesuffix('.__init__')] = path
  return out


def import_graph() -> dict[str, dict[str, int]]:
  """{module: {imported module: line}} over every import statement of the package (module level
  or inside functions). `from a.b import c` points at a.b.c when that is a module, else at a.b."""
  modules = _modules()
  graph = {m: {} for m in modules}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in modules
                   else node.module for a in node.names]
      else:
        continue
      for t in targets:
        while t and t not in modules:  # `import a.b.c.func`-style names: the module holding them
          t = t.rpartition('.')[0]
        # Importing a.b.c runs the __init__ of every package above it too (a.b here).
        parents = [t.rsplit('.', i)[0] for i in range(t.count('.'))] if t else []
        for target in [t] + parents:
          if (target in modules and target != name and not name.startswith(target + '.')
              and (name, target) not in ALLOWED):
            graph[name].setdefault(target, node.lineno)
  return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
  """One cycle as [a, b, ..., a], or None."""
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == 'open':
        return stack[stack.index(n):] + [n]
      if n not in state:
        found = visit(n)
        if found:
          return found
    stack.pop()
    state[m] = 'done'
    return None

  for m in sorted(graph):
    if m not in state:
      found = visit(m)
      if found:
        return found
  return None


def test_no_import_cycles():
  graph = import_graph()
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(
      f'{a} (line {graph[a][b]})' for a, b in zip(cycle, cycle[1:])) + f' -> {cycle[-1]}'


def closure(graph: dict[str, dict[str, int]], start: str) -> set[str]:
  """Every module `start` imports, directly or through others."""
  seen, todo = set(), [start]
  while todo:
    for n in graph[todo.pop()]:
      if n not in seen:
        seen.add(n)
        todo.append(n)
  return seen


COMMAND = 'sparse_tubes.commands'


def test_no_library_imports_a_command():
  """Commands (sparse_tubes/commands/) sit on top: main.py dispatches to them, they use the
  libraries, and no library, nor another command, imports one."""
  graph = import_graph()
  for name, targets in graph.items():
    if name in ('sparse_tubes.main', 'sparse_tubes.__main__', COMMAND):
      continue
    bad = [t for t in targets if t.startswith(COMMAND + '.') and t != COMMAND]
    assert not bad, f'{name} imports the command module(s) {bad} (line {targets[bad[0]]})'


def test_train_does_not_call_back_up():
  """Nothing under sparse_tubes/train/ imports a module that itself (directly or through others)
  imports sparse_tubes/train/: the training primitives are a layer below what uses them."""
  graph = import_graph()
  train = [m for m in graph if m.startswith('sparse_tubes.train.')]
  for name in train:
    for target, line in graph[name].items():
      if target.startswith('sparse_tubes.train'):
        continue
      back = sorted(m for m in closure(graph, target) if m in train)
      assert not back, (f'{name} (line {line}) imports {target}, which imports {back[0]}: '
                        'train/ calls back up into a module that uses it')


def test_the_layer_checks_catch_a_violation():
  graph = {'sparse_tubes.train.step': {'sparse_tubes.multiview': 3},
           'sparse_tubes.multiview': {'sparse_tubes.train.sharding': 5},
           'sparse_tubes.train.sharding': {}}
  assert closure(graph, 'sparse_tubes.multiview') == {'sparse_tubes.train.sharding'}


def test_the_checker_finds_a_function_level_cycle():
  graph = {'a': {'b': 1}, 'b': {'c': 3}, 'c': {'a': 7}, 'd': {'a': 2}}
  assert find_cycle(graph) == ['a', 'b', 'c', 'a']
  del graph['c']['a']
  assert find_cycle(graph) is None


TORCH_FREE = ('sparse_tubes.workdir', 'sparse_tubes.checkpoints', 'sparse_tubes.commands.train',
              'sparse_tubes.commands.bench', 'sparse_tubes.commands.evaluate',
              'sparse_tubes.commands.predict', 'sparse_tubes.commands.convert',
              'sparse_tubes.commands.info')


def test_commands_do_not_import_torch():
  """torch is read only where PyTorch files are (pretrained/weights.py, inside a function).

  One fresh process imports the modules one after another and looks for torch after each: torch
  cannot leave sys.modules, so the first module after which it is there is the one that pulled
  it in (one process instead of one per module: 9 s each on 2 cores)."""
  import subprocess
  import sys
  code = ('import importlib, sys\n'
          f'for m in {TORCH_FREE!r}:\n'
          '  importlib.import_module(m)\n'
          '  print(m, "torch" in sys.modules)\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == [w for m in TORCH_FREE for w in (m, 'False')], out.stdout
