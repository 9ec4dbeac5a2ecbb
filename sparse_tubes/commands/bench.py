"""`bench`: the train step (compile time, step time, throughput, FLOP/s, MFU), attention memory
per TPU chip, and the input pipeline's throughput.

  python -m sparse_tubes bench step --config=CONFIG.py[:arg] [--steps=N] [--warmup=W] [--json]
      [--batch_size=B] [--attention_impl=einsum,xla] [--scan_layers=false,true]
      [--remat=none,full] [--dtype=float32,bfloat16] [--topology=v5e:2x2] [--with_data]
      [--config.field=value ...]
  python -m sparse_tubes bench attention --topology=v5e:2x2 [--tokens=3137,12544] [--heads=16]
      [--batch=4] [--attention_impl=xla,splash]
  python -m sparse_tubes bench data --config=configs/data/kinetics400.py [...] (data/throughput.py)
  python -m sparse_tubes bench zoo [--tiny] [--batch_size=8] [--steps=N] [--json] [--with_torch]
      [--dtype=bfloat16] [--remat=none] [--scan_layers=false] [--attention_impl=auto]

`bench zoo` runs `bench step` for every Kinetics-400 paper config (--tiny: the synthetic tiny
configs, for a CPU) at --batch_size (halved until it fits), data parallel over the local devices,
and prints one table: step time, examples/s, FLOPs, MFU, peak memory and the attention kernel each
attention resolved to (attention_impl=auto picks per platform and shape). --with_torch also runs
scripts/bench_hf_torch.py (HF TimeSformer-B and ViViT-B M1, eager and torch.compile, same batch and
bf16 autocast) first, and prints how our step compares.

The step `train` runs (train/step.py:build: model, loss, optimizer update with frozen parameters,
micro-batches, the non-finite guard, sharding over all local devices) runs on
random inputs of each dataset's shape: no input pipeline, so this is the device-side ceiling. Each
comparison option takes a comma-separated list; every combination is one row of the table.

  compile_s       lowering + XLA compile of the step
  step_s          median of `steps` timed steps after `warmup` untimed ones (each waited for)
  examples_per_s  examples of all datasets per step / step_s; tokens_per_s likewise
  flops_per_step  model FLOPs of the step (models/costs.py:train_flops, the formula `plan` uses):
                  3 x forward, forward = 2 x the analytic multiply-adds, so every variant, kernel
                  and backend counts the same
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
import statistics
import time

import jax
import numpy as np
from flax import nnx

from sparse_tubes import aot, chips
from sparse_tubes import config as config_lib
from sparse_tubes import validation
from sparse_tubes.data import sources
from sparse_tubes.models import attention, costs
from sparse_tubes.train import prefetch, sharding, step as step_lib

COMPARE = ('attention_impl', 'scan_layers', 'remat', 'dtype')


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


def _random_batch(config, mesh, rules, seed=0):
  rng = np.random.default_rng(seed)
  local = {}
  for name, ds in config.datasets.items():
    b = ds.batch_size // jax.process_count()
    local[name] = {'inputs': rng.standard_normal((b, *costs.input_shape(ds)), np.float32),
                   'label': rng.integers(0, 2, (b,), np.int32)}
  return sharding.global_batch(local, mesh, rules)


def measure(config, *, steps: int = 5, warmup: int = 2, with_data: bool = False) -> dict:
  """Compiles and times config's train step; returns the row (see the module docstring)."""
  validation.validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
  if with_data:  # A missing dataset fails here, before the compile.
    data_dir, _ = sources.dataset_infos(config)
  classes = sources.num_classes(config)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_tuple(config.sharding_rules)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    program = step_lib.build(config, classes, mesh, rules, max(int(config.total_steps), 1))
    state = program.init_state(config, classes, mesh)
    batch = _random_batch(config, mesh, rules)
    start = time.perf_counter()
    with attention.recording_choices() as kernels:   # what each attention of the step resolved to
      compiled = program.compile(state, batch)
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
  tokens = sum(ds.batch_size * sum(costs.token_counts(config.model, costs.input_shape(ds))[k]
                                   for k in ('total', 'class_tokens'))
               for ds in config.datasets.values())
  flops = costs.train_flops(config, classes)
  kind = jax.devices()[0].device_kind
  peak = chips.peak_flops(kind)
  mem = compiled.memory_analysis()
  return dict(
      model=config.model.name, attention_impl=config.model.attention_impl,
      scan_layers=bool(config.model.scan_layers), remat=config.model.remat, dtype=config.model.dtype,
      batch_size=examples, compile_s=compile_s, step_s=step_s, step_s_min=min(times),
      step_s_max=max(times), steps=steps, examples_per_s=examples / step_s,
      tokens_per_s=tokens / step_s, flops_per_step=flops, flops_per_s=flops / step_s,
      gflops_per_s=flops / step_s / 1e9, device_kind=kind, platform=jax.default_backend(),
      num_devices=jax.device_count(),
      peak_flops_per_s=None if peak is None else peak * jax.device_count(),
      mfu=None if peak is None else flops / step_s / (peak * jax.device_count()),
      temp_mib=None if mem is None else mem.temp_size_in_bytes / 2**20,
      peak_gib=_peak_gib(mem), attention_kernels=sorted(kernels), **loop)


