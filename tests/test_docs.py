"""README.md, docs/*.md and the notebooks' text name only things that exist, so they cannot rot.

Each `python -m sparse_tubes ...`, `python launch/...`, `python scripts/...` and `make ...` line (in
code blocks and inline code) is checked without running it: the command and its sub-command exist,
every flag is one the CLI defines (absl's registry, filled by importing sparse_tubes/main.py) and its
value parses, `--config=path[:arg]` loads with sparse_tubes.config.load, and each `--config.a.b=v`
names a key of that config. Every relative link resolves to a file (and a `#heading` in it), every
repo path written in inline code exists, and the package map in README's Architecture block names
only modules that exist. Placeholders (DIR, N, `...`, CONFIG.py) are skipped. Seconds in all: nothing
is trained, compiled or built.
"""
import functools
import importlib.util
import json
import pathlib
import re
import shlex

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TOP_DIRS = ('sparse_tubes', 'configs', 'tests', 'launch', 'scripts', 'notebooks', 'docs', '.ci')
PLACEHOLDER = re.compile(r'\.\.\.|[A-Z]{2,}|^[A-Z]$|<|\$')   # DIR, HF_DIR, N, <step>, $VAR, ...


def doc_files() -> list[pathlib.Path]:
  return [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]


def notebook_text(path: pathlib.Path) -> str:
  """The markdown cells of a notebook: what a reader is told to run."""
  cells = json.loads(path.read_text())['cells']
  return '\n\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')


# ---------------------------------------------------------------------------------------------------
# Extraction

FENCE = re.compile(r'^[ \t]*```[^\n]*\n(.*?)^[ \t]*```', re.M | re.S)
COMMAND_START = re.compile(r'(?:^|\s)((?:python3? -m sparse_tubes|python3? (?:launch|scripts)/\S+\.py|'
                           r'make)(?:\s|$).*)')


def commands(text: str) -> list[str]:
  """Command lines of fenced blocks (backslash continuations joined, comments dropped) and of
  inline code spans (which may wrap over lines)."""
  found = []
  for block in FENCE.findall(text):
    for line in block.replace('\\\n', ' ').splitlines():
      m = COMMAND_START.search(line.strip())
      if m:
        found.append(m.group(1))
  prose = FENCE.sub('', text)
  for span in re.findall(r'`([^`]+)`', prose):
    m = COMMAND_START.match(' '.join(span.replace('\\\n', ' ').split()))
    if m:
      found.append(m.group(1).strip())
  return found


def words(command: str) -> list[str]:
  try:
    tokens = shlex.split(command, comments=True)
  except ValueError:   # an unbalanced quote in prose
    tokens = command.split()
  # `[--json]` and `[--steps=N]` write optional flags; the flag inside is checked.
  return [t[1:-1] if t.startswith('[') and t.endswith(']') else t for t in tokens]


# ---------------------------------------------------------------------------------------------------
# Commands


@functools.lru_cache(maxsize=None)
def cli():
  from absl import flags
  from sparse_tubes import main
  from sparse_tubes.commands import bench
  from sparse_tubes.data import prepare
  return flags.FLAGS, main.COMMANDS, {'bench': bench.SUBCOMMANDS,
                                      'prepare': tuple(d.split('/')[0] for d in prepare.DATASETS)}


@functools.lru_cache(maxsize=None)
def load_config(spec: str):
  """The loaded config, or the error text."""
  from sparse_tubes import config as config_lib
  try:
    return config_lib.load(str(REPO / spec))
  except Exception as e:  # noqa: BLE001 - any failure to load is the finding
    return f'{type(e).__name__}: {e}'


def alternatives(value: str) -> list[str]:
  return [v.strip('[]') for v in value.split('|')]


def check_value(flag, name: str, value: str) -> list[str]:
  from sparse_tubes import compat
  out = []
  for v in alternatives(value):
    try:
      compat.absl_parse_flag_value(flag, v)  # parses without setting the flag
    except Exception as e:  # noqa: BLE001
      if not PLACEHOLDER.search(v):
        out.append(f'--{name}={v}: {e}')
  return out


