"""Train-step benchmark: compile time, step time, throughput, FLOP/s and MFU.

  python -m sparse_tubes.bench step --config=CONFIG.py[:arg] [--steps=N] [--warmup=W] [--json]
      [--batch_size=B] [--attention_impl=einsum,xla] [--scan_layers=false,true]
      [--remat=none,full] [--dtype=float32,bfloat16] [--topology=v5e:2x2] [--with_data]
  python -m sparse_tubes.bench attention --topology=v5e:2x2 [--tokens=3137,12544] [--heads=16]
      [--batch=4] [--attention_impl=xla,splash]

The config's real train step (model, loss, optimizer update, sharding over all local devices) runs on
random inputs of each dataset's shape: no input pipeline, so this is the device-side ceiling. Each
comparison option takes a comma-separated list; every combination is one row of the table.

  compile_s       lowering + XLA compile of the step
  step_s          median of `steps` timed steps after `warmup` untimed ones (each waited for)
  examples_per_s  examples of all datasets per step / step_s; tokens_per_s likewise
  flops_per_step  model FLOPs: 3 x forward (forward + backward, whose two matmuls per forward one
                  cost 2x), forward = 2 x the multiply-adds `info` counts (XLA's cost analysis of the
                  float32 model with einsum attention, so every variant and kernel counts the same)
  flops_per_s     flops_per_step / step_s
  mfu             flops_per_s / (peak bf16 FLOP/s of one device x devices); null where the peak is
                  unknown (CPU: read GFLOP/s instead)

With --with_data the loop is also run as `train` runs it: batches from the config's real input
pipeline (Grain, decode + augment on this host), read and put on the devices by the prefetch thread
while the previous step runs, no wait per step. The dataset must be prepared (the built-in one is
built). It adds:

  loop_step_s     wall time per step of that loop over `steps` steps (timed to the last result)
  device_loop_step_s  the same loop fed one random batch: what the step costs when data is free
  data_wait_frac  1 - device_loop_step_s / loop_step_s (0 when the step never waits for data)
  input_wait_s    mean time per step the loop waited on the prefetch queue

With --topology=v5e:2x2 (any TPU topology name) nothing runs: the step is compiled ahead of time for
that TPU slice from this (CPU) machine, and the memory one chip needs is reported against its HBM
(temp_gib, total_gib, fits). A program too big for the chip is refused by the compiler; the
temporaries it asked for are still reported.
"""
import itertools
import json
import re
import statistics
import time

import jax
import numpy as np
from flax import nnx

from sparse_tubes import config as config_lib
from sparse_tubes import info
from sparse_tubes import run as run_lib
from sparse_tubes.models import attention
from sparse_tubes.train import optim, prefetch, sharding, state as state_lib, step as step_lib

# Dense bfloat16 peak FLOP/s per device (one chip; for v4/v5p one chip = 2 TensorCores as JAX sees
# it as one device): Google Cloud TPU and NVIDIA datasheets. Matched by substring of device_kind,
# first match wins (so 'v5 lite' before 'v5').
PEAK_BF16 = (
    ('TPU v6 lite', 918e12),   # v6e (Trillium)
    ('TPU v5 lite', 197e12),   # v5e
    ('TPU v5p', 459e12),
    ('TPU v5', 459e12),        # v5p reports 'TPU v5'
    ('TPU v4', 275e12),
    ('A100', 312e12),
    ('H100', 989e12),          # SXM, dense
    ('H200', 989e12),
)
COMPARE = ('attention_impl', 'scan_layers', 'remat', 'dtype')


def peak_flops(device_kind: str) -> float | None:
  return next((p for k, p in PEAK_BF16 if k.lower() in device_kind.lower()), None)


def _parse_values(key: str, text: str | None) -> list:
  if text is None:
    return [None]
  out = []
  for v in text.split(','):
    v = v.strip()
    if key == 'scan_layers':
      if v.lower() not in ('true', 'false'):
        raise ValueError(f'--scan_layers={text!r}: use true, false or true,false.')
      v = v.lower() == 'true'
    elif key == 'remat' and v.lower() in ('true', 'false'):
      v = v.lower() == 'true'
    out.append(v)
  return out