def _peak_gib(mem) -> float | None:
  """Device memory the run peaked at: the allocator's own figure where the backend keeps one (GPU,
  TPU), else the compiled step's arguments + outputs + temporaries (CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**30
  return None if mem is None else aot.peak_bytes(mem) / 2**30


def _time_loop(config, compiled, state, batch, data_dir, mesh, rules, steps, warmup) -> dict:
  """The training loop's way of stepping (no wait per step, the last result waited for), fed by
  the real pipeline through the prefetch thread, then by one random batch."""
  feed = prefetch.Prefetcher(sources.train_iterators(config, data_dir), lambda b: sharding.global_batch(b, mesh, rules),
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


def _devices(topology: str):
  """Compile-only devices of a TPU topology, e.g. 'v5e:2x2' (libtpu needed, no TPU)."""
  topo = chips.parse(topology)
  aot.quiet_libtpu(topo)
  return aot.topology_devices(topo)


def attention_memory(topology: str, impl: str, *, batch: int, tokens: int, heads: int,
                     head_dim: int = 64) -> float:
  """GiB of temporaries one chip needs for the forward + backward of one bfloat16 attention over
  `batch` x `tokens` (batch split over the chips), compiled for a TPU topology."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  devices = _devices(topology)
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
  devices = _devices(topology)
  classes = sources.num_classes(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.rules_tuple(config.sharding_rules)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    program = step_lib.build(config, classes, mesh, rules, max(int(config.total_steps), 1))
    state = program.abstract_state(mesh)
    batch = {name: step_lib.abstract_batch(ds, ds.batch_size, mesh, rules)
             for name, ds in config.datasets.items()}
    start = time.perf_counter()
    compiled, total, temp = aot.compile_or_oom(program.step.lower(state, batch), (state, batch))
    compile_s = time.perf_counter() - start
  temp, args = temp / 2**30, aot.shard_bytes((state, batch)) / 2**30
  total = total / 2**30 if compiled is not None else None
  kind = devices[0].device_kind
  hbm = chips.hbm_gib(kind)
  return dict(
      model=config.model.name, attention_impl=config.model.attention_impl,
      scan_layers=bool(config.model.scan_layers), remat=config.model.remat, dtype=config.model.dtype,
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


def _copy(config):
  """An unlocked copy of a (locked) config, for one variant."""
  import ml_collections
  return ml_collections.ConfigDict(config.to_dict())


def run(config, *, steps: int = 5, warmup: int = 2, as_json: bool = False,
        batch_size: int | None = None, topology: str | None = None, with_data: bool = False,
        **options) -> list[dict]:
  """One row per variant: timed on the local devices, or with `topology` compiled for it only."""
  if steps < 1:
    raise ValueError(f'--steps={steps}: time at least one step.')
  if topology and with_data:
    raise ValueError('--with_data runs the loop here; --topology only compiles: use one of them.')
  rows = []
  for variant in variants(options):
    cfg = _copy(config_lib.load(config) if isinstance(config, str) else config)
    for key, value in variant.items():
      cfg.model[key] = value
    if batch_size is not None:
      for ds in cfg.datasets.values():
        ds.batch_size = batch_size
    cfg.lock()
    row = (compile_for_topology(cfg, topology) if topology else
           measure(cfg, steps=steps, warmup=warmup, with_data=with_data))
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


def attention_table(*, topology: str, tokens: str, heads: int, head_dim: int, batch: int | None,
                    impls: str) -> None:
  """`bench attention`: temporaries of one attention's forward + backward per chip, per kernel."""
  impls = impls.split(',')
  batch = batch or len(_devices(topology))
  print(f'bfloat16 attention forward + backward, {heads} heads x {head_dim}, global batch '
        f'{batch}, compiled for {topology}: GiB of temporaries per chip')
  print(f"{'tokens':>8}" + ''.join(f'{i:>10}' for i in impls))
  for n in (int(t) for t in tokens.split(',')):
    gib = [attention_memory(topology, i, batch=batch, tokens=n, heads=heads, head_dim=head_dim)
           for i in impls]
    print(f'{n:>8}' + ''.join(f'{g:>10.3g}' for g in gib), flush=True)


def _configs_dir() -> str:
  """configs/ of this checkout (beside the package), else of the working directory."""
  import os
  here = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__)))), 'configs')
  return here if os.path.isdir(here) else 'configs'


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def zoo_config(path: str, *, batch_size: int, **model):
  """A paper config as `bench zoo` runs it on the local devices: data parallel over them, one
  micro-batch, `batch_size` examples of each dataset, the model run-time keys given."""
  cfg = _copy(config_lib.load(path))
  cfg.mesh.update(data=-1, fsdp=1, tensor=1)
  cfg.microbatches = 1
  for ds in cfg.datasets.values():
    ds.batch_size = ds.eval_batch_size = batch_size
  for key, value in model.items():
    if value is not None:
      cfg.model[key] = value
  cfg.lock()
  return cfg


