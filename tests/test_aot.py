"""Ahead-of-time memory arithmetic: the bytes a chip holds of sharded arrays, a compiled program's
peak, and a TPU out-of-memory refusal read as a plan result."""
import types

import jax
import numpy as np
import pytest

from sparse_tubes import aot


def test_shard_bytes_counts_one_chips_shard():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  tree = {'w': jax.ShapeDtypeStruct((4, 8), np.float32, sharding=replicated),
          'b': [jax.ShapeDtypeStruct((3,), np.dtype('bfloat16'), sharding=replicated)]}
  assert aot.shard_bytes(tree) == 4 * 8 * 4 + 3 * 2


def memory(arguments=0, outputs=0, aliased=0, temporaries=0):
  return types.SimpleNamespace(argument_size_in_bytes=arguments, output_size_in_bytes=outputs,
                               alias_size_in_bytes=aliased, temp_size_in_bytes=temporaries)


def test_peak_bytes_counts_donated_outputs_once():
  assert aot.peak_bytes(memory(arguments=100, outputs=60, aliased=50, temporaries=7)) == 117


class Lowered:
  def __init__(self, error=None):
    self.error, self.options = error, []

  def compile(self, compiler_options=None):
    self.options.append(compiler_options)
    if self.error:
      raise self.error
    return types.SimpleNamespace(memory_analysis=lambda: memory(10, 20, 5, 3))


def test_compile_or_oom():
  lowered = Lowered()
  compiled, peak, temp = aot.compile_or_oom(lowered, {})
  assert compiled is not None and (peak, temp) == (28, 3)
  aot.compile_or_oom(lowered, {}, aot.QUICK)   # plan --quick: the options reach the compiler
  assert lowered.options == [None, {'exec_time_optimization_effort': -1.0}]
  oom = RuntimeError('RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 190G of '
                     '95.74G hbm. Exceeded hbm capacity by 94G. HLO temporaries (1.5G) exceeds ...')
  args = jax.ShapeDtypeStruct((2, 2), np.float32, sharding=jax.sharding.SingleDeviceSharding(
      jax.devices()[0]))
  compiled, peak, temp = aot.compile_or_oom(Lowered(oom), args)
  assert compiled is None and temp == 1.5 * 2**30 and peak == 16 + temp
  with pytest.raises(RuntimeError, match='something else'):  # only the OOM is a result
    aot.compile_or_oom(Lowered(RuntimeError('RESOURCE_EXHAUSTED: something else')), args)
