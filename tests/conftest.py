"""Fixtures shared by the whole suite: the tiny built-in datasets and a tiny TubeViT config on them."""
import os
import pathlib
import sys

import pytest

# The suite runs on CPU. With libtpu installed (the [test] extra has it, for `plan`), JAX would
# otherwise probe for TPU chips at start-up in every process, and print pages of warnings.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# Import the package from this checkout, whether or not it is installed.
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# One persistent compilation cache for the whole suite: both xdist workers and every subprocess a
# test starts (the environment is inherited). Tests build fresh jitted functions, which JAX's
# in-memory cache cannot match, so the tiny configs' steps were compiled again in every test; the
# persistent cache keys on the program itself. It lives in this checkout (.pytest_cache is not
# tracked), so a fresh clone starts empty and timings of the suite stay honest.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(REPO / '.pytest_cache' / 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# The suite's programs are tiny and run a few steps, so XLA's CPU backend spends far more time
# optimising them (LLVM -O2) than running them: -O0 makes the suite ~35% faster. Tests that run
# hundreds of steps ask for optimised compiles back (the `optimised_compiles` fixture). TPU
# compiles (`plan`, libtpu) do not read this flag: their memory figures are the same either way.
# Subprocesses inherit it (a test that sets XLA_FLAGS for a child appends to it).
O0 = '--xla_backend_optimization_level=0'
if O0 not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + O0).strip()

from sparse_tubes import config as config_lib  # noqa: E402


@pytest.fixture
def optimised_compiles(monkeypatch):
  """jax.jit compiles at XLA's default optimisation level (-O2) in this test, for the tests that
  run hundreds of steps: there the step's run time, not its compile, is what costs."""
  import functools
  import jax
  jit = jax.jit

  def optimised(fun=None, **kwargs):
    kwargs['compiler_options'] = {'xla_backend_optimization_level': 2,
                                  **(kwargs.get('compiler_options') or {})}
    return jit(fun, **kwargs) if fun is not None else functools.partial(optimised, **kwargs)

  monkeypatch.setattr(jax, 'jit', optimised)


def pytest_collection_modifyitems(items):
  """Spread the slow tests over the xdist workers, each worker's share first.

  `make test` runs `-n 3 --dist worksteal`, which hands worker i the i-th contiguous block of this
  order and lets idle workers steal from the END of the others' queues. In collection order one
  block would hold most slow tests (the TPU plans, the notebooks and the training checks sit
  together) and run them one after another while the other workers stole its quick tests. So the
  slow tests are dealt round-robin into the blocks, each block starting with its slow tests; quick
  tests fill the rest of each block and are what gets stolen."""
  workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
  slow = [item for item in items if item.get_closest_marker('slow') is not None]
  quick = [item for item in items if item.get_closest_marker('slow') is None]
  # Block sizes as xdist's worksteal splits len(items) among `workers` idle nodes.
  sizes, left = [], len(items)
  for i in range(workers):
    sizes.append(left // (workers - i))
    left -= sizes[-1]
  blocks = [slow[i::workers] for i in range(workers)]
  for block, size in zip(blocks, sizes):
    take = max(size - len(block), 0)
    block += quick[:take]
    del quick[:take]
  items[:] = [item for block in blocks for item in block] + quick


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding moving_shapes/video_tiny and image_tiny (64 train, 16 test each).

  Built once per session (once per xdist worker); takes about a second."""
  from sparse_tubes.data import builtin
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  for name in ('moving_shapes/video_tiny', 'moving_shapes/image_tiny'):
    builtin.ensure_built(name, data_dir)
  return data_dir


TINY_CONFIG = str(REPO / 'configs' / 'synthetic' / 'tubevit_tiny.py')


def tiny_config(data_dir: str, **overrides):
  c = config_lib.load(TINY_CONFIG)
  c.data_dir = data_dir
  c.datasets.shapes_video.tfds_name = 'moving_shapes/video_tiny'
  c.datasets.shapes_image.tfds_name = 'moving_shapes/image_tiny'
  c.datasets.shapes_video.batch_size = 8
  c.datasets.shapes_image.batch_size = 8
  c.datasets.shapes_video.eval_batch_size = 16
  c.datasets.shapes_image.eval_batch_size = 16
  c.model.hidden_size = 24
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.mlp_dim = 48
  c.total_steps = 6
  c.optimizer.warmup_steps = 2
  c.log_every_steps = 1
  c.checkpoint_every_steps = 3
  return config_lib.override(c, **overrides)


@pytest.fixture(scope='session')
def make_config(tiny_data_dir):
  """make_config(**overrides) -> a fresh tiny config reading the tiny datasets."""
  return lambda **kw: tiny_config(tiny_data_dir, **kw)
