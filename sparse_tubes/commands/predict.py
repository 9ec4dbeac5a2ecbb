"""`python -m sparse_tubes predict`: run a checkpoint on one video file or a .npy clip batch.

  predict --workdir=DIR --input=video.mp4 [--config=CONFIG.py] [--top_k=5] [--save_logits=OUT.npy]
          [--dataset=NAME] [--step=N] [--fps=F]

A video file is decoded with PyAV (data/video_io.py) and cut into the eval views of the dataset
whose head is used (`eval_temporal_views` x `eval_spatial_views` clips of `num_frames` at
`frame_stride`, short side resized to `min_resize`, crops of `crop_size`, the dataset's
normalization, which `convert` sets to the one the checkpoint was trained with: exactly the
multi-view evaluation's pre-processing, data/pipeline.py); the views'
logits are averaged. A `.npy` file holds a float32 clip batch (B, T, H, W, C), already normalized,
and is fed as is (one row of logits per clip). The top classes are printed with their names
(the HF config's id2label for converted checkpoints, else the dataset's class names).

The input is checked before the checkpoint is read: a missing, empty or undecodable file is one
line; a video shorter than one view's frames, or smaller than its crop, is a warning (its frames
are repeated or upscaled, as in the evaluation).
"""
import os
import re
import sys

import av
import jax
import numpy as np
from flax import nnx

from sparse_tubes import atomic
from sparse_tubes import config as config_lib
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes import workdir as workdir_lib
from sparse_tubes.models import tokenizers
from sparse_tubes.data import pipeline, video_io


def _fps(tfds_name: str) -> float | None:
  """The frame rate `prepare` stored the dataset at: '.../10fps_128px' says it; Kinetics defaults to
  25 fps; SSv2 and the built-in data keep the source rate."""
  m = re.search(r'/(?:(\d+(?:\.\d+)?)fps|native)_', tfds_name)
  if m:
    return float(m.group(1)) if m.group(1) else None
  return 25.0 if tfds_name.startswith('kinetics') else None


def decode_input(path: str, ds_cfg, *, fps: float | None = None):
  """The decoded video (video_io.Decoded), or one line (ValueError) for a file that is not a video;
  warns when it is shorter than one view's frames or smaller than its crop."""
  check_input(path)
  rate = fps if fps is not None else _fps(ds_cfg.tfds_name)
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
  k = min(top_k, logits.shape[-1])
  top = []
  for row_logits, row_probs in zip(logits, probs):
    order = np.argsort(-row_logits)[:k]
    top.append([{'index': int(j), 'label': names[j], 'prob': float(row_probs[j]),
                 'logit': float(row_logits[j])} for j in order])
  return {'input': input_path, 'kind': kind, 'views': groups, 'step': step, 'dataset': dataset,
          'logits': logits, 'top': top}


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
  try:
    result = predict(config, workdir, need(flags.input, 'input', 'video.mp4'), top_k=flags.top_k,
                     save_logits=flags.save_logits, dataset=flags.dataset, step=flags.step,
                     fps=flags.fps)
  except (FileNotFoundError, ValueError, ckpt_lib.CheckpointError) as e:
    raise SystemExit(f'Error: {e}') from None
  print(format_result(result), flush=True)