def check_override(config, key: str, value: str | None) -> list[str]:
  from sparse_tubes import config as config_lib
  try:
    config_lib.check_override(config, key)
  except ValueError as e:
    return [str(e)]
  node = config
  for part in key.split('.'):
    node = node[part] if hasattr(node, 'keys') and part in node else None
  if value is None or PLACEHOLDER.search(value) or isinstance(node, (tuple, list, type(None))) \
      or hasattr(node, 'keys'):
    return []
  try:
    if isinstance(node, bool):
      if value.lower() not in ('true', 'false'):
        raise ValueError('not true or false')
    elif isinstance(node, (int, float)):
      (int if isinstance(node, int) else float)(value)
  except ValueError as e:
    return [f'--config.{key}={value}: {type(node).__name__} expected ({e})']
  return []


def check_sparse_tubes(argv: list[str]) -> list[str]:
  """argv: what follows `python -m sparse_tubes`."""
  flag_values, command_names, positional = cli()
  if argv and PLACEHOLDER.search(argv[0]):
    return []   # `python -m sparse_tubes COMMAND`
  if not argv or argv[0] not in command_names:
    return [f'no command {argv[:1]}; the commands are {command_names}']
  command, rest = argv[0], argv[1:]
  out, config, overrides = [], None, []
  words_ = [w for w in rest if not w.startswith('--')]
  if command in positional:
    if not words_:
      out.append(f'{command} needs one of {positional[command]}')
    for w in words_[:1]:
      for v in alternatives(w):
        if v.split('/')[0] not in positional[command] and not PLACEHOLDER.search(v):
          out.append(f'{command} {v}: not one of {positional[command]}')
    words_ = words_[1:]
  if words_:
    out.append(f'{command}: unexpected words {words_} (flags are --name=value)')
  for w in rest:
    if not w.startswith('--'):
      continue
    name, eq, value = w[2:].partition('=')
    if name.startswith('config.'):
      overrides.append((name[len('config.'):], value if eq else None))
    elif name == 'config':
      if PLACEHOLDER.search(value) or not value:
        config = 'placeholder'
        continue
      path = value.partition(':')[0]
      if not (REPO / path).is_file():
        out.append(f'--config={value}: no file {path}')
        config = 'placeholder'
        continue
      config = load_config(value)
      if isinstance(config, str):
        out.append(f'--config={value} does not load: {config}')
        config = 'placeholder'
    elif name in flag_values:
      flag = flag_values[name]
      if eq:
        out += check_value(flag, name, value)
      elif not flag.boolean:
        out.append(f'--{name} needs a value (--{name}=...)')
    elif name.startswith('no') and name[2:] in flag_values and flag_values[name[2:]].boolean:
      pass
    else:
      out.append(f'--{name}: no such flag of `python -m sparse_tubes`')
  if overrides and config != 'placeholder':
    if config is None:
      from sparse_tubes import defaults
      config = defaults.base()
    for key, value in overrides:
      out += check_override(config, key, value)
  return out


@functools.lru_cache(maxsize=None)
def makefile():
  text = (REPO / 'Makefile').read_text()
  targets = set(re.findall(r'^([\w.-]+):', text, re.M))
  variables = set(re.findall(r'^(\w+)\s*[?:]?=', text, re.M))
  return targets, variables


def check_make(argv: list[str]) -> list[str]:
  targets, variables = makefile()
  out = []
  for w in argv:
    if '=' in w:
      if w.split('=')[0] not in variables:
        out.append(f'make {w}: the Makefile sets no variable {w.split("=")[0]}')
    elif w not in targets:
      out.append(f'make {w}: no such target (the Makefile has {sorted(targets)})')
  return out