def variants(options: dict) -> list[dict]:
  """{'dtype': 'float32,bfloat16', ...} -> one dict of set keys per combination."""
  keys = [k for k in COMPARE if options.get(k) is not None]
  return [dict(zip(keys, vals))
          for vals in itertools.product(*(_parse_values(k, options[k]) for k in keys))]


def model_flops_per_step(config, classes) -> float:
  """3 x forward FLOPs (2 per multiply-add) of one step's examples, from `info`'s XLA count."""
  flat = config.model.copy_and_resolve_references()
  # Unrolled layers (XLA's cost analysis counts a loop body once), float32 (no dtype converts
  # counted): the same model FLOPs whatever the variant.
  with flat.unlocked():
    flat.update(scan_layers=False, remat=False, attention_impl='einsum', dtype='float32')
  graphdef, state = info.abstract_model(flat, classes)
  total = 0.0
  for name, ds in config.datasets.items():
    total += ds.batch_size * info.xla_macs(graphdef, state, info.input_shape(ds), name)
  return 3 * 2 * total


def _random_batch(config, mesh, rules, seed=0):
  rng = np.random.default_rng(seed)
  local = {}
  for name, ds in config.datasets.items():
    b = ds.batch_size // jax.process_count()
    local[name] = {'inputs': rng.standard_normal((b, *info.input_shape(ds)), np.float32),
                   'label': rng.integers(0, 2, (b,), np.int32)}
  return sharding.global_batch(local, mesh, rules)


def measure(config, *, steps: int = 5, warmup: int = 2, with_data: bool = False) -> dict:
  """Compiles and times config's train step; returns the row (see the module docstring)."""
  config_lib.validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
  if with_data:  # A missing dataset fails here, before the compile.
    data_dir, _ = run_lib.dataset_infos(config)
  classes = run_lib.num_classes(config)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_tuple(config.sharding_rules)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    train_step, spec, tx = _train_step(config, classes, mesh, rules)
    state = state_lib.init_state(config.model, classes, spec, tx, mesh, config.seed)
    batch = _random_batch(config, mesh, rules)
    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    times = []
    for i in range(warmup + steps):
      start = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      if i >= warmup:
        times.append(time.perf_counter() - start)
    loop = _time_loop(config, compiled, state, batch, data_dir, mesh, rules, steps, max(warmup, 1)
                      ) if with_data else {}
  step_s = statistics.median(times)
  examples = sum(ds.batch_size for ds in config.datasets.values())
  tokens = sum(ds.batch_size * sum(info.token_counts(config.model, info.input_shape(ds))[k]
                                   for k in ('total', 'class_tokens'))
               for ds in config.datasets.values())
  flops = model_flops_per_step(config, classes)
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind)
  mem = compiled.memory_analysis()
  return dict(
      model=config.model.get('name'), attention_impl=config.model.get('attention_impl', 'auto'),
      scan_layers=bool(config.model.get('scan_layers', False)),
      remat=config.model.get('remat', False), dtype=config.model.get('dtype', 'float32'),
      batch_size=examples, compile_s=compile_s, step_s=step_s, step_s_min=min(times),
      step_s_max=max(times), steps=steps, examples_per_s=examples / step_s,
      tokens_per_s=tokens / step_s, flops_per_step=flops, flops_per_s=flops / step_s,
      gflops_per_s=flops / step_s / 1e9, device_kind=kind, platform=jax.default_backend(),
      num_devices=jax.device_count(),
      peak_flops_per_s=None if peak is None else peak * jax.device_count(),
      mfu=None if peak is None else flops / step_s / (peak * jax.device_count()),
      temp_mib=None if mem is None else mem.temp_size_in_bytes / 2**20, **loop)