# Our paper config -> the HF PyTorch model of scripts/bench_hf_torch.py that is the same network.
TORCH_TWINS = {'kinetics400/timesformer_divst': 'timesformer', 'kinetics400/vivit_b16x2_m1': 'vivit'}


def torch_rows(*, batch_size: int, steps: int, warmup: int, tiny: bool) -> list[dict]:
  """scripts/bench_hf_torch.py's rows, run in a child process before this one touches the
  accelerator (JAX reserves most of a GPU's memory once it starts)."""
  import os
  import subprocess
  import sys
  script = os.path.join(os.path.dirname(_configs_dir()), 'scripts', 'bench_hf_torch.py')
  if not os.path.exists(script):
    raise FileNotFoundError(f'--with_torch runs {script}, which is not there: run from a checkout.')
  out = subprocess.run([sys.executable, script, '--json', f'--batch_size={batch_size}',
                        f'--steps={steps}', f'--warmup={warmup}'] + (['--tiny'] if tiny else []),
                       capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f'{script} failed: ' + out.stderr.strip().splitlines()[-1:][0])
  return [json.loads(l) for l in out.stdout.splitlines() if l.startswith('{')]


def zoo(names=None, *, tiny: bool = False, batch_size: int = 8, steps: int = 5, warmup: int = 2,
        as_json: bool = False, with_torch: bool = False, **model) -> list[dict]:
  """`bench zoo`: the train step of every Kinetics-400 paper config (with `tiny`, the synthetic tiny
  configs, for a CPU) on the local accelerator, one row each. A batch that does not fit is halved
  until it does (the largest batch that fits, at most `batch_size`); a config that fails otherwise
  gets a row with its error instead of ending the table."""
  import os
  from sparse_tubes import zoo as zoo_lib
  names = names or (zoo_lib.SYNTHETIC_TINY if tiny else zoo_lib.KINETICS400_PAPER)
  torch = (torch_rows(batch_size=batch_size, steps=steps, warmup=warmup, tiny=tiny)
           if with_torch else [])
  rows = []
  if not as_json:
    print(f"{'config':<26}{'batch':>6}{'step_ms':>10}{'ex/s':>9}{'TFLOP/step':>12}"
          f"{'TFLOP/s':>9}{'MFU':>7}{'peak_GiB':>10}{'compile_s':>10}  attention", flush=True)
  for name in names:
    path = os.path.join(_configs_dir(), name + '.py')
    batch, row = batch_size, None
    while row is None:
      try:
        row = measure(zoo_config(path, batch_size=batch, **model), steps=steps, warmup=warmup)
      except Exception as e:  # noqa: BLE001 - one row per config, whatever happens
        if _is_oom(e) and batch > 1:
          batch //= 2
          continue
        lines = [l for l in str(e).splitlines() if l.strip()] or [type(e).__name__]
        row = dict(error=f'{type(e).__name__}: {lines[0][:300]}')
    row = dict(config=name, batch=batch, **row)
    rows.append(row)
    if as_json:
      print(json.dumps(row), flush=True)
    elif 'error' in row:
      print(f"{name:<26}{batch:>6}  FAILED: {row['error']}", flush=True)
    else:
      mfu = '-' if row['mfu'] is None else f"{100 * row['mfu']:.1f}%"
      peak = '-' if row['peak_gib'] is None else f"{row['peak_gib']:.1f}"
      kernels = ','.join(row['attention_kernels']) or '-'
      print(f"{name:<26}{batch:>6}{1e3 * row['step_s']:>10.1f}{row['examples_per_s']:>9.1f}"
            f"{row['flops_per_step'] / 1e12:>12.3f}{row['flops_per_s'] / 1e12:>9.1f}{mfu:>7}"
            f"{peak:>10}{row['compile_s']:>10.1f}  {kernels}", flush=True)
  for r in torch:   # The same networks in PyTorch, and how our step compares at the same batch.
    ours = next((x for x in rows if TORCH_TWINS.get(x.get('config')) == r['model'] and 'step_s' in x
                 and x['batch'] == r['batch_size']), None)
    r['speedup_of_ours'] = None if ours is None else r['step_s'] / ours['step_s']
    rows.append(r)
    if as_json:
      print(json.dumps(r), flush=True)
    else:
      vs = '' if ours is None else f"  ours ({ours['config']}) is {r['speedup_of_ours']:.2f}x as fast"
      print(f"HF {r['model']:<23}{r['batch_size']:>6}{1e3 * r['step_s']:>10.1f}"
            f"{r['examples_per_s']:>9.1f}  torch {r['torch']} {r['mode']}{vs}", flush=True)
  return rows