def check_script(argv: list[str]) -> list[str]:
  """`python launch/x.py ...` or `python scripts/x.py ...`: the file exists and defines each flag;
  what follows a bare `--` (launch/local.py) is a sparse_tubes command."""
  script, rest = argv[0], argv[1:]
  path = REPO / script
  if not path.is_file():
    return [f'no file {script}']
  source = path.read_text()
  out = []
  if '--' in rest:
    out += check_sparse_tubes(rest[rest.index('--') + 1:])
    rest = rest[:rest.index('--')]
  if script == 'launch/tpu.py':
    spec = importlib.util.spec_from_file_location('_launch_tpu', path)
    tpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tpu)
    subs = [w for w in rest if not w.startswith('-')]
    if not subs or subs[0] not in tpu.SUBCOMMANDS:
      out.append(f'launch/tpu.py {subs[:1]}: not one of {tpu.SUBCOMMANDS}')
  for w in rest:
    name = w.partition('=')[0]
    if w.startswith('--config.') or not name.startswith('--'):
      continue
    if f"'{name}'" not in source:
      out.append(f'{script}: defines no flag {name}')
  return out


def check_command(command: str) -> list[str]:
  argv = words(command)
  if argv[0] == 'make':
    problems = check_make(argv[1:])
  elif argv[1] == '-m':
    problems = check_sparse_tubes(argv[3:])
  else:
    problems = check_script(argv[1:])
  return [f'`{command}`: {p}' for p in problems]


# ---------------------------------------------------------------------------------------------------
# Links and paths