def _time_loop(config, compiled, state, batch, data_dir, mesh, rules, steps, warmup) -> dict:
  """The training loop's way of stepping (no wait per step, the last result waited for), fed by
  the real pipeline through the prefetch thread, then by one random batch."""
  feed = prefetch.Prefetcher(run_lib.train_iterators(config, data_dir), lambda b: sharding.global_batch(b, mesh, rules),
                             size=config.prefetch_batches, limit=warmup + steps)
  with feed:
    state = _steps(compiled, state, lambda: next(feed), warmup)
    waited, start = feed.wait_s, time.perf_counter()
    state = _steps(compiled, state, lambda: next(feed), steps)
    loop_s = (time.perf_counter() - start) / steps
    waited = (feed.wait_s - waited) / steps
  start = time.perf_counter()
  _steps(compiled, state, lambda: batch, steps)
  device_s = (time.perf_counter() - start) / steps
  examples = sum(ds.batch_size for ds in config.datasets.values())
  return dict(loop_step_s=loop_s, device_loop_step_s=device_s,
              data_wait_frac=max(0.0, 1 - device_s / loop_s), input_wait_s=waited,
              loop_examples_per_s=examples / loop_s)


def _steps(compiled, state, next_batch, n):
  metrics = None
  for _ in range(n):
    state, metrics = compiled(state, next_batch())
  jax.block_until_ready((state, metrics))
  return state


# HBM per chip (GiB), for the compile-only check against a TPU topology.
HBM_GIB = (('TPU v6 lite', 32), ('TPU v5 lite', 16), ('TPU v5', 95), ('TPU v4', 32))


