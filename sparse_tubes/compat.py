"""Every use of another library's private API, in one place.

Each use is one small function here (or, for a private hook our subclass overrides, one entry of
HOOKS, marked on the overriding method with `@compat.overrides(name)`), with what it wraps, the
library version it was checked against and why no public API does the job. tests/test_compat.py
calls each function and checks each hook's signature and caller, so an upgrade that moves one fails
there, naming the entry and the version it was checked with, instead of somewhere deep in a run.

On an upgrade: run tests/test_compat.py; for each failure, find the new home of the symbol (or a
public API that now does the job), change the function or hook entry, and update CHECKED.
"""
import dataclasses
import importlib

import numpy as np

# The versions every entry below was last checked against.
CHECKED = {'jax': '0.10.2', 'flax': '0.12.8', 'tensorflow-datasets': '4.9.10', 'grain': '0.2.18',
           'absl-py': '2.5.1'}


# ----------------------------------------------------------------------------------------- jax

def jax_cluster_types() -> list:
  """jax's cluster detectors (Cloud TPU, GKE, SLURM, Open MPI, ...) in the order
  `jax.distributed.initialize` tries them: `jax._src.clusters.ClusterEnv._cluster_types`, each
  with `opt_in_only_method`, `is_env_present()` and `get_process_count()`.

  Checked: jax 0.10.2. Why private: jax has no public way to ask whether it would detect a
  multi-process cluster (and how many processes) without initializing it, which
  sparse_tubes/distributed.py needs so that a single-process run never initializes."""
  from jax._src.clusters import ClusterEnv  # pylint: disable=g-import-not-at-top
  return ClusterEnv._cluster_types  # pylint: disable=protected-access


def reset_compilation_cache() -> None:
  """`jax._src.compilation_cache.reset_cache()`: forgets the persistent compilation cache set up in
  this process, so that a changed `jax_compilation_cache_dir` takes effect (tests only).

  Checked: jax 0.10.2. Why private: jax sets the cache up once per process and offers no public
  way to point a running process at another cache directory."""
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.reset_cache()


def jax_cudnn_fused_attention():
  """The module `jax._src.cudnn.fused_attention_stablehlo` (its `check_cudnn_version()`), which
  tests patch to trace jax's cuDNN attention on a CPU (tests only; sparse_tubes/models/attention.py
  mirrors the checks it makes).

  Checked: jax 0.10.2. Why private: `jax.nn.dot_product_attention(implementation='cudnn')` checks
  the installed cuDNN before tracing, with no public switch to trace without one."""
  from jax._src.cudnn import fused_attention_stablehlo  # pylint: disable=g-import-not-at-top
  return fused_attention_stablehlo


def cudnn_version() -> int | None:
  """The cuDNN version jax's CUDA plugin loaded (e.g. 91000), None without one:
  `jax._src.lib.cuda_versions.cudnn_get_version()` (scripts/gpu_attention_check.py prints it).

  Checked: jax 0.10.2 (cuda_versions is None on a CPU-only install). Why private: jax reports the
  CUDA and cuDNN versions it was built with and found only through its internal lib module."""
  from jax._src.lib import cuda_versions  # pylint: disable=g-import-not-at-top
  return cuda_versions.cudnn_get_version() if cuda_versions else None


def jaxpr_tracer_class():
  """`jax._src.interpreters.partial_eval.DynamicJaxprTracer`, whose `_origin_msg` (the walk of the
  trace behind a tracer's error messages) tests count to show what host_counted_rngs avoids (tests
  only).

  Checked: jax 0.10.2. Why private: jax exports no tracer classes; the walk is internal."""
  from jax._src.interpreters import partial_eval  # pylint: disable=g-import-not-at-top
  return partial_eval.DynamicJaxprTracer


# ---------------------------------------------------------------------------------------- flax

def logical_axis_rules():
  """The logical-to-mesh axis rules in effect, those `nnx.logical_axis_rules(rules)` set:
  `flax.core.spmd.get_logical_axis_rules()`.

  Checked: flax 0.12.8. Why private: nnx exports the context manager that sets the rules but no
  getter; flax.core.spmd is flax's internal module for them (not re-exported by nnx)."""
  from flax.core import spmd  # pylint: disable=g-import-not-at-top
  return spmd.get_logical_axis_rules()


