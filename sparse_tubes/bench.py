"""Input-pipeline benchmark: decode + augment throughput per worker and in total.
(`bench step` and `bench attention` are the train-step and attention-memory benchmarks: bench_step.py.)

  python -m sparse_tubes.bench data --config=configs/data/kinetics400.py [--data_dir=DIR]
      [--workers=N] [--seconds=S] [--mini]

For every video dataset of the config (at its clip size, sampling and augmentation):
  - on the prepared dataset when `data_dir` holds it; with --mini (or when it is not prepared) on a
    mini release written here (8 synthetic 4 s clips at 320x240, 30 fps, h264 or vp9 webm for SSv2)
    and prepared with `prepare` at the dataset's config, whose throughput is printed too;
  - on a synthetic set of 32x224x224 clips (JPEG frames at 256x340, 64 per video, stride 2).
'Per worker' is one process decoding and augmenting clips back to back; 'total' runs `workers`
such processes at once (the Grain worker layout) and sums their rates. Batching and normalisation
(one float conversion per batch) are not included.
"""
import argparse
import multiprocessing
import os
import platform
import sys
import tempfile
import time

import numpy as np


def _cpu_name():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


class _SyntheticSource:
  """Videos of `length` JPEG frames at 256x340 (random texture panning), built once per process."""

  def __init__(self, num_videos=4, length=64, seed=0):
    from sparse_tubes.data import transforms
    rng = np.random.default_rng(seed)
    self.videos = []
    for v in range(num_videos):
      small = rng.integers(0, 256, (34, 44, 3), np.uint8)
      import cv2
      big = cv2.resize(small, (440, 256), interpolation=cv2.INTER_CUBIC)
      big = np.clip(big.astype(np.int16) + rng.integers(-20, 20, big.shape), 0, 255).astype(np.uint8)
      frames = [transforms.encode_jpeg(np.ascontiguousarray(big[:, (2 * t) % 100:(2 * t) % 100 + 340]))
                for t in range(length)]
      self.videos.append({'video': frames, 'label': v % 4, 'id': v})

  def __len__(self):
    return len(self.videos)

  def __getitem__(self, i):
    return self.videos[i]


def _spec(ds_cfg, split):
  from sparse_tubes.data import pipeline
  return pipeline._Spec.from_config(ds_cfg, split)  # pylint: disable=protected-access


def _loop(args):
  """One worker: decode + augment clips for `seconds`; returns (clips, seconds)."""
  spec, source_args, seconds, seed = args
  from sparse_tubes.data import pipeline
  if source_args is None:
    source = _SyntheticSource()
  else:
    from sparse_tubes.data import builtin
    tfds_name, data_dir, split = source_args
    source = builtin.ensure_built(tfds_name, data_dir).as_data_source(
        split, decoders={'video': pipeline.RawBytes()})
  transform = pipeline._TrainTransform(spec)  # pylint: disable=protected-access
  rng = np.random.default_rng(seed)
  elements = [source[i] for i in range(len(source))]
  transform.random_map(elements[0], rng)  # Warm-up.
  clips, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    out = transform.random_map(elements[clips % len(elements)], rng)
    if out is None:
      raise RuntimeError('a clip failed to decode: the benchmark would measure failures')
    clips += 1
  return clips, time.perf_counter() - start


def measure(spec, source_args, *, workers, seconds):
  """(ms per clip in one process, clips/s per worker when `workers` run at once, total clips/s)."""
  n, s = _loop((spec, source_args, seconds, 0))
  single_ms = 1000 * s / n
  if workers <= 1:
    return single_ms, n / s, n / s
  ctx = multiprocessing.get_context('spawn')
  with ctx.Pool(workers) as pool:
    results = pool.map(_loop, [(spec, source_args, seconds, i) for i in range(workers)])
  rates = [n / s for n, s in results]
  return single_ms, float(np.mean(rates)), float(np.sum(rates))


def _mini_release(kind, root):
  from sparse_tubes.data import video_io
  rng = np.random.default_rng(0)
  clips = []
  for i in range(8):
    small = rng.integers(0, 256, (30, 40, 3), np.uint8)
    import cv2
    big = cv2.resize(small, (480, 240), interpolation=cv2.INTER_CUBIC)
    frames = np.stack([big[:, 2 * t % 160:2 * t % 160 + 320] for t in range(120)])
    clips.append(frames)
  os.makedirs(os.path.join(root, 'videos'))
  if kind == 'ssv2':
    import json
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


