"""Ahead-of-time compilation for TPU slices on a machine without a TPU: libtpu (the `[tpu]` extra)
describes a slice's chips without owning them (jax.experimental.topologies). Used by `plan` and
`bench step --topology`.
"""
import math
import os
import re

GIB = 2**30


def quiet_libtpu(topology):
  """Ahead-of-time compilation needs no TPU; these tell libtpu so, instead of a page of warnings."""
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', topology.accelerator_type)
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_WORKER_ID', '0')
  # Compiling only: several plans (pytest workers) may load libtpu at once.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  import jax
  if not os.environ.get('JAX_PLATFORMS'):  # (no effect once a backend is up: then it is harmless)
    jax.config.update('jax_platforms', 'cpu')  # The host runs nothing on a TPU it may have.


def topology_devices(topology, num_slices: int = 1):
  """Compile-only devices of the slice, or of `num_slices` such slices (no TPU needed)."""
  from jax.experimental import topologies
  try:
    import libtpu  # noqa: F401
  except ImportError:
    raise RuntimeError("plan needs libtpu to compile for TPUs: pip install -e '.[tpu]' (or "
                       "pip install 'jax[tpu]').") from None
  # Chips per TPU VM host: 4 (2x2) on multi-host slices; single-host slices hold all of theirs.
  bounds = (2, 2, 1) if topology.hosts > 1 else (*topology.shape, 1)[:3]
  return topologies.get_topology_desc(
      platform='tpu', topology_name=topology.name, chip_config_name=topology.generation.chip_config,
      chips_per_host_bounds=bounds, num_slices=num_slices).devices


def shard_bytes(abstract_tree) -> int:
  """Bytes one chip holds of ShapeDtypeStructs carrying shardings."""
  import jax
  import numpy as np
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(abstract_tree))


def peak_bytes(mem) -> int:
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)


UNITS = {'B': 1, 'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


# `plan --quick`: XLA's lowest effort at optimising the program's run time (ExecutableBuildOptions'
# exec_time_optimization_effort, -1 to 1, default 0). libtpu 0.0.42 then planned the eleven paper
# configs 4.8x faster (train + eval steps, 2 cores: 101 s instead of 480 s in all; TubeViT-B 10 s
# instead of 64 s), and the peak per chip moved by at most 7%, mostly down (TimeSformer-HR 3.92 vs
# 4.20 GiB, TubeViT-L 7.36 vs 7.78, TubeViT-B 12.64 vs 12.45; docs/pods.md has every config). Tiny
# programs move more in relative terms (tens of MiB) and their collectives may be scheduled
# differently, so DCN figures want a full compile.
QUICK = {'exec_time_optimization_effort': -1.0}


def compile_or_oom(lowered, arguments, compiler_options=None):
  """(compiled or None, peak bytes, temporaries bytes). The TPU compiler refuses a program whose
  temporaries exceed the chip's HBM ('Ran out of memory ... HLO temporaries (182.64G) exceeds
  available HBM'): that is a plan result, not an error."""
  try:
    compiled = lowered.compile(compiler_options)
  except Exception as e:  # noqa: BLE001 - jax raises JaxRuntimeError; anything else re-raises
    m = re.search(r'HLO temporaries \(([\d.]+)([BKMGT])\)', str(e))
    if 'RESOURCE_EXHAUSTED' not in str(e) or not m:
      raise
    temp = float(m.group(1)) * UNITS[m.group(2)]
    return None, shard_bytes(arguments) + temp, temp
  mem = compiled.memory_analysis()
  return compiled, peak_bytes(mem), mem.temp_size_in_bytes