def slug(heading: str) -> str:
  """GitHub's anchor of a heading."""
  text = re.sub(r'[`*_]|\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip().lower())
  return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(text: str) -> set[str]:
  return {slug(h) for h in re.findall(r'^#+\s+(.*)$', FENCE.sub('', text), re.M)}


def check_links(text: str, where: pathlib.Path) -> list[str]:
  out = []
  for target in re.findall(r'\]\(([^)\s]+)\)', FENCE.sub('', text)):
    if re.match(r'[a-z]+:', target):
      continue   # http(s), mailto
    file, _, anchor = target.partition('#')
    path = (where.parent / file).resolve() if file else where
    if file and not path.exists():
      out.append(f'link ({target}): no file {path.relative_to(REPO) if REPO in path.parents else path}')
    elif anchor and path.suffix == '.md' and anchor not in anchors(text if not file else
                                                                    path.read_text()):
      out.append(f'link ({target}): no heading #{anchor} in {path.name}')
  return out


def expand_braces(path: str) -> list[str]:
  m = re.search(r'\{([^{}]*)\}', path)
  if not m:
    return [path]
  return [p for choice in m.group(1).split(',')
          for p in expand_braces(path[:m.start()] + choice + path[m.end():])]


@functools.lru_cache(maxsize=None)
def file_names() -> frozenset[str]:
  files = [*REPO.iterdir(), *(p for d in TOP_DIRS for p in (REPO / d).rglob('*'))]
  return frozenset(p.name for p in files if p.is_file())


def check_paths(text: str) -> list[str]:
  """Repo paths written in inline code (`sparse_tubes/zoo.py`, `configs/<dataset>/*.py`) exist, and
  so does a module or notebook named without its folder (`tubevit_{b,l,h}.py`, `tubes.ipynb`)."""
  out = []
  for span in re.findall(r'`([^`]+)`', FENCE.sub('', text)):
    for token in span.split():
      token = token.strip('()[],;\'"').rstrip('.:')
      if re.fullmatch(r'[\w{},]+\.(py|ipynb)(:\S*)?', token):
        for name in expand_braces(token.split(':')[0]):
          if name not in file_names():
            out.append(f'`{token}`: no file {name} in the repository')
        continue
      if not token.startswith(tuple(d + '/' for d in TOP_DIRS)):
        continue
      token = re.split(r'::|:(?!//)', token)[0]   # a config's :arg, a test's ::name
      for path in expand_braces(token):
        if '<' in path:
          path = re.sub(r'<[^>]*>', '*', path)
        if not list(REPO.glob(path.rstrip('/'))) if '*' in path else not (REPO / path).exists():
          out.append(f'`{token}`: no such path')
  return out


def check_architecture(text: str) -> list[str]:
  """The package map: each module or folder it names exists where it says."""
  blocks = [b for b in FENCE.findall(text) if b.startswith('sparse_tubes/\n')]
  out = []
  for block in blocks:
    top, entry = None, None
    for line in block.splitlines():
      indent = len(line) - len(line.lstrip())
      head, _, description = line.strip().partition('  ')
      if indent == 0:
        top, entry = line.split()[0], None
        names, description = [], line[len(line.split()[0]):]
        base = REPO / top
      elif indent == 2:
        names = [n.strip() for n in head.split(',')]
        entry = next((n for n in names if n.endswith('/')), None)
        base = REPO / top / entry if entry else REPO / top
      else:
        names, description = [], line
      for name in names:
        if not (REPO / top / name).exists():
          out.append(f'Architecture: {top}{name} does not exist')
      for module in re.findall(r'(?<![/\w.])(\w+\.py)\b', description):
        if not (base / module).exists() and not list(base.rglob(module)):
          out.append(f'Architecture: {module} is not in {base.relative_to(REPO)}/')
  return out


def modules() -> list[str]:
  """The package's and launch/'s modules (tracked by git when there is a checkout: a module being
  written is not yet part of the map)."""
  import subprocess
  try:
    listed = subprocess.run(['git', 'ls-files', 'sparse_tubes', 'launch'], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split()
  except (OSError, subprocess.CalledProcessError):
    listed = [str(p.relative_to(REPO)) for d in ('sparse_tubes', 'launch')
              for p in (REPO / d).rglob('*.py')]
  return sorted(p for p in listed if p.endswith('.py') and not p.rsplit('/', 1)[-1].startswith('__')
                and (REPO / p).exists())


def unnamed_modules(readme: str) -> list[str]:
  """The modules README's package map does not name under their folder's entry."""
  block = next(b for b in FENCE.findall(readme) if b.startswith('sparse_tubes/\n'))
  entries, current = {}, None
  for line in block.splitlines():
    indent = len(line) - len(line.lstrip())
    if indent == 0:
      top, current = line.split()[0], line.split()[0]
    elif indent == 2:
      head = line.strip().partition('  ')[0]
      folder = next((n.strip() for n in head.split(',') if n.strip().endswith('/')), '')
      current = top + folder
    entries[current] = entries.get(current, '') + ' ' + line
  missing = []
  for module in modules():
    folder, name = module.rsplit('/', 1)
    if not re.search(rf'(?<![\w.]){re.escape(name)}\b', entries.get(folder + '/', '')):
      missing.append(module)
  return missing


def test_architecture_names_every_module():
  missing = unnamed_modules((REPO / 'README.md').read_text())
  assert not missing, f"name these in README's Architecture block, under their folder: {missing}"
  readme = (REPO / 'README.md').read_text()
  assert unnamed_modules(readme.replace('  atomic.py ', '  other.py ')) == ['sparse_tubes/atomic.py']
  assert 'sparse_tubes/train/step.py' in unnamed_modules(readme.replace(' step.py (', ' (', 1))


def check_text(text: str, where: pathlib.Path) -> list[str]:
  out = [p for c in commands(text) for p in check_command(c)]
  return out + check_links(text, where) + check_paths(text) + check_architecture(text)


# ---------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize('path', doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_doc_names_only_what_exists(path):
  problems = check_text(path.read_text(), path)
  assert not problems, f'{path.relative_to(REPO)}:\n  ' + '\n  '.join(problems)


@pytest.mark.parametrize('path', sorted((REPO / 'notebooks').glob('*.ipynb')), ids=lambda p: p.name)
def test_notebook_text_names_only_what_exists(path):
  problems = check_text(notebook_text(path), path)
  assert not problems, f'{path.relative_to(REPO)}:\n  ' + '\n  '.join(problems)


def test_readme_gives_the_two_entry_points_first():
  """README opens with the commands that run the main job and the tests, and .ci/run runs the
  same test command."""
  readme = (REPO / 'README.md').read_text()
  first = FENCE.search(readme).group(0)
  assert [words(c)[:2] for c in commands(first)] == [['make', 'demo'], ['make', 'test']]
  assert readme.index('```') < 400, 'the set-up commands come first'
  assert 'make test' in (REPO / '.ci' / 'run').read_text()
  assert len(readme.splitlines()) <= 350, 'README stays short: reference material goes to docs/'


def test_the_check_finds_what_rotted(tmp_path):
  """A page with one broken thing per kind: each is reported, and a sound page reports nothing."""
  (tmp_path / 'there.md').write_text('# A heading\n')
  sound = (
      '```bash\n'
      'make demo\n'
      'python -m sparse_tubes train --config=configs/synthetic/tubevit_tiny.py --workdir=/tmp/x \\\n'
      '    --config.total_steps=20 --config.model.dtype=bfloat16   # a comment --bogus\n'
      'python -m sparse_tubes evaluate --workdir=DIR --checkpoint=all [--json]\n'
      'python -m sparse_tubes bench step|attention|data --config=CONFIG.py[:arg] --steps=N\n'
      'python -m sparse_tubes prepare kinetics400 --manual_dir=/data/k400 --workers=16\n'
      'python launch/local.py --processes=2 -- train --config=configs/synthetic/tubevit_tiny.py\n'
      '```\n'
      'Run `python -m sparse_tubes info\n--config=configs/synthetic/vivit_tiny.py:model=m2 --json`; see\n'
      '[there](there.md#a-heading), `sparse_tubes/zoo.py` and `configs/kinetics400/tubevit_{b,l}.py`.\n')
  assert check_text(sound, tmp_path / 'page.md') == []
  broken = {
      'trian': '`python -m sparse_tubes trian --config=configs/synthetic/tubevit_tiny.py`',
      'bench sprint': '`python -m sparse_tubes bench sprint`',
      'prepare kinetics401': '`python -m sparse_tubes prepare kinetics401 --manual_dir=/d`',
      '--no_such_flag': '`python -m sparse_tubes info --config=configs/synthetic/tubevit_tiny.py --no_such_flag`',
      '--steps=many': '`python -m sparse_tubes bench step --steps=many`',
      '--from=onnx': '`python -m sparse_tubes convert --from=onnx --input=x --workdir=/tmp/w`',
      'no file configs/synthetic/nope.py': '`python -m sparse_tubes info --config=configs/synthetic/nope.py`',
      'does not load': '`python -m sparse_tubes info --config=configs/synthetic/vivit_tiny.py:model=m9`',
      'total_stepz': '`python -m sparse_tubes train --config=configs/synthetic/tubevit_tiny.py --config.total_stepz=5`',
      'int expected': '`python -m sparse_tubes train --config.total_steps=lots`',
      'no such target': '`make demos`',
      'defines no flag --procs': '`python launch/local.py --procs=2 -- info`',
      "launch/tpu.py ['go']": '`python launch/tpu.py go --name=x --zone=y`',
      'link (missing.md): no file': '[gone](missing.md)',
      'no heading #nowhere': '[gone](there.md#nowhere)',
      'no heading #nope in page.md': '# Here\n[gone](#nope)',
      '`sparse_tubes/run.py`: no such path': 'see `sparse_tubes/run.py`',
      'no file vivit_b16x2_m9.py': 'and `vivit_b16x2_{m1,m9}.py`',
      'Architecture: tpus.py': '```\nsparse_tubes/\n  main.py   the CLI\n  train/    tpus.py\n```\n',
  }
  for expected, snippet in broken.items():
    problems = check_text(snippet, tmp_path / 'page.md')
    assert any(expected in p for p in problems), (expected, problems)
