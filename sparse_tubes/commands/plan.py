"""`plan`: will this config fit that TPU slice, and how fast could it go? Answered on a CPU machine.

  python -m sparse_tubes plan --config=configs/kinetics400/tubevit_b.py --topology=v5e:4x4 [--json]

The real train step (and eval step) is compiled ahead of time for the slice: libtpu (the `[tpu]`
extra) describes the slice's chips without owning them (jax.experimental.topologies), and the step
is built by the code `train` runs (state.py, step.py, sharding.py) with the config's mesh, sharding
rules, dtype, remat, scan and micro-batches. Reported per chip:
  params, optimizer   the state's shards (the arrays' shard shapes)
  temporaries         XLA's compiled memory analysis: activations, gradients, collectives' buffers
  peak                state + batch + outputs not aliased to the donated state + temporaries,
                      against the chip's HBM. When the temporaries alone exceed it, the TPU compiler
                      refuses the program and says how much it needed: that figure is reported.
FLOPs per step are counted analytically (`info`'s per-part count, training = 3x forward: the
backward pass costs two forwards), since XLA cannot see inside custom kernels; the compiler's own
estimate ('optimal_seconds' of its cost analysis) is shown where it gives one. Step times at 40%
and 60% MFU use the chip's peak bf16 rate (sparse_tubes/chips.py).

--quick compiles with XLA's lowest run-time optimisation effort: about 5x faster on the paper
configs, peak memory per chip within 7% of the full compile there, mostly below it
(sparse_tubes/aot.py says what was compared). For iterating on a config; confirm the final one with
a full plan.

Several slices (--num_slices=N, docs/multislice.md): the step is compiled for N such slices joined
over the data-centre network (DCN), with config.mesh.slices=N (the data axis spans the slices), and
the report adds the bytes each chip sends across slices per step (read from the compiled program)
and the time they take at --dcn_gbps, next to the compute time at 40% MFU: DCN-bound or not.
"""
import collections
import functools
import json
import math
import re
import time

from sparse_tubes import aot

GIB = aot.GIB
# DCN bandwidth per chip, Gbit/s: v5e's published figures, 6.4 Tbps of data-centre network per
# 256-chip pod, i.e. two 100 Gbps NICs per 8-chip host (Cloud TPU docs, "TPU v5e").
DCN_GBPS = 25.0

# Cross-slice (DCN) traffic of a compiled multislice program. The TPU compiler splits the program
# per slice: collectives inside a slice keep slice-local replica groups, and each cross-slice part
# becomes a host transfer to the MegaScale runtime, a `send` whose frontend attributes name it
# (_xla_megascale_transfer_type="ALL_REDUCE", ...). The buffer of each such send is what one chip
# hands to the DCN for that collective; sends inside loops (micro-batches, scanned layers) count once
# per iteration.
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
                'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}
_COMPUTATION = re.compile(r'^(ENTRY )?%?([\w.-]+) \(.*\{\s*$')
_DCN_SEND = re.compile(r'= \((\w+)\[([\d,]*)\]\S* .*\bsend\(.*_xla_megascale_transfer_type="(\w+)"')
_WHILE = re.compile(r'\bwhile\(.*condition=%([\w.-]+), body=%([\w.-]+)')
_CALLEE = re.compile(r'(?:calls|to_apply|true_computation|false_computation)=%([\w.-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')
# Bytes a chip puts on the DCN per byte of a transfer's buffer, S slices, ring algorithms: an
# all-reduce is a reduce-scatter and an all-gather, each moving (S-1)/S of the buffer; an all-gather
# sends the local part to the S-1 others.
DCN_TRAFFIC = {'ALL_REDUCE': lambda s: 2 * (s - 1) / s, 'REDUCE_SCATTER': lambda s: (s - 1) / s,
               'ALL_GATHER': lambda s: s - 1}


