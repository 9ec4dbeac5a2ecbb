"""sparse_tubes/compat.py holds every use of another library's private API. Each function is called
here and each overridden hook checked (defined by the library's base class with the parameters we
override it with, called by the library function that calls it, and marked on our override), so an
upgrade that moves one fails here, naming the entry and the version it was checked against."""
import ast
import importlib.metadata
import inspect
import pathlib
import re

import jax
import pytest

from sparse_tubes import compat

REPO = pathlib.Path(__file__).resolve().parents[1]


def moved(entry: str, library: str, detail) -> str:
  installed = importlib.metadata.version(library)
  return (f'compat.{entry} (checked against {library} {compat.CHECKED[library]}, installed '
          f'{installed}): {detail}. Find its new home in {library} and update sparse_tubes/compat.py.')


def test_jax_cluster_types():
  try:
    envs = list(compat.jax_cluster_types())
    assert envs, 'no cluster types'
    for env in envs:
      assert isinstance(env.opt_in_only_method, bool), env
      for method in ('is_env_present', 'get_process_count'):
        assert not inspect.signature(getattr(env, method)).parameters, (env, method)
  except Exception as e:  # noqa: BLE001
    pytest.fail(moved('jax_cluster_types', 'jax', repr(e)))
  # Nothing on this machine is a cluster: detection says one process (sparse_tubes/distributed.py).
  from sparse_tubes import distributed
  assert distributed.detected_process_count() == 1


def test_reset_compilation_cache():
  try:
    compat.reset_compilation_cache()
  except Exception as e:  # noqa: BLE001
    pytest.fail(moved('reset_compilation_cache', 'jax', repr(e)))


def test_jax_cudnn_fused_attention():
  try:
    module = compat.jax_cudnn_fused_attention()
    assert not inspect.signature(module.check_cudnn_version).parameters
  except Exception as e:  # noqa: BLE001
    pytest.fail(moved('jax_cudnn_fused_attention', 'jax', repr(e)))


def test_cudnn_version():
  try:
    version = compat.cudnn_version()
  except Exception as e:  # noqa: BLE001
    pytest.fail(moved('cudnn_version', 'jax', repr(e)))
  assert version is None if jax.default_backend() != 'gpu' else version > 0, version


def test_logical_axis_rules_are_those_nnx_sets():
  from flax import nnx
  rules = (('batch', 'data'), ('embed', None))
  try:
    assert not compat.logical_axis_rules()
    with nnx.logical_axis_rules(rules):
      assert tuple(compat.logical_axis_rules()) == rules
    assert not compat.logical_axis_rules()
  except Exception as e:  # noqa: BLE001
    pytest.fail(moved('logical_axis_rules', 'flax', repr(e)))


def test_absl_parse_flag_value_does_not_set_the_flag():
  from absl import flags
  registry = flags.FlagValues()
  flags.DEFINE_integer('steps', 3, 'help', flag_values=registry)
  flag = registry['steps']
  try:
    assert compat.absl_parse_flag_value(flag, '7') == 7
  except Exception as e:  # noqa: BLE001
    pytest.fail(moved('absl_parse_flag_value', 'absl-py', repr(e)))
  assert flag.value == 3 and not flag.present
  with pytest.raises(flags.IllegalFlagValueError, match='--steps=seven'):
    compat.absl_parse_flag_value(flag, 'seven')


def _library(hook: compat.Hook) -> str:
  return hook.checked.rsplit(' ', 1)[0]


@pytest.mark.parametrize('name', sorted(compat.HOOKS))
def test_hook_is_defined_and_called_by_the_library(name):
  hook = compat.HOOKS[name]
  try:
    base = compat.resolve(hook.base)
    assert hook.method in vars(base), f'{hook.base} no longer defines {hook.method}'
    params = tuple(inspect.signature(getattr(base, hook.method)).parameters)[1:]
    assert params == hook.params, f'{hook.base}.{hook.method} now takes {params}, not {hook.params}'
    caller = inspect.getsource(inspect.unwrap(compat.resolve(hook.caller)))
    assert re.search(rf'\.{hook.method}\(', caller), f'{hook.caller} no longer calls {hook.method}'
  except Exception as e:  # noqa: BLE001
    pytest.fail(moved(f'HOOKS[{name!r}]', _library(hook), e))


