"""Input-pipeline throughput: decode + augment rate per core, against what a TPU host needs
(`bench data` of commands/bench.py; `bench step|attention|zoo` are there too).

  python -m sparse_tubes bench data --config=configs/data/kinetics400.py [--data_dir=DIR]
      [--workers=N] [--seconds=S] [--repeats=R] [--mini] [--json] [--[no]synthetic]

For every dataset of the config (at its clip size, sampling and augmentation):
  - videos: on the prepared dataset when `data_dir` holds it; with --mini (or when it is not
    prepared) on a mini release written here (8 synthetic 4 s clips at 320x240, 30 fps, h264 or vp9
    webm for SSv2) and prepared with `prepare` at the dataset's config, whose throughput is printed;
  - images: on the prepared dataset, else (or with --mini) on synthetic ImageNet-style photos (JPEG,
    sizes 500x375 to 640x480 in both orientations);
  - then, as a reference, synthetic 32x224x224 clips (JPEG frames at 256x340, 64 per video, stride 2).
The measured work is what the host does per example: decode the sampled frames, crop, flip,
RandAugment, and the uint8 -> float32 normalisation (done per batch in the pipeline).

'Per core' is one process (Grain's worker_count=0 layout) working back to back, counted in that
process's CPU seconds, so other jobs on a shared machine slow it less than wall time; it is measured
`repeats` times and reported as the median and the spread (min..max). 'Total' runs `workers` such
processes at once (the Grain worker layout) and sums their wall-clock rates.

'Required' is the per-core rate a TPU v5e host needs to keep its chips busy with the config's model
(`V5E_HOST`): a training example costs 3 forward passes of FLOPs (forward + backward), 2 FLOPs per
multiply-add, the multiply-adds from `costs.analytic_macs`. A video dataset is counted as trained
alone (the most it can need); an image dataset in the config's co-training mix, where every step
takes one batch of every dataset (`train.step`).
"""
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time

import numpy as np

from sparse_tubes import chips

# A TPU v5e host (ct5lp-hightpu-4t): 4 chips (their peak from the chip table), 112 vCPUs = 56
# physical cores; 40% of peak is a good model FLOPs utilisation for a ViT-B training step.
V5E_HOST = dict(chips=4, peak_tflops_per_chip=chips.GENERATIONS['v5e'].bf16_tflops,
                utilisation=0.4, cores=56)


