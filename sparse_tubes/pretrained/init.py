"""`config.init_from`: where a fresh training run takes its initial parameters.

`train` applies it when the workdir holds no checkpoint yet (a resumed run keeps its own state):

  kind=''            nothing: the model's own random init (the default).
  kind='vit_npz'     an image ViT .npz (vision_transformer / big_vision), inflated (inflate.py).
  kind='vit_torch'   an image ViT PyTorch state dict (timm, torchvision, HuggingFace ViT).
  kind='checkpoint'  the `params` item of one of our checkpoints (a workdir or its checkpoints/
                     directory; `convert` writes such checkpoints): every parameter with the same
                     name and shape is taken; the heads only with keep_heads=True (so a new label
                     set starts from zero heads); parameters the checkpoint lacks keep their init.
  path, step=-1      the file or workdir; the checkpoint step (-1: latest).
  tube_init, kernel_resize, posemb, temporal_init, keep_heads   inflation options (inflate.py).
  tubes_from=''      TubeViT image-to-video scaling (§3.6): a workdir of a (small) TubeViT whose
                     video tube kernels replace the target's (the image tube keeps the image
                     ViT's patch kernel). Kernel shapes must match; a different hidden size goes
                     through tube_projection: 'orthogonal' (a fixed random semi-orthogonal
                     D_small x D_large matrix folded into the kernels and biases: a linear map
                     after a convolution is a convolution, so the tokens are the small model's,
                     rotated into the large model's width) or 'pad' (zero-padded channels).
"""
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from sparse_tubes import config as config_lib
from sparse_tubes import defaults as defaults_lib
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes.pretrained import inflate as inflate_lib
from sparse_tubes.pretrained import vit as vit_lib
from sparse_tubes.pretrained import weights

KINDS = ('', 'vit_npz', 'vit_torch', 'checkpoint')
PROJECTIONS = ('orthogonal', 'pad')


def defaults() -> ml_collections.ConfigDict:
  """config.init_from as defaults.base() sets it: kind '' changes nothing."""
  return defaults_lib.base().init_from


def validate(config) -> None:
  init = config.init_from
  known = set(defaults().keys())
  unknown = sorted(set(init.keys()) - known)
  if unknown:
    raise ValueError(f'Unknown config key(s) {", ".join("config.init_from." + k for k in unknown)}. '
                     f'Known keys: {", ".join(sorted(known))}.')
  kind = init.kind
  if kind not in KINDS:
    raise ValueError(f'config.init_from.kind = {kind!r}: use one of {KINDS}.')
  if kind and not init.path:
    raise ValueError(f"config.init_from.kind = '{kind}' needs config.init_from.path.")
  if init.tube_projection not in PROJECTIONS:
    raise ValueError(f'config.init_from.tube_projection = {init.tube_projection!r}: use one of '
                     f'{PROJECTIONS}.')
  for key, allowed in (('tube_init', inflate_lib.TUBE_INITS),
                       ('kernel_resize', inflate_lib.KERNEL_RESIZES),
                       ('posemb', inflate_lib.POSEMB_INITS),
                       ('temporal_init', inflate_lib.TEMPORAL_INITS)):
    if init[key] not in allowed:
      raise ValueError(f'config.init_from.{key} = {init[key]!r}: use one of {allowed}.')


def merge_checkpoint(src: dict, params: dict, *, keep_heads: bool = False):
  """Our params from another of our checkpoints: same name and shape taken (heads only with
  keep_heads); shape mismatches outside the heads are an error listing them all."""
  s, t = weights.flatten(src), weights.flatten(params)
  new, shapes, taken = dict(t), [], []
  for k, v in t.items():
    if k not in s:
      continue
    is_head = k.startswith('heads/')
    if is_head and not keep_heads:
      continue
    if tuple(s[k].shape) != tuple(v.shape):
      if not is_head or keep_heads:
        shapes.append((k, s[k].shape, v.shape))
      continue
    new[k] = np.asarray(s[k], dtype=v.dtype)
    taken.append(k)
  missing = sorted(set(t) - set(s))
  unexpected = sorted(k for k in set(s) - set(t) if not k.startswith('heads/'))
  if shapes:
    raise weights.CheckpointMismatch('checkpoint params into config.model', shapes=shapes)
  report = [f'{len(taken)} of {len(t)} parameter arrays from the checkpoint']
  if missing:
    report.append('not in the checkpoint, kept at init: ' + weights.summarise(missing))
  if unexpected:
    report.append('in the checkpoint, not in the model (ignored): '
                  + weights.summarise(unexpected))
  dropped = sorted(k for k in t if k.startswith('heads/') and k not in taken)
  if dropped:
    report.append('heads at init: ' + weights.summarise(dropped))
  return weights.unflatten_like(params, new), report


