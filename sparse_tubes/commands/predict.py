"""`python -m sparse_tubes predict`: run a checkpoint on one video file or a .npy clip batch.

  predict --workdir=DIR --input=video.mp4 [--config=CONFIG.py] [--top_k=5] [--save_logits=OUT.npy]
          [--dataset=NAME] [--step=N] [--fps=F]
  predict --workdir=DIR --input=long.mp4 --segments=SECONDS[:STRIDE] [--output=OUT.json] ...

A video file is decoded with PyAV (data/video_io.py) and cut into the eval views of the dataset
whose head is used (`eval_temporal_views` x `eval_spatial_views` clips of `num_frames` at
`frame_stride`, short side resized to `min_resize`, crops of `crop_size`, the dataset's
normalization, which `convert` sets to the one the checkpoint was trained with: exactly the
multi-view evaluation's pre-processing, data/pipeline.py); the views'
logits are averaged. A `.npy` file holds a float32 clip batch (B, T, H, W, C), already normalized,
and is fed as is (one row of logits per clip). The top classes are printed with their names
(the HF config's id2label for converted checkpoints, else the dataset's class names).

--segments cuts a long video into segments [k * STRIDE, k * STRIDE + SECONDS) (STRIDE defaults to
SECONDS), each cut into eval views as a whole video would be, and prints and writes the top classes
of each with its start and end time: OUT.json and OUT.csv (default WORKDIR/predictions/
<video>_segments.json), each written whole. The file is decoded once, front to back, and at most
one segment's frames are held (inference.segments), so a long video costs no more memory than a
segment. A last, shorter segment covers the frames after the last full one.

The input is checked before the checkpoint is read: a missing, empty or undecodable file is one
line; a video shorter than one view's frames, or smaller than its crop, is a warning (its frames
are repeated or upscaled, as in the evaluation).
"""
import csv
import io
import json
import os
import sys

import av
import jax
import numpy as np
from flax import nnx

from sparse_tubes import atomic
from sparse_tubes import config as config_lib
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes import inference
from sparse_tubes import workdir as workdir_lib
from sparse_tubes.models import tokenizers
from sparse_tubes.data import pipeline, video_io


def decode_input(path: str, ds_cfg, *, fps: float | None = None):
  """The decoded video (video_io.Decoded), or one line (ValueError) for a file that is not a video;
  warns when it is shorter than one view's frames or smaller than its crop."""
  check_input(path)
  rate = inference.decode_fps(ds_cfg, fps)
  try:
    decoded = video_io.decode_video(path, fps=rate, short_side=int(ds_cfg.min_resize))
  except video_io.VideoError as e:
    raise ValueError(f'--input={path} is not a video this can read ({e.reason}: '
                     f'{str(e.detail).splitlines()[0] if e.detail else e.reason}).') from None
  with av.open(path, metadata_errors='ignore') as container:  # The size before resizing.
    stream = container.streams.video[0]
    height, width = stream.codec_context.height, stream.codec_context.width
  need = int(ds_cfg.num_frames) * int(ds_cfg.frame_stride)
  problems = []
  if len(decoded.frames) < need:
    problems.append(f'{len(decoded.frames)} frames at {decoded.fps:g} fps, one view takes '
                    f'num_frames x frame_stride = {need} (frames are repeated)')
  if min(height, width) < int(ds_cfg.crop_size):
    problems.append(f'{height}x{width} pixels, smaller than the '
                    f'{ds_cfg.crop_size}x{ds_cfg.crop_size} crop (upscaled)')
  if problems:
    print(f'Warning: {path}: ' + '; '.join(problems) + '; the predictions may be poor.',
          file=sys.stderr, flush=True)
  return decoded


def video_views(path: str, ds_cfg, *, fps: float | None = None, decoded=None) -> np.ndarray:
  """(views, T, H, W, C) float32 eval views of a video file, in the order the evaluation uses."""
  decoded = decoded or decode_input(path, ds_cfg, fps=fps)
  return pipeline.video_eval_views(ds_cfg, decoded.frames)