def test_grain_calls_our_index_hooks():
  """grain.experimental.get/set_next_index reach the iterator's own methods (ours wraps another)."""
  import grain
  ds = grain.MapDataset.range(10).to_iter_dataset()
  it = iter(ds)
  next(it)
  try:
    assert grain.experimental.get_next_index(it) == 1
    grain.experimental.set_next_index(it, 5)
  except Exception as e:  # noqa: BLE001
    pytest.fail(moved("HOOKS['grain_get_next_index']", 'grain', repr(e)))
  assert next(it) == 5


def test_every_hook_is_marked_on_its_override_and_every_override_is_a_hook():
  """The package's overrides of private methods are the HOOKS, each marked with compat.overrides."""
  marked = {}
  for path in sorted((REPO / 'sparse_tubes').rglob('*.py')):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.FunctionDef):
        for d in node.decorator_list:
          if (isinstance(d, ast.Call) and ast.unparse(d.func) == 'compat.overrides'):
            marked[d.args[0].value] = (path.name, node.name)
  assert set(marked) == set(compat.HOOKS), set(marked) ^ set(compat.HOOKS)
  for name, (_, method) in marked.items():
    assert method == compat.HOOKS[name].method, (name, method)
  with pytest.raises(TypeError, match='is for _example_writer'):
    compat.overrides('tfds_example_writer')(lambda self: None)


PRIVATE = re.compile(r'^(jax\._src|flax\.core\.spmd|grain\._src)\b')


def private_uses(source: str) -> list[int]:
  """Lines of `source` that import or name a private module (jax._src, flax.core.spmd, ...)."""
  lines = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [f'{node.module}.{a.name}' for a in node.names]
    elif isinstance(node, ast.Attribute):
      names = [ast.unparse(node)]
    else:
      continue
    if any(PRIVATE.match(n) for n in names):
      lines.append(node.lineno)
  return sorted(set(lines))


def test_no_private_api_outside_compat():
  """`jax._src` and friends are imported in sparse_tubes/compat.py only."""
  assert private_uses('from jax._src import compilation_cache\nx = jax._src.clusters\n'
                      '"jax._src in a string"\nfrom flax.core import spmd\n') == [1, 2, 4]
  found = []
  for folder in ('sparse_tubes', 'tests', 'scripts'):
    for path in sorted((REPO / folder).rglob('*.py')):
      if path.name != 'compat.py':
        found += [f'{path.relative_to(REPO)}:{i}' for i in private_uses(path.read_text())]
  assert not found, 'private APIs outside sparse_tubes/compat.py:\n' + '\n'.join(found)


def test_host_counted_rngs_draw_nnx_keys_and_keep_traced_builds_linear(monkeypatch):
  from flax import nnx
  from sparse_tubes import config as config_lib
  from sparse_tubes.models import video_vit

  def draws(make):
    rngs = make(params=3)
    return jax.numpy.stack([jax.random.key_data(rngs.params()) for _ in range(3)])

  plain = draws(nnx.Rngs)
  assert len({tuple(k) for k in plain.tolist()}) == 3
  for name, keys in (('eager', draws(compat.host_counted_rngs)),
                     ('jit', jax.jit(lambda: draws(compat.host_counted_rngs))())):
    assert (keys == plain).all(), (name, keys, plain)   # jit must not see only the last count

  # The reason for it: under a trace, nnx.Rngs' traced counter makes flax read a tracer's
  # `.sharding`, whose error message jax builds by walking the whole trace (quadratic builds).
  walks, tracer = [], compat.jaxpr_tracer_class()
  origin = tracer._origin_msg
  monkeypatch.setattr(tracer, '_origin_msg', lambda self: walks.append(1) or origin(self))
  cfg = config_lib.load(str(REPO / 'configs' / 'synthetic' / 'tubevit_tiny.py')).model
  host = nnx.eval_shape(lambda: video_vit.build_model(
      cfg, {'a': 8}, rngs=compat.host_counted_rngs(params=0)))
  assert not walks
  plain_model = nnx.eval_shape(lambda: video_vit.build_model(cfg, {'a': 8},
                                                             rngs=nnx.Rngs(params=0)))
  assert walks, moved('host_counted_rngs', 'flax', 'nnx.Rngs no longer walks the trace on each '
                      'draw: the workaround may go (use nnx.Rngs)')
  shapes = lambda m: jax.tree.map(lambda x: (x.shape, x.dtype), nnx.state(m, nnx.Param))
  assert shapes(host) == shapes(plain_model)