def _cpu_name():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def _cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def _load() -> list:
  return [round(x, 2) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else []


# ---------------------------------------------------------------------------- what a host needs

def training_flops(model_cfg, ds_cfg) -> float:
  """FLOPs of one training example (models/costs.py, the one formula)."""
  from sparse_tubes import zoo
  from sparse_tubes.models import costs
  classes = zoo.NUM_CLASSES.get(ds_cfg.tfds_name, 1000)  # The classifier is <0.1% of the total.
  return costs.example_train_flops(model_cfg, ds_cfg, classes)


def required_per_core(cfg, host=None) -> dict:
  """{dataset: examples/s per host core} that `host` (V5E_HOST) consumes with the config's model;
  empty when the config names no model. Videos: the dataset trained alone. Images: in the
  co-training mix of all the config's datasets, one batch of each per step."""
  host = host or V5E_HOST
  if not cfg.model.name:
    return {}
  host_flops = host['chips'] * host['peak_tflops_per_chip'] * 1e12 * host['utilisation']
  flops = {n: training_flops(cfg.model, ds) for n, ds in cfg.datasets.items()}
  step_flops = sum(ds.batch_size * flops[n] for n, ds in cfg.datasets.items())
  out = {}
  for n, ds in cfg.datasets.items():
    if ds.kind == 'video':
      out[n] = host_flops / flops[n] / host['cores']
    else:
      out[n] = ds.batch_size * host_flops / step_flops / host['cores']
  return out


def _model_name(cfg) -> str:
  m = cfg.model
  if not m.name:
    return ''
  return f"{m.name} (hidden {m.hidden_size}, {m.num_layers} layers)"


# ------------------------------------------------------------------------------------ sources

class _SyntheticSource:
  """Videos of `length` JPEG frames at 256x340 (random texture panning), built once per process."""

  def __init__(self, num_videos=4, length=64, seed=0):
    import cv2
    from sparse_tubes.data import transforms
    rng = np.random.default_rng(seed)
    self.videos = []
    for v in range(num_videos):
      small = rng.integers(0, 256, (34, 44, 3), np.uint8)
      big = cv2.resize(small, (440, 256), interpolation=cv2.INTER_CUBIC)
      big = np.clip(big.astype(np.int16) + rng.integers(-20, 20, big.shape), 0, 255).astype(np.uint8)
      frames = [transforms.encode_jpeg(np.ascontiguousarray(big[:, (2 * t) % 100:(2 * t) % 100 + 340]))
                for t in range(length)]
      self.videos.append({'video': frames, 'label': v % 4, 'id': v})

  def __len__(self):
    return len(self.videos)

  def __getitem__(self, i):
    return self.videos[i]


class _SyntheticImages:
  """ImageNet-style JPEG photos: the common ImageNet sizes, both orientations, smooth texture."""
  SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (480, 640), (500, 500), (400, 500),
           (375, 500))

  def __init__(self, seed=0):
    import cv2
    from sparse_tubes.data import transforms
    rng = np.random.default_rng(seed)
    self.images = []
    for i, (h, w) in enumerate(self.SIZES):
      small = rng.integers(0, 256, (h // 12, w // 12, 3), np.uint8)
      big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
      big = np.clip(big.astype(np.int16) + rng.integers(-20, 20, big.shape), 0, 255).astype(np.uint8)
      self.images.append({'image': transforms.encode_jpeg(big), 'label': i % 4, 'id': i})

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return self.images[i]


def _source(source_args):
  """('synthetic_video',), ('synthetic_image',) or ('tfds', tfds_name, data_dir, split, kind)."""
  if source_args[0] == 'synthetic_video':
    return _SyntheticSource()
  if source_args[0] == 'synthetic_image':
    return _SyntheticImages()
  from sparse_tubes.data import builtin
  from sparse_tubes.data import pipeline
  _, tfds_name, data_dir, split, kind = source_args
  return builtin.ensure_built(tfds_name, data_dir).as_data_source(
      split, decoders={kind: pipeline.RawBytes()})


# ---------------------------------------------------------------------------------- measuring

def _spec(ds_cfg, split):
  from sparse_tubes.data import pipeline
  return pipeline.Spec.from_config(ds_cfg, split)


def _loop(args):
  """One worker: decode + augment + normalise examples for `seconds`; (examples, wall s, CPU s)."""
  spec, source_args, seconds, seed = args
  from sparse_tubes.data import pipeline
  from sparse_tubes.data import transforms
  source = _source(source_args)
  transform = pipeline.TrainTransform(spec)
  rng = np.random.default_rng(seed)
  elements = [source[i] for i in range(len(source))]
  transform.random_map(elements[0], rng)  # Warm-up.
  n, start, cpu = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - start < seconds:
    out = transform.random_map(elements[n % len(elements)], rng)
    if out is None:
      raise RuntimeError('an example failed to decode: the benchmark would measure failures')
    transforms.normalize(out['inputs'], spec.normalization)
    n += 1
  return n, time.perf_counter() - start, time.process_time() - cpu


def measure(spec, source_args, *, workers, seconds, repeats=3) -> dict:
  """Per-core rate (examples per CPU second of one process; median and spread over `repeats`),
  its wall-clock rate, and the total rate of `workers` processes at once."""
  runs = [_loop((spec, source_args, seconds, r)) for r in range(repeats)]
  per_core = [n / cpu for n, _, cpu in runs]
  alone = [n / wall for n, wall, _ in runs]
  total = statistics.median(alone)
  if workers > 1:
    ctx = multiprocessing.get_context('spawn')
    with ctx.Pool(workers) as pool:
      results = pool.map(_loop, [(spec, source_args, seconds, i) for i in range(workers)])
    total = float(np.sum([n / wall for n, wall, _ in results]))
  return dict(per_core_clips_per_s=statistics.median(per_core),
              per_core_spread=[min(per_core), max(per_core)],
              per_core_runs=[round(x, 2) for x in per_core],
              cpu_ms_per_clip=1000 / statistics.median(per_core),
              wall_clips_per_s_alone=statistics.median(alone),
              total_clips_per_s=total, workers=workers)


def _mini_release(kind, root):
  import cv2
  from sparse_tubes.data import video_io
  rng = np.random.default_rng(0)
  clips = []
  for _ in range(8):
    small = rng.integers(0, 256, (30, 40, 3), np.uint8)
    big = cv2.resize(small, (480, 240), interpolation=cv2.INTER_CUBIC)
    frames = np.stack([big[:, 2 * t % 160:2 * t % 160 + 320] for t in range(120)])
    clips.append(frames)
  os.makedirs(os.path.join(root, 'videos'))
  if kind == 'ssv2':
    labels = {f'Doing thing {k}': str(k) for k in range(4)}
    entries = [{'id': str(100 + i), 'template': f'Doing thing {i % 4}', 'label': ''}
               for i in range(8)]
    for i, frames in enumerate(clips):
      video_io.write_video(os.path.join(root, 'videos', f'{100 + i}.webm'), frames[::3], 12,
                           **{'deadline': 'realtime', 'cpu-used': '8'})  # 12 fps, like SSv2.
    for name, data in (('labels', labels), ('train', entries), ('validation', entries[:2])):
      with open(os.path.join(root, f'something-something-v2-{name}.json'), 'w') as f:
        json.dump(data, f)
  else:
    os.makedirs(os.path.join(root, 'annotations'))
    rows = ['label,youtube_id,time_start,time_end,split']
    for i, frames in enumerate(clips):
      video_io.write_video(os.path.join(root, 'videos', f'video{i:04d}_000000_000010.mp4'),
                           frames, 30)
      rows.append(f'class {i % 4},video{i:04d},0,10,train')
    for split in ('train', 'val'):
      with open(os.path.join(root, 'annotations', f'{split}.csv'), 'w') as f:
        f.write('\n'.join(rows if split == 'train' else rows[:3]) + '\n')
  return root


def _recipe(ds):
  shape = f'{ds.num_frames}x{ds.crop_size}x{ds.crop_size}' if ds.kind == 'video' else \
      f'{ds.crop_size}x{ds.crop_size}'
  sampling = f'{ds.sampling}, ' if ds.kind == 'video' else ''
  return (f'{shape}, {sampling}{ds.train_crop}, flip {bool(ds.flip)}, RandAugment '
          f'{ds.randaugment_layers}/{ds.randaugment_magnitude}, {ds.normalization}')


def _print_row(r):
  req = r.get('required_per_core_clips_per_s')
  lo, hi = r['per_core_spread']
  line = (f"  {r['source']:<44} {r['per_core_clips_per_s']:6.1f} per core ({lo:.1f}..{hi:.1f}; "
          f"{r['cpu_ms_per_clip']:.1f} CPU ms each)  {r['total_clips_per_s']:6.1f} total "
          f"({r['workers']} workers)")
  if req:
    line += f"  needs {req:.1f} per core: {r['per_core_clips_per_s'] / req:.2f}x"
  print(line, flush=True)


def _prepare_mini(base, ds, tmp, workers, quiet):
  """Writes a mini release of `base`, prepares it at the config's dataset; returns its data_dir."""
  import contextlib
  import io
  from sparse_tubes.data import prepare
  root = _mini_release(base, os.path.join(tmp, base))
  source_dir = os.path.join(tmp, 'tfds')
  start = time.perf_counter()
  with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
    report = prepare.run(ds.tfds_name, manual_dir=root, data_dir=source_dir, workers=workers)
  took = time.perf_counter() - start
  if not quiet:
    c = report['splits']['train']
    total_videos = sum(s['videos'] for s in report['splits'].values())
    total_frames = sum(s['frames'] for s in report['splits'].values())
    print(f'  prepare on the mini release: {total_videos} videos of 4 s at 320x240 in {took:.1f} s '
          f'= {total_videos / took:.2f} videos/s, {total_frames / took:.0f} output frames/s '
          f'(including process start-up and the TFDS write); train {c["written"]}/{c["videos"]}.',
          flush=True)
  return source_dir


def bench_data(config, *, data_dir=None, workers=None, seconds=3.0, repeats=3, mini=False,
               as_json=False, synthetic=True) -> list:
  """Measures every dataset of the config (a path or a ConfigDict) and, with `synthetic`, the
  reference clip sets; returns the result dicts (printed as a table, or one JSON object a line
  with `as_json`)."""
  from sparse_tubes import config as config_lib
  from sparse_tubes import defaults
  from sparse_tubes.data import builtin
  from sparse_tubes.data import prepare
  cfg = config_lib.load(config) if isinstance(config, str) else config
  workers = workers if workers is not None else (cfg.grain.worker_count or _cores())
  data_dir = builtin.resolve_data_dir(data_dir or cfg.data_dir)
  required = required_per_core(cfg)
  machine = dict(cpu=_cpu_name(), cores=_cores(), load_before=_load(),
                 python=platform.python_version())
  if not as_json:
    print(f"Machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load_before']}, "
          f"Python {machine['python']}; {workers} workers, {repeats} x {seconds:g} s per figure. "
          f"Model: {_model_name(cfg) or 'none in the config (no requirement)'}.", flush=True)
  tmp = tempfile.TemporaryDirectory(prefix='sparse_tubes_bench_')
  results = []

  def emit(r):
    r.update(machine, load_after=_load())
    results.append(r)
    if as_json:
      print(json.dumps(r), flush=True)
    else:
      _print_row(r)

  for name, ds in cfg.datasets.items():
    if not as_json:
      print(f'{name} ({ds.tfds_name}: {_recipe(ds)})', flush=True)
    prepared = False
    try:
      prepared = not mini and builtin.ensure_built(ds.tfds_name, data_dir) is not None
    except ValueError:
      pass
    base = ds.tfds_name.split('/')[0]
    if prepared:
      source, title = ('tfds', ds.tfds_name, data_dir, ds.train_split, ds.kind), ds.tfds_name
    elif ds.kind == 'image':
      source, title = ('synthetic_image',), 'synthetic ImageNet-style photos'
    elif base in prepare.DATASETS:
      source_dir = _prepare_mini(base, ds, tmp.name, workers or 1, quiet=as_json)
      source, title = ('tfds', ds.tfds_name, source_dir, ds.train_split, ds.kind), \
          f'prepared mini {ds.tfds_name}'
    else:
      if not as_json:
        print(f'  {ds.tfds_name} is not prepared in {data_dir}; skipped.')
      continue
    r = dict(dataset=name, tfds_name=ds.tfds_name, kind=ds.kind, source=f'{title}:{ds.train_split}',
             recipe=_recipe(ds), model=_model_name(cfg))
    r.update(measure(_spec(ds, ds.train_split), source, workers=workers, seconds=seconds,
                     repeats=repeats))
    if name in required:
      r['required_per_core_clips_per_s'] = required[name]
      r['margin'] = r['per_core_clips_per_s'] / required[name]
    emit(r)
  if synthetic:
    clip = defaults.dataset(tfds_name='synthetic', kind='video', num_frames=32, frame_stride=2,
                            crop_size=224, min_resize=256, max_resize=320, flip=True)
    if not as_json:
      print('reference: synthetic 32x224x224 clips (JPEG frames at 256x340)', flush=True)
    for title, extra in (('synthetic clips, jitter + crop + flip', {}),
                         ('synthetic clips, + RandAugment 2/9',
                          dict(randaugment_layers=2, randaugment_magnitude=9)),
                         ('synthetic clips, random-resized crop', dict(train_crop='random_resized'))):
      ds = defaults.dataset(**{**clip.to_dict(), **extra})
      r = dict(dataset='synthetic', tfds_name='synthetic', kind='video', source=title,
               recipe=_recipe(ds), model='')
      r.update(measure(_spec(ds, 'train'), ('synthetic_video',), workers=workers, seconds=seconds,
                       repeats=repeats))
      emit(r)
  tmp.cleanup()
  return results