def _row(title, single_ms, per_worker, total, workers):
  print(f'  {title:<44} {single_ms:8.1f} ms/clip  {1000 / single_ms:7.1f} clips/s alone  '
        f'{per_worker:7.1f} clips/s per worker  {total:7.1f} clips/s total ({workers} workers)',
        flush=True)


def bench_data(config_path, *, data_dir=None, workers=None, seconds=3.0, mini=False):
  from sparse_tubes import config as config_lib
  from sparse_tubes import defaults
  from sparse_tubes.data import builtin
  from sparse_tubes.data import prepare
  cfg = config_lib.load(config_path)
  workers = workers or cfg.grain.worker_count or os.cpu_count()
  data_dir = builtin.resolve_data_dir(data_dir or cfg.data_dir)
  print(f'Machine: {_cpu_name()}, {os.cpu_count()} cores visible, Python {platform.python_version()}'
        f'; {workers} workers, {seconds:g} s per measurement.', flush=True)
  tmp = tempfile.TemporaryDirectory(prefix='sparse_tubes_bench_')
  for name, ds in cfg.datasets.items():
    if ds.kind != 'video':
      continue
    label = f'{name} ({ds.tfds_name}, {ds.num_frames}x{ds.crop_size}x{ds.crop_size}, {ds.sampling}'
    label += f', {ds.train_crop}, RandAugment {ds.randaugment_layers}/{ds.randaugment_magnitude})'
    print(label, flush=True)
    base = ds.tfds_name.split('/')[0]
    source_dir = data_dir
    prepared = False
    try:
      prepared = not mini and builtin.ensure_built(ds.tfds_name, data_dir) is not None
    except ValueError:
      pass
    if not prepared:
      if base not in prepare.DATASETS:
        print(f'  {ds.tfds_name} is not prepared in {data_dir}; skipped.')
        continue
      root = _mini_release(base, os.path.join(tmp.name, base))
      source_dir = os.path.join(tmp.name, 'tfds')
      start = time.perf_counter()
      report = prepare.run(ds.tfds_name, manual_dir=root, data_dir=source_dir, workers=workers)
      took = time.perf_counter() - start
      c = report['splits']['train']
      total_videos = sum(s['videos'] for s in report['splits'].values())
      total_frames = sum(s['frames'] for s in report['splits'].values())
      print(f'  prepare on the mini release: {total_videos} videos of 4 s at 320x240 in {took:.1f} s '
            f'= {total_videos / took:.2f} videos/s, {total_frames / took:.0f} output frames/s '
            f'(including process start-up and the TFDS write); train {c["written"]}/{c["videos"]}.',
            flush=True)
    spec = _spec(ds, ds.train_split)
    _row(f'prepared {"mini " if not prepared else ""}{ds.tfds_name}:train',
         *measure(spec, (ds.tfds_name, source_dir, ds.train_split), workers=workers,
                  seconds=seconds), workers)
  synthetic = defaults.dataset(tfds_name='synthetic', kind='video', num_frames=32, frame_stride=2,
                               crop_size=224, min_resize=256, max_resize=320, flip=True)
  for title, extra in (('synthetic 32x224x224, jitter+crop+flip', {}),
                       ('synthetic 32x224x224, + RandAugment 2/9',
                        dict(randaugment_layers=2, randaugment_magnitude=9)),
                       ('synthetic 32x224x224, random-resized crop',
                        dict(train_crop='random_resized'))):
    spec = _spec(defaults.dataset(**{**synthetic.to_dict(), **extra}), 'train')
    _row(title, *measure(spec, None, workers=workers, seconds=seconds), workers)
  tmp.cleanup()


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] in (['step'], ['attention']):  # train step and attention memory: bench_step.py
    from sparse_tubes import bench_step
    return (bench_step.main if argv[0] == 'step' else bench_step.main_attention)(argv[1:])
  parser = argparse.ArgumentParser(prog='python -m sparse_tubes.bench', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('what', choices=['data'])
  parser.add_argument('--config', required=True)
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--workers', type=int, default=None)
  parser.add_argument('--seconds', type=float, default=3.0)
  parser.add_argument('--mini', action='store_true',
                      help='bench on mini releases even where data_dir holds the dataset')
  args = parser.parse_args(argv)
  bench_data(args.config, data_dir=args.data_dir, workers=args.workers, seconds=args.seconds,
             mini=args.mini)


if __name__ == '__main__':
  main(sys.argv[1:])