def host_counted_rngs(**streams):
  """`nnx.Rngs(**streams)` whose streams count their draws in a numpy array instead of a jax one:
  the same keys (the n-th draw is `fold_in(key, n)`), but a model built under a trace
  (`nnx.eval_shape`, `jax.jit`) no longer costs time quadratic in its size.

  Why: flax's RngStream keeps its draw count in a jax array, so under a trace every draw stores a
  new traced count, and `Variable.set_value` compares its `.sharding`. On a tracer that raises an
  AttributeError whose message jax builds by walking the whole trace so far
  (`DynamicJaxprTracer._origin_msg`). TubeViT-H's abstract model took 3.9 s to build, 0.35 s with
  host counters; `info` on it, 16 s then 1.5 s. Each read of the counter is a fresh copy, because
  jit captures a numpy constant by reference: reading the live buffer, every draw of a jitted
  build would see the last count.

  Checked: flax 0.12.8, jax 0.10.2. Why private: it relies on how RngStream reads and writes its
  counter (`count[...]`, `count[...] = n + 1` on the Variable's raw value); flax has no public
  option to count on the host."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  rngs = nnx.Rngs(**streams)
  for _, stream in rngs.items():
    count = stream.count.get_raw_value()
    stream.count.set_raw_value(np.zeros(count.shape, np.uint32).view(_HostCount))
  return rngs


class _HostCount(np.ndarray):
  """A host counter whose reads are copies (see host_counted_rngs)."""

  def __getitem__(self, index):
    return np.array(np.asarray(self)[index])


# ---------------------------------------------------------------------------------------- absl

def absl_parse_flag_value(flag, text: str):
  """`flag._parse(text)`: the value an absl flag would take from `text`, without setting it (tests
  check every --flag=value written in the docs this way).

  Checked: absl-py 2.5.1. Why private: the public `Flag.parse` also sets the flag's value and marks
  it present."""
  return flag._parse(text)  # pylint: disable=protected-access


# ------------------------------------------------------------------- hooks our subclasses override

@dataclasses.dataclass(frozen=True)
class Hook:
  """A private method of a library's base class that our subclass overrides, and the library
  function that calls it (so a hook still defined but no longer called is caught too)."""
  base: str         # 'module:Class' that defines it
  method: str
  params: tuple     # its parameters after self, as checked
  caller: str       # 'module:Class.method' or 'module:function' whose code calls it
  checked: str
  why: str


_TFDS = 'tensorflow_datasets.core.dataset_builder'
HOOKS = {
    'tfds_log_download_bytes': Hook(
        f'{_TFDS}:DatasetBuilder', '_log_download_bytes', (),
        f'{_TFDS}:DatasetBuilder.download_and_prepare', 'tensorflow-datasets 4.9.10',
        'TFDS logs "Downloading and preparing dataset Unknown size" with no option to stay quiet; '
        'sparse_tubes/data/builtin.py prints its own line.'),
    'tfds_log_download_done': Hook(
        f'{_TFDS}:DatasetBuilder', '_log_download_done', (),
        f'{_TFDS}:DatasetBuilder.download_and_prepare', 'tensorflow-datasets 4.9.10',
        'as tfds_log_download_bytes, for "... downloaded and prepared".'),
    'tfds_download_and_prepare': Hook(
        f'{_TFDS}:GeneratorBasedBuilder', '_download_and_prepare', ('dl_manager', 'download_config'),
        f'{_TFDS}:DatasetBuilder.download_and_prepare', 'tensorflow-datasets 4.9.10',
        'the one place a failed Beam pipeline can be caught to report which videos failed '
        '(sparse_tubes/data/video_builder.py); TFDS has no public error hook.'),
    'tfds_example_writer': Hook(
        f'{_TFDS}:GeneratorBasedBuilder', '_example_writer', (),
        f'{_TFDS}:GeneratorBasedBuilder._generate_splits', 'tensorflow-datasets 4.9.10',
        'the writer of the shards: on Beam, ours copies array_record shards to gs:// (array_record '
        'writes local paths only); TFDS takes no writer argument.'),
    'tfds_process_pipeline_result': Hook(
        f'{_TFDS}:GeneratorBasedBuilder', '_process_pipeline_result', ('pipeline_result',),
        f'{_TFDS}:GeneratorBasedBuilder._generate_splits', 'tensorflow-datasets 4.9.10',
        'runs after a Beam pipeline, where the per-split summaries of decoded videos are read '
        '(documented in TFDS\'s docstring, but underscore-named).'),
    'grain_get_next_index': Hook(
        'grain:DatasetIterator', '_get_next_index', (),
        'grain.experimental:get_next_index', 'grain 0.2.18',
        'grain.experimental.get_next_index(iterator) calls it: an iterator of ours that wraps '
        'another (sparse_tubes/data/pipeline.py) passes the position through, which a restore onto '
        'another process count needs (sparse_tubes/checkpoints.py).'),
    'grain_set_next_index': Hook(
        'grain:DatasetIterator', '_set_next_index', ('index',),
        'grain.experimental:set_next_index', 'grain 0.2.18',
        'as grain_get_next_index, for grain.experimental.set_next_index.'),
}


def overrides(name: str):
  """Marks a method as our override of the private hook HOOKS[name] (returned unchanged);
  tests/test_compat.py checks that the library still defines and calls every hook."""
  hook = HOOKS[name]

  def mark(fn):
    if fn.__name__ != hook.method:
      raise TypeError(f'compat.overrides({name!r}) is for {hook.method}, not {fn.__name__}.')
    fn.compat_hook = name
    return fn
  return mark


def resolve(path: str):
  """The object of 'module:attr.attr' (a HOOKS base or caller)."""
  module, _, attrs = path.partition(':')
  obj = importlib.import_module(module)
  for attr in attrs.split('.'):
    obj = getattr(obj, attr)
  return obj