SUBCOMMANDS = ('step', 'attention', 'data', 'zoo')


def main(flags, args):
  from absl import app
  from sparse_tubes.commands import need
  if len(args) != 1 or args[0] not in SUBCOMMANDS:
    raise app.UsageError(f'bench takes one of {SUBCOMMANDS}, e.g. `bench step --config=...`; got '
                         f'{args or "none"}.')
  if args[0] == 'attention':
    attention_table(topology=flags.topology or 'v5e:2x2', tokens=flags.tokens, heads=flags.heads,
                    head_dim=flags.head_dim, batch=flags.batch,
                    impls=flags.attention_impl or 'xla,splash')
    return
  if args[0] == 'zoo':
    zoo(tiny=flags.tiny, batch_size=flags.batch_size or 8, steps=flags.steps,
        warmup=flags.warmup, as_json=flags.json, with_torch=flags.with_torch,
        **{k: flags[k].value for k in COMPARE})
    return
  config = need(flags.config, 'config', 'configs/synthetic/tubevit_tiny.py')
  if args[0] == 'data':
    from sparse_tubes.data import throughput
    throughput.bench_data(config, data_dir=flags.data_dir, workers=flags.workers,
                          seconds=flags.seconds, repeats=flags.repeats, mini=flags.mini,
                          as_json=flags.json,
                          synthetic=not flags.json if flags.synthetic is None else flags.synthetic)
    return
  if flags.steps < 1:
    raise app.UsageError(f'--steps={flags.steps}: time at least one step.')
  run(config, steps=flags.steps, warmup=flags.warmup, as_json=flags.json,
      batch_size=flags.batch_size, topology=flags.topology, with_data=flags.with_data,
      **{k: flags[k].value for k in COMPARE})