def dcn_transfers(hlo_text: str) -> tuple[dict[str, int], int]:
  """{transfer type: buffer bytes per chip per step} of the compiled HLO's cross-slice sends, and
  how many loops had a trip count this could not read (their sends are then counted once)."""
  computations, name, entry = {}, None, None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      name, entry = m.group(2), (m.group(2) if m.group(1) else entry)
      computations[name] = []
    elif name is not None and line.startswith(' '):
      computations[name].append(line)
  unknown = set()

  def trip_count(condition: str) -> int | None:
    # jax's loops (scan, fori_loop) count up from 0 while `i < N`: N is the condition's constant.
    lines = computations.get(condition, ())
    constants = [int(c) for l in lines for c in re.findall(r'\bconstant\((\d+)\)', l)]
    lt = any('direction=LT' in l for l in lines)
    return constants[0] if lt and len(constants) == 1 else None

  @functools.cache
  def sent(computation: str) -> collections.Counter:
    out = collections.Counter()
    for line in computations.get(computation, ()):
      send = _DCN_SEND.search(line)
      if send:
        dtype, dims, kind = send.groups()
        out[kind] += math.prod(int(d) for d in dims.split(',') if d) * _DTYPE_BYTES[dtype]
        continue
      loop = _WHILE.search(line)
      if loop:
        callees = [(loop.group(2), trip_count(loop.group(1)))]
      else:
        callees = [(c, 1) for c in _CALLEE.findall(line)] + [
            (c, 1) for b in _BRANCHES.findall(line) for c in re.findall(r'%([\w.-]+)', b)]
      for callee, times in callees:
        if times is None:
          unknown.add(callee)
        for kind, n in sent(callee).items():
          out[kind] += n * (times or 1)
    return out

  return dict(sent(entry)), len(unknown)


def _advice(result, config) -> list[str]:
  """Which knob helps, and roughly by how much, when the step does not fit."""
  over = result['hbm_per_chip_gib'] - result['hbm_capacity_gib']
  out = [f'needs {over:.2f} GiB more per chip than the {result["hbm_capacity_gib"]:g} GiB of HBM.']
  temp, state = result['temp_gib'], result['params_gib'] + result['optimizer_gib']
  m = int(config.microbatches)
  batches = [ds.batch_size for ds in config.datasets.values()]
  if temp > over and all(b % (2 * m) == 0 for b in batches):
    out.append(f'config.microbatches={2 * m} roughly halves the activations ({temp:.2f} GiB of '
               f'temporaries now); more splits cut further.')
  if config.model.remat in (False, 'none'):
    out.append("config.model.remat=True (or 'dots_saveable') recomputes block activations in the "
               'backward pass instead of storing them.')
  if int(config.mesh.fsdp) == 1 and state > 0.25 * over:
    out.append(f"config.mesh.fsdp=-1 with config.mesh.data=1 shards parameters and optimizer state "
               f'({state:.2f} GiB per chip now) over all chips.')
  if len(out) == 1:
    out.append('use a larger slice (more chips) or a chip with more HBM.')
  return out


def dcn_report(hlo_text: str, num_slices: int, dcn_gbps: float, compute_s: float) -> dict:
  """The --json DCN keys of a compiled train step: bytes per chip per step, their time at
  `dcn_gbps`, and whether that exceeds the compute time."""
  if num_slices == 1:
    return dict(dcn_bytes_per_step=0, dcn_seconds_per_step=0.0, dcn_by_kind={}, dcn_bound=False,
                dcn_loops_counted_once=0)
  by_kind, unknown_loops = dcn_transfers(hlo_text)
  sent = sum(n * DCN_TRAFFIC.get(k, lambda _: 1)(num_slices) for k, n in by_kind.items())
  seconds = sent * 8 / (dcn_gbps * 1e9)
  return dict(dcn_bytes_per_step=sum(by_kind.values()), dcn_seconds_per_step=seconds,
              dcn_by_kind=by_kind, dcn_bound=seconds > compute_s,
              dcn_loops_counted_once=unknown_loops)