def check_input(path: str) -> None:
  """FileNotFoundError / ValueError, one line, for an input that is missing, empty or a folder."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'--input={path} does not exist.')
  if os.path.isdir(path):
    raise ValueError(f'--input={path} is a directory: give one video file or a .npy clip batch.')
  if os.path.getsize(path) == 0:
    raise ValueError(f'--input={path} is empty (0 bytes).')


def load_clips(path: str) -> np.ndarray:
  """A .npy clip batch, checked before any model is built: finite, already normalized."""
  check_input(path)
  try:
    x = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f'--input={path} is not a readable .npy array ({e}).') from None
  if x.ndim not in (4, 5):
    raise ValueError(f'{path}: expected a clip batch (B, T, H, W, C) (or images (B, H, W, C)), '
                     f'got shape {x.shape}.')
  x, raw = x.astype(np.float32), x.dtype == np.uint8
  if not np.isfinite(x).all():
    raise ValueError(f'{path}: {int((~np.isfinite(x)).sum())} values are NaN or Inf; give finite '
                     'clips.')
  if raw or (x.size and np.abs(x).max() > 10):  # Normalized clips lie in [-1, 1] or about [-3, 3].
    raise ValueError(f'{path} holds raw pixels ({x.dtype if not raw else "uint8"}, up to '
                     f'{x.max():g}): a .npy input is fed as is, so normalize it as the dataset did '
                     "(config.datasets.<name>.normalization; 'minus_one_to_one' is x / 127.5 - 1), "
                     'or give the video file.')
  return x


def check_clip_shape(config, dataset: str, x: np.ndarray, path: str) -> None:
  """An error when the model cannot tokenize clips of this shape, a warning when they differ from
  the clips the head was trained on."""
  if dataset not in config.datasets:
    return
  expected = config_lib.input_shape(config.datasets[dataset])
  if tuple(x.shape[1:]) == tuple(expected):
    return
  try:
    tokenizers.validate_tubes(config.model, x.shape[1:])
  except ValueError as e:
    raise ValueError(f'{path}: clips of shape {x.shape[1:]} do not fit the model (it was trained '
                     f'on {expected}, config.datasets.{dataset}): {e}') from None
  print(f'Warning: {path}: clips of shape {x.shape[1:]}, but head {dataset!r} was trained on '
        f'{expected} (config.datasets.{dataset}); the predictions may be poor.', file=sys.stderr,
        flush=True)


def predict(config, workdir: str, input_path: str, *, top_k: int = 5,
            save_logits: str | None = None, dataset: str | None = None, step: int | None = None,
            fps: float | None = None, batch_size: int | None = None) -> dict:
  """Logits and top-k classes of `input_path` (.npy clip batch or a video file)."""
  # The input first: a wrong file is reported before a checkpoint is read or a model built. A
  # video is decoded for the head the config suggests (the checkpoint's heads say the final one).
  npy = load_clips(input_path) if input_path.endswith('.npy') else None
  guess, decoded = dataset, None
  if npy is None:
    video = [n for n in list(config.eval_datasets) or sorted(config.datasets)
             if config.datasets[n].kind == 'video']
    guess = dataset if dataset in config.datasets else (video or [None])[0]
    if guess is not None:
      decoded = decode_input(input_path, config.datasets[guess], fps=fps)
    else:
      check_input(input_path)
  restored = ckpt_lib.restore_params(config, workdir, step)
  params, num_classes, step = restored.params, restored.num_classes, restored.step
  dataset = workdir_lib.choose_head(config, num_classes, dataset)
  if npy is not None:
    x = npy
    check_clip_shape(config, dataset, x, input_path)
    kind, groups = 'npy', None
  else:
    if dataset not in config.datasets:
      raise ValueError(f'head {dataset!r} has no dataset in the config to take the eval views from.')
    if dataset != guess:  # Another head: its own frame rate and checks.
      decoded = None
    x = video_views(input_path, config.datasets[dataset], fps=fps, decoded=decoded)
    kind, groups = 'video', len(x)

  mesh, rules, graphdef = restored.mesh, restored.rules, restored.spec.graphdef

  @jax.jit
  def forward(p, xb):
    return nnx.merge(graphdef, p)(xb, dataset=dataset, train=False)

  bs = batch_size or (config.datasets[dataset].eval_batch_size if dataset in config.datasets else 8)
  outs = []
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    for i in range(0, len(x), bs):
      outs.append(np.asarray(jax.device_get(forward(params, x[i:i + bs]))))
  logits = np.concatenate(outs).astype(np.float32)
  if groups:  # one video: its views' logits averaged
    logits = logits.mean(axis=0, keepdims=True)
  if save_logits:
    with atomic.open_atomic(save_logits, 'wb') as f:
      np.save(f, logits)

  names = workdir_lib.class_names(config, workdir, dataset, logits.shape[-1])
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  top = [top_classes(row_logits, row_probs, names, top_k)
         for row_logits, row_probs in zip(logits, probs)]
  return {'input': input_path, 'kind': kind, 'views': groups, 'step': step, 'dataset': dataset,
          'logits': logits, 'top': top}


def top_classes(logits: np.ndarray, probs: np.ndarray, names, k: int) -> list[dict]:
  order = np.argsort(-logits, kind='stable')[:min(k, len(logits))]
  return [{'index': int(j), 'label': names[j], 'prob': float(probs[j]),
           'logit': float(logits[j])} for j in order]


def predict_segments(config, workdir: str, input_path: str, segments: str, *, top_k: int = 5,
                     output: str | None = None, dataset: str | None = None,
                     step: int | None = None, fps: float | None = None, echo: bool = True,
                     stats: dict | None = None) -> dict:
  """Top-k classes of each segment of a long video (`segments`: 'SECONDS[:STRIDE]'), each
  segment's views' logits averaged; printed as they come (`echo`) and written to `output` (.json)
  and the .csv beside it. `stats` gets the decoding's (inference.segments)."""
  seconds, stride = inference.parse_segments(segments)
  check_input(input_path)
  if input_path.endswith('.npy'):
    raise ValueError(f'--segments cuts a video file into segments; --input={input_path} is a clip '
                     'batch: drop --segments, or give the video.')
  model = inference.Model(config, workdir, step=step, dataset=dataset)
  ds = model.ds_cfg
  if ds is None or ds.kind != 'video':
    raise ValueError(f'--segments: head {model.dataset!r} has no video dataset in the config to '
                     'take the eval views from; give --dataset=NAME of a video dataset.')
  names = model.class_names()
  output = output or os.path.join(
      workdir, 'predictions', f'{os.path.splitext(os.path.basename(input_path))[0]}_segments.json')
  stats = {} if stats is None else stats
  if echo:
    print(f'{input_path}: segments of {seconds:g} s every {stride:g} s; checkpoint step '
          f'{model.step}, head {model.dataset!r}', flush=True)
  rows = []
  try:
    for seg in inference.segments(input_path, ds, seconds, stride, fps=fps, stats=stats):
      logits = model.logits(seg.views).mean(0)
      probs = np.exp(logits - logits.max())
      rows.append({'segment': seg.index, 'start': round(seg.start, 6), 'end': round(seg.end, 6),
                   'frames': seg.frames, 'views': len(seg.views),
                   'top': top_classes(logits, probs / probs.sum(), names, top_k)})
      if echo:
        print(format_segment(rows[-1]), flush=True)
  except video_io.VideoError as e:
    raise ValueError(f'--input={input_path} is not a video this can read ({e.reason}: '
                     f'{str(e.detail).splitlines()[0] if e.detail else e.reason}).') from None
  result = {'input': input_path, 'step': model.step, 'dataset': model.dataset,
            'seconds': seconds, 'stride': stride, 'fps': stats['fps'],
            'frames': stats['frames'], 'segments': rows}
  csv_path = os.path.splitext(output)[0] + '.csv'
  atomic.write_text(output, json.dumps(result, indent=2))
  atomic.write_text(csv_path, segments_csv(rows, top_k))
  if echo:
    print(f'{len(rows)} segments -> {output}, {csv_path}', flush=True)
  return {**result, 'json': output, 'csv': csv_path}


