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

from sparse_tubes import config as config_lib  # noqa: E402


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