def plan(config, topology: str | None = None, *, num_slices: int | None = None,
         dcn_gbps: float = DCN_GBPS, quick: bool = False) -> dict:
  """Compiles the train and eval steps for `topology` (default: config.topology), `num_slices` of
  it (default: config.mesh.slices), at XLA's lowest optimisation effort if `quick`; returns the
  report as a dict (the --json keys)."""
  from sparse_tubes import chips
  topology = topology or config.topology
  if not topology:
    raise ValueError('plan needs a TPU slice: --topology=v5e:4x4 (or set config.topology in the '
                     f'config). Examples: {chips.EXAMPLES}.')
  topo = chips.parse(topology)
  if num_slices is not None:
    if num_slices < 1:
      raise ValueError(f'--num_slices={num_slices} must be >= 1.')
    config = config.copy_and_resolve_references()
    config.mesh.slices = num_slices
  num_slices = int(config.mesh.slices)
  if dcn_gbps <= 0:
    raise ValueError(f'--dcn_gbps={dcn_gbps} must be > 0 (Gbit/s per chip, e.g. {DCN_GBPS:g}).')
  aot.quiet_libtpu(topo)

  import jax
  from flax import nnx

  from sparse_tubes import config as config_lib, zoo
  from sparse_tubes import validation
  from sparse_tubes.data import sources
  from sparse_tubes.models import costs
  from sparse_tubes.train import sharding, state as state_lib, step as step_lib

  devices = aot.topology_devices(topo, num_slices)
  # attention_impl='auto' resolves by the platform of the mesh's devices (models/attention.py), so
  # the TPU devices below compile what a TPU run picks: splash from 1,024 keys up, else xla.
  processes = len({d.process_index for d in devices})
  validation.validate(config, num_devices=len(devices), process_count=processes)
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.rules_tuple(config.sharding_rules)
  classes = sources.num_classes(config)
  total_steps = config_lib.total_steps(config, {
      n: zoo.TRAIN_EXAMPLES.get(ds.tfds_name, 1_000_000) for n, ds in config.datasets.items()})

  start = time.time()
  program = step_lib.build(config, classes, mesh, rules, total_steps)
  spec = program.spec
  abstract = program.abstract_state(mesh)

  def batch(ds, size, keys):
    return step_lib.abstract_batch(ds, size, mesh, rules, keys)

  train_step = program.step
  train_batch = {n: batch(ds, ds.batch_size, ('inputs', 'label')) for n, ds in config.datasets.items()}
  eval_name = (list(config.eval_datasets) or sorted(config.datasets))[0]
  eval_ds = config.datasets[eval_name]
  eval_step = jax.jit(step_lib.make_eval_step(spec.graphdef, eval_name),
                      out_shardings=sharding.replicated(mesh))
  eval_batch = batch(eval_ds, eval_ds.eval_batch_size, ('inputs', 'label', 'video_id', 'mask'))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    options = aot.QUICK if quick else None
    compiled, peak, temp = aot.compile_or_oom(train_step.lower(abstract, train_batch),
                                              (abstract, train_batch), options)
    compile_s = time.time() - start
    eval_args = (state_lib.abstract_params(spec), eval_batch)
    _, eval_peak, _ = aot.compile_or_oom(eval_step.lower(*eval_args), eval_args, options)

  cost = (compiled.cost_analysis() if compiled is not None else None) or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = costs.train_flops(config, classes)
  g = topo.generation
  examples = sum(ds.batch_size for ds in config.datasets.values())
  peak_flops = len(devices) * g.bf16_tflops * 1e12
  result = dict(
      config_topology=config.topology, topology=topo.name,
      accelerator_type=topo.accelerator_type, chips=len(devices), hosts=processes,
      num_slices=num_slices,
      mesh=dict(mesh.shape), microbatches=int(config.microbatches), dtype=config.model.dtype,
      remat=str(config.model.remat), scan_layers=bool(config.model.scan_layers),
      global_batch=examples, params=state_lib.param_count(spec.abstract_params),
      params_gib=aot.shard_bytes(abstract['params']) / GIB,
      optimizer_gib=aot.shard_bytes(abstract['opt_state']) / GIB,
      temp_gib=temp / GIB, hbm_per_chip_gib=peak / GIB, hbm_capacity_gib=float(g.hbm_gib),
      eval_hbm_per_chip_gib=eval_peak / GIB,
      flops_per_step=flops, xla_flops_per_chip=float(cost.get('flops', float('nan'))),
      compiler_step_s=(float(cost['optimal_seconds'])
                       if cost.get('optimal_seconds', -1) > 0 else None),  # < 0: no estimate
      peak_bf16_tflops_per_chip=float(g.bf16_tflops),
      step_s={f'{int(u * 100)}%_mfu': flops / (peak_flops * u) for u in (0.4, 0.6)},
      compile_s=compile_s, quick=bool(quick))
  result['examples_per_s'] = {k: examples / v for k, v in result['step_s'].items()}
  result['dcn_gbps'] = float(dcn_gbps)
  if compiled is not None:
    result.update(dcn_report(compiled.as_text(), num_slices, dcn_gbps, result['step_s']['40%_mfu']))
  else:  # not compiled (too big for the chip): nothing to read the traffic from
    result.update(dcn_bytes_per_step=None, dcn_seconds_per_step=None, dcn_by_kind={},
                  dcn_bound=None, dcn_loops_counted_once=None)
  result['fits'] = bool(result['hbm_per_chip_gib'] <= result['hbm_capacity_gib']
                        and result['eval_hbm_per_chip_gib'] <= result['hbm_capacity_gib'])
  result['advice'] = [] if result['fits'] else _advice(result, config)
  return result