def projection(d_small: int, d_large: int, kind: str = 'orthogonal', seed: int = 0) -> np.ndarray:
  """(d_small, d_large) with orthonormal rows (norms of small-model tokens kept)."""
  if d_small > d_large:
    raise ValueError(f'tubes_from: the small model is wider ({d_small}) than the target '
                     f'({d_large}); image-to-video scaling goes from small to large.')
  if kind == 'pad' or d_small == d_large:
    return np.eye(d_small, d_large, dtype=np.float32)
  a = np.random.default_rng(seed).normal(size=(d_large, d_small))
  q, _ = np.linalg.qr(a)                    # (d_large, d_small), orthonormal columns
  return q.T.astype(np.float32)


def take_tubes(src: dict, params: dict, model_cfg, *, kind: str = 'orthogonal', seed: int = 0):
  """TubeViT §3.6: the video tubes of a small TubeViT into the (large) target's tokenizer; the
  target's image tube is left alone. Hidden sizes may differ (projection())."""
  s, t = weights.flatten(src), weights.flatten(params)
  image_tube = config_lib.model_config(model_cfg).image_tube
  new, report = dict(t), []
  i = 0
  while f'tokenizer/convs/{i}/kernel' in t:
    key = f'tokenizer/convs/{i}/kernel'
    if i == image_tube:
      i += 1
      continue
    if key not in s:
      raise weights.CheckpointMismatch('tubes_from checkpoint', missing=[key])
    ks, kt = s[key], t[key]
    if ks.shape[:-1] != kt.shape[:-1]:
      raise weights.CheckpointMismatch('tubes_from checkpoint', shapes=[(key, ks.shape, kt.shape)])
    proj = projection(ks.shape[-1], kt.shape[-1], kind, seed)
    new[key] = (np.asarray(ks) @ proj).astype(kt.dtype)
    new[f'tokenizer/convs/{i}/bias'] = (np.asarray(s[f'tokenizer/convs/{i}/bias']) @ proj).astype(
        kt.dtype)
    report.append(f'tube {i}: {ks.shape} from the small model'
                  + (f', projected {ks.shape[-1]} -> {kt.shape[-1]} ({kind})'
                     if ks.shape[-1] != kt.shape[-1] else ''))
    i += 1
  if not report:
    raise ValueError('config.init_from.tubes_from: the target has no video tube besides the image '
                     'tube (config.model.tube_variant must be conv).')
  return weights.unflatten_like(params, new), report


def initial_params(config, params: dict) -> tuple[dict, list[str]]:
  """Host (numpy) params after applying config.init_from to the freshly initialised `params`."""
  init = config.init_from
  kind = init.kind
  report = []
  if kind in ('vit_npz', 'vit_torch'):
    vit = vit_lib.load(init.path, kind)
    report.append(f'init_from {kind} {init.path}: {vit.layout} image ViT, {vit.num_layers} '
                  f'layers, hidden {vit.hidden_size}, patch {vit.patch_size}')
    params, lines = inflate_lib.inflate(vit, params, config.model, init)
    report += lines
  elif kind == 'checkpoint':
    src = ckpt_lib.read_params(init.path, int(init.step))
    report.append(f'init_from checkpoint {init.path}')
    params, lines = merge_checkpoint(src, params, keep_heads=bool(init.keep_heads))
    report += lines
  if init.tubes_from:
    src = ckpt_lib.read_params(init.tubes_from)
    params, lines = take_tubes(src, params, config.model, kind=init.tube_projection,
                               seed=int(config.seed))
    report += [f'tubes_from {init.tubes_from}:'] + lines
  return params, report


def apply(config, params, shardings) -> tuple[dict, list[str]]:
  """Device params (on `shardings`) after config.init_from; every process reads the files and
  builds the same host arrays, then places its shards."""
  if not (config.init_from.kind or config.init_from.tubes_from):
    return params, []
  if jax.process_count() > 1:
    host = multihost_utils.process_allgather(params, tiled=True)
  else:
    host = jax.device_get(params)
  host, report = initial_params(config, host)
  placed = jax.tree.map(
      lambda a, sh: jax.make_array_from_callback(a.shape, sh, lambda idx, a=a: a[idx]),
      host, shardings)
  return placed, report