def _train_step(config, classes, mesh, rules):
  """(jitted train step, its abstract state, shardings) for config on mesh; nothing allocated."""
  spec = state_lib.model_spec(config.model, classes, mesh, rules)
  tx, schedule = optim.make_optimizer(config.optimizer, max(int(config.total_steps), 1))
  shardings = state_lib.state_shardings(spec, tx, mesh)
  step = step_lib.make_train_step(
      spec.graphdef, tx, schedule, config.datasets, classes,
      label_smoothing=config.label_smoothing, seed=config.seed, mixup_cfg=config.mixup)
  step = jax.jit(step, in_shardings=(shardings, None),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  return step, spec, tx


def topology_devices(topology: str):
  """Compile-only devices of a TPU topology, e.g. 'v5e:2x2' (libtpu needed, no TPU)."""
  import os
  from jax.experimental import topologies
  # Compiling touches no chip: other processes (tests, a training run) may hold libtpu's lockfile.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    return topologies.get_topology_desc(platform='tpu', topology_name=topology).devices
  except RuntimeError as e:
    raise RuntimeError(f'--topology={topology}: compiling for a TPU needs libtpu (pip install '
                       f'"jax[tpu]"; no TPU needed): {e}') from None


def attention_memory(topology: str, impl: str, *, batch: int, tokens: int, heads: int,
                     head_dim: int = 64) -> float:
  """GiB of temporaries one chip needs for the forward + backward of one bfloat16 attention over
  `batch` x `tokens` (batch split over the chips), compiled for a TPU topology."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  devices = topology_devices(topology)
  mesh = jax.make_mesh((len(devices),), ('data',), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))
  x = jax.ShapeDtypeStruct((batch, tokens, heads, head_dim), jax.numpy.bfloat16,
                           sharding=NamedSharding(mesh, P('data')))
  loss = lambda q, k, v: attention.dot_product_attention(  # noqa: E731
      q, k, v, impl=impl).astype(np.float32).sum()
  with jax.set_mesh(mesh), nnx.logical_axis_rules((('batch', 'data'),)):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x)
    return lowered.compile().memory_analysis().temp_size_in_bytes / 2**30


def compile_for_topology(config, topology: str) -> dict:
  """Compiles config's train step ahead of time for a TPU topology (e.g. 'v5e:2x2'; needs libtpu,
  not a TPU) and reports the memory one chip needs. The global batch is the config's.

  A program that does not fit is refused by the TPU compiler; its error states the temporaries it
  needed, which is reported (temp_gib) with fits=False and total_gib=None."""
  devices = topology_devices(topology)
  classes = run_lib.num_classes(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.rules_tuple(config.sharding_rules)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    step, spec, tx = _train_step(config, classes, mesh, rules)
    state = state_lib.abstract_state(spec, tx, mesh)
    batch = {
        name: {'inputs': jax.ShapeDtypeStruct((ds.batch_size, *info.input_shape(ds)), np.float32,
                                              sharding=sharding.batch_sharding(
                                                  mesh, rules, 1 + len(info.input_shape(ds)))),
               'label': jax.ShapeDtypeStruct((ds.batch_size,), np.int32,
                                             sharding=sharding.batch_sharding(mesh, rules, 1))}
        for name, ds in config.datasets.items()}
    start = time.perf_counter()
    try:
      mem = step.lower(state, batch).compile().memory_analysis()
      temp, args = mem.temp_size_in_bytes / 2**30, mem.argument_size_in_bytes / 2**30
      total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes) / 2**30
    except jax.errors.JaxRuntimeError as e:  # XLA:TPU refuses programs that exceed HBM
      match = re.search(r'HLO temporaries \(([\d.]+)G\)', str(e))
      if not match:
        raise
      temp, args, total = float(match.group(1)), None, None
    compile_s = time.perf_counter() - start
  kind = devices[0].device_kind
  hbm = next((g for k, g in HBM_GIB if k.lower() in kind.lower()), None)
  return dict(
      model=config.model.get('name'), attention_impl=config.model.get('attention_impl', 'auto'),
      scan_layers=bool(config.model.get('scan_layers', False)),
      remat=config.model.get('remat', False), dtype=config.model.get('dtype', 'float32'),
      topology=topology, device_kind=kind, num_devices=len(devices),
      batch_size=sum(ds.batch_size for ds in config.datasets.values()), compile_s=compile_s,
      temp_gib=temp, argument_gib=args, total_gib=total, hbm_gib=hbm,
      fits=total is not None and (hbm is None or total <= hbm))


def _fmt_row(r: dict) -> str:
  mfu = '-' if r['mfu'] is None else f"{100 * r['mfu']:.1f}%"
  return (f"{r['attention_impl']:<8}{str(r['scan_layers']):<6}{str(r['remat']):<7}{r['dtype']:<10}"
          f"{r['compile_s']:>9.1f}{1000 * r['step_s']:>10.1f}{r['examples_per_s']:>10.1f}"
          f"{r['tokens_per_s']:>12.0f}{r['flops_per_step'] / 1e9:>12.2f}{r['gflops_per_s']:>10.1f}"
          f"{mfu:>7}"
          + ('' if 'loop_step_s' not in r else
             f"{1000 * r['loop_step_s']:>13.1f}{1000 * r['device_loop_step_s']:>15.1f}"
             f"{100 * r['data_wait_frac']:>8.0f}%"))


HEADER = (f"{'attn':<8}{'scan':<6}{'remat':<7}{'dtype':<10}{'compile_s':>9}{'step_ms':>10}"
          f"{'ex/s':>10}{'tokens/s':>12}{'GFLOP/step':>12}{'GFLOP/s':>10}{'MFU':>7}")


# --with_data: the loop with the real pipeline, the same loop on one random batch, and the share
# of the step spent waiting for data.
DATA_HEADER = f"{'data_loop_ms':>13}{'random_loop_ms':>15}{'wait':>9}"


TOPOLOGY_HEADER = (f"{'attn':<8}{'scan':<6}{'remat':<7}{'dtype':<10}{'compile_s':>9}"
                   f"{'temp_GiB':>10}{'total_GiB':>11}{'HBM_GiB':>9}  fits")


def _fmt_topology_row(r: dict) -> str:
  total = '-' if r['total_gib'] is None else f"{r['total_gib']:.2f}"
  return (f"{r['attention_impl']:<8}{str(r['scan_layers']):<6}{str(r['remat']):<7}{r['dtype']:<10}"
          f"{r['compile_s']:>9.1f}{r['temp_gib']:>10.2f}{total:>11}{str(r['hbm_gib']):>9}  "
          f"{'yes' if r['fits'] else 'NO'}")


def run(config_path: str, *, steps: int = 5, warmup: int = 2, as_json: bool = False,
        batch_size: int | None = None, topology: str | None = None, with_data: bool = False,
        **options) -> list[dict]:
  """One row per variant: timed on the local devices, or with `topology` compiled for it only."""
  if steps < 1:
    raise ValueError(f'--steps={steps}: time at least one step.')
  if topology and with_data:
    raise ValueError('--with_data runs the loop here; --topology only compiles: use one of them.')
  rows = []
  for variant in variants(options):
    config = config_lib.load(config_path)
    with config.unlocked():
      for key, value in variant.items():
        config.model[key] = value
      if batch_size is not None:
        for ds in config.datasets.values():
          ds.batch_size = batch_size
    row = (compile_for_topology(config, topology) if topology else
           measure(config, steps=steps, warmup=warmup, with_data=with_data))
    rows.append(row)
    if as_json:
      print(json.dumps(row), flush=True)
      continue
    if len(rows) == 1 and topology:
      print(f"{row['model']} compiled for {topology} ({row['num_devices']} x {row['device_kind']}), "
            f"global batch {row['batch_size']}; memory per chip:\n{TOPOLOGY_HEADER}", flush=True)
    elif len(rows) == 1:
      print(f"{row['model']} on {row['num_devices']} x {row['device_kind']} ({row['platform']}), "
            f"batch {row['batch_size']}, median of {steps} steps after {warmup}:\n{HEADER}"
            + (DATA_HEADER if with_data else ''), flush=True)
    print((_fmt_topology_row if topology else _fmt_row)(row), flush=True)
  return rows


def main(argv=None):
  import argparse
  parser = argparse.ArgumentParser(prog='python -m sparse_tubes.bench step', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True)
  parser.add_argument('--steps', type=int, default=5, help='timed steps (the median is reported)')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after the compile')
  parser.add_argument('--batch_size', type=int, default=None,
                      help='global batch of every dataset (default: the config\'s)')
  parser.add_argument('--json', action='store_true', help='one JSON object per row')
  parser.add_argument('--with_data', action='store_true',
                      help="also run the loop on the config's input pipeline (prefetched, as "
                      "`train` does) and report how much of each step waits for data")
  parser.add_argument('--topology', default=None,
                      help="compile only, for this TPU topology (e.g. v5e:2x2; needs libtpu, not a "
                      "TPU), and report the memory per chip")
  for key in COMPARE:
    parser.add_argument(f'--{key}', default=None,
                        help=f'config.model.{key}; a comma-separated list compares them')
  args = parser.parse_args(argv)
  run(args.config, steps=args.steps, warmup=args.warmup, as_json=args.json,
      batch_size=args.batch_size, topology=args.topology, with_data=args.with_data,
      **{k: getattr(args, k) for k in COMPARE})


def main_attention(argv=None):
  """`bench attention`: temporaries of one attention's forward + backward per chip, per kernel."""
  import argparse
  parser = argparse.ArgumentParser(prog='python -m sparse_tubes.bench attention')
  parser.add_argument('--topology', default='v5e:2x2')
  parser.add_argument('--tokens', default='3137,12544')
  parser.add_argument('--heads', type=int, default=16)
  parser.add_argument('--head_dim', type=int, default=64)
  parser.add_argument('--batch', type=int, default=None, help='global batch (default: one per chip)')
  parser.add_argument('--attention_impl', default='xla,splash')
  args = parser.parse_args(argv)
  impls = args.attention_impl.split(',')
  batch = args.batch or len(topology_devices(args.topology))
  print(f'bfloat16 attention forward + backward, {args.heads} heads x {args.head_dim}, global batch '
        f'{batch}, compiled for {args.topology}: GiB of temporaries per chip')
  print(f"{'tokens':>8}" + ''.join(f'{i:>10}' for i in impls))
  for tokens in (int(t) for t in args.tokens.split(',')):
    gib = [attention_memory(args.topology, i, batch=batch, tokens=tokens, heads=args.heads,
                            head_dim=args.head_dim) for i in impls]
    print(f'{tokens:>8}' + ''.join(f'{g:>10.3g}' for g in gib), flush=True)