def format_segment(row: dict) -> str:
  top = ', '.join(f"{t['label']} {t['prob']:.3f}" for t in row['top'][:3])
  return f"  {row['start']:9.2f} - {row['end']:9.2f} s  {top}"


def segments_csv(rows: list[dict], k: int) -> str:
  """One line per segment: its times, then label, class and probability of each of the top k."""
  buf = io.StringIO()
  w = csv.writer(buf)
  k = min(k, len(rows[0]['top'])) if rows else k
  w.writerow(['segment', 'start', 'end', 'frames', 'views'] +
             [f'{c}_{r}' for r in range(1, k + 1) for c in ('label', 'class', 'prob')])
  for row in rows:
    w.writerow([row['segment'], f"{row['start']:.3f}", f"{row['end']:.3f}", row['frames'],
                row['views']] + [x for t in row['top'][:k]
                                 for x in (t['label'], t['index'], f"{t['prob']:.6f}")])
  return buf.getvalue()


def format_result(result: dict) -> str:
  what = (f"{result['views']} views averaged" if result['kind'] == 'video'
          else f"{len(result['top'])} clips")
  lines = [f"{result['input']}: {what}; checkpoint step {result['step']}, head "
           f"'{result['dataset']}'"]
  for i, row in enumerate(result['top']):
    if len(result['top']) > 1:
      lines.append(f'clip {i}:')
    for rank, t in enumerate(row, 1):
      lines.append(f"  {rank}. {t['label']:<32s} p={t['prob']:.4f}  logit={t['logit']:.4f}  "
                   f"(class {t['index']})")
  return '\n'.join(lines)


def main(flags, args):
  from sparse_tubes.commands import config_and_workdir, need
  config, workdir = config_and_workdir(flags)
  if flags.segments:
    try:
      predict_segments(config, workdir, need(flags.input, 'input', 'long_video.mp4'),
                       flags.segments, top_k=flags.top_k, output=flags.output,
                       dataset=flags.dataset, step=flags.step, fps=flags.fps)
    except (FileNotFoundError, ValueError, ckpt_lib.CheckpointError) as e:
      raise SystemExit(f'Error: {e}') from None
    return
  try:
    result = predict(config, workdir, need(flags.input, 'input', 'video.mp4'), top_k=flags.top_k,
                     save_logits=flags.save_logits, dataset=flags.dataset, step=flags.step,
                     fps=flags.fps)
  except (FileNotFoundError, ValueError, ckpt_lib.CheckpointError) as e:
    raise SystemExit(f'Error: {e}') from None
  print(format_result(result), flush=True)