def format_text(r: dict) -> str:
  fits = 'fits' if r['fits'] else 'DOES NOT FIT'
  slices = f"{r['num_slices']} x " if r['num_slices'] > 1 else ''
  lines = [
      f"{slices}{r['topology']} ({r['accelerator_type']}, {r['chips']} chips, {r['hosts']} hosts); mesh "
      f"{r['mesh']}; {r['params']:,} parameters; global batch {r['global_batch']}, "
      f"{r['microbatches']} micro-batch(es); {r['dtype']}, remat {r['remat']}, scan_layers "
      f"{r['scan_layers']}",
      f"per chip (GiB):  params {r['params_gib']:.2f}  optimizer {r['optimizer_gib']:.2f}  "
      f"temporaries {r['temp_gib']:.2f}  peak {r['hbm_per_chip_gib']:.2f} of "
      f"{r['hbm_capacity_gib']:g}  (eval {r['eval_hbm_per_chip_gib']:.2f}): {fits}",
      f"FLOPs per step {r['flops_per_step']:.3e} (analytic, 3x forward); XLA counts "
      f"{r['xla_flops_per_chip']:.3e} per chip"
      + (f"; compiler's estimate {r['compiler_step_s']:.3f} s/step" if r['compiler_step_s'] else ''),
  ]
  for k, s in r['step_s'].items():
    lines.append(f"at {k.replace('_', ' ').upper()}: {s * 1e3:.1f} ms/step, "
                 f"{r['examples_per_s'][k]:,.0f} examples/s")
  if r['num_slices'] > 1 and r['dcn_bytes_per_step'] is not None:
    compute = r['step_s']['40%_mfu']
    kinds = ', '.join(f'{k.lower().replace("_", "-")} {n / 2**20:,.1f}'
                      for k, n in sorted(r['dcn_by_kind'].items()))
    lines.append(
        f"across {r['num_slices']} slices (DCN): {r['dcn_bytes_per_step'] / 2**20:,.1f} MiB per chip per "
        f"step ({kinds}), {r['dcn_seconds_per_step'] * 1e3:.1f} ms at {r['dcn_gbps']:g} Gbit/s per "
        f"chip, against {compute * 1e3:.1f} ms of compute at 40% MFU: "
        + ('DCN-BOUND' if r['dcn_bound'] else 'not DCN-bound'))
  lines += [f'  {a}' for a in r['advice']]
  lines.append(f"(compiled in {r['compile_s']:.0f} s"
               + (", quick: peak within ~7%; confirm without --quick)" if r['quick'] else ')'))
  return '\n'.join(lines)


def run(config, *, topology: str | None = None, num_slices: int | None = None,
        dcn_gbps: float = DCN_GBPS, quick: bool = False, as_json: bool = False) -> dict:
  result = plan(config, topology, num_slices=num_slices, dcn_gbps=dcn_gbps, quick=quick)
  print(json.dumps(result, indent=2) if as_json else format_text(result), flush=True)
  return result


def main(flags, args):
  from sparse_tubes.commands import need
  run(need(flags.config, 'config', 'configs/kinetics400/tubevit_b.py'), topology=flags.topology,
      num_slices=flags.num_slices, dcn_gbps=flags.dcn_gbps, quick=flags.quick, as_json=flags.json)
