"""Tokenizers: sparse video tubes (TubeViT §3.2). 2D patches (TimeSformer), tubelets (ViViT) and
TubeViT's sparse tubes are all the same thing here: a list of tubes, each given by
(kernel (t,h,w), stride (t,h,w), offset (t,h,w)) and computing what a 3D convolution with VALID
padding applied from its offset computes.

  patches  (TimeSformer): [((1,16,16), (1,16,16), (0,0,0))]
  tubelets (ViViT):       [((2,16,16), (2,16,16), (0,0,0))]
  sparse tubes (TubeViT): the four tubes of Table 12 (zoo.TUBEVIT_TUBES).

How a tube is computed: its windows are cut out of the input with reshapes and slices (`windows`),
then multiplied with the kernel in ONE matmul (`embed_tube`). Where stride == kernel this is a
pure reshape + transpose (patches, tubelets). It is not a convolution on purpose: the backward pass
of a strided 3D convolution with a large window is itself a convolution (17x193x193 for the paper's
tubes at 224 px) that XLA must autotune on GPU, and that autotuning crashed on an H200
(CUDA_ERROR_ILLEGAL_ADDRESS); a matmul's backward is two matmuls, the slices' backward is pads and
adds. `lax.conv_general_dilated_patches` is no way out: it lowers to a convolution itself.

Tube variants (`config.model.tube_variant`, TubeViT §3.4 / Table 12):
  'conv'            one kernel (kt, kh, kw, C, D) and bias per tube, i.e. one 3D convolution per
                    tube (params tokenizer/convs/<i>/{kernel,bias}, named after what they compute).
  'space_to_depth'  every tube's input is folded by `config.model.space_to_depth` = (f_t, f_h, f_w)
                    (default (1, 2, 2)) from space/time into channels before a smaller tube:
                    kernel k/f, stride s/f, in_channels C*f_t*f_h*f_w, channel order (dt, dh, dw, c).
                    It computes exactly what the unfolded convolution computes (a reshape of its
                    kernel), while the tube kernels keep the channel layout of a model whose input
                    is f times smaller (our reading of "space-to-depth to keep channel dims").
                    Kernels and strides must be divisible by f.
  'interpolated'    ONE learned kernel of shape `config.model.interpolated_kernel` (default
                    (8, 8, 8)) x C x D (tokenizer/kernel, tokenizer/bias), trilinearly resized (no
                    antialiasing, align-corners=False as torch's 'trilinear') to every tube's kernel
                    shape and scaled by prod(base) / prod(kernel) so a constant input gives the
                    same response whatever the tube shape.

Token count of a tube along one axis of length L (VALID from offset o):
    n = floor((L - o - k) / s) + 1      (0 when L - o < k)

TubeViT Table 12 on 32x224x224 gives 98 + 147 + 98 + 196 = 539 tokens; the paper quotes 559.
We reproduce 539. Neither VALID nor SAME padding (counted from 0 or from the offset) reaches 559:
the spatial strides (32, 16) divide 224, so under all four each tube's spatial grid is 7x7 (14x14
for the 2D patch) and only temporal counts change; the total is then 49*n + 196*m, and
559 = 11*49 + 20 is of no such form. SAME-style padding gives 686 (637 counting from the offset),
see tests/models/test_tokenizers.py.
"""
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_tubes import defaults
from sparse_tubes.models import partitioning

Triple = tuple[int, int, int]
Tube = tuple[Triple, Triple, Triple]  # (kernel, stride, offset), each (t, h, w)
_AXES = ('time', 'height', 'width')
VARIANTS = ('conv', 'space_to_depth', 'interpolated')


def tube_grid(kernel: Sequence[int], stride: Sequence[int], offset: Sequence[int],
              input_shape: Sequence[int]) -> Triple:
  """(n_t, n_h, n_w) tokens of one tube on an input of shape (T, H, W); VALID from the offset."""
  return tuple(max((l - o - k) // s + 1, 0)
               for l, k, s, o in zip(input_shape, kernel, stride, offset))


def tube_centres(kernel: Sequence[int], stride: Sequence[int], offset: Sequence[int],
                 grid: Sequence[int]) -> np.ndarray:
  """(n_t*n_h*n_w, 3) centres [t, y, x] of a tube's tokens in input frame/pixel coordinates.

  Token i along an axis covers [o + i*s, o + i*s + k), pixel p spanning [p, p+1), so its centre is
  o + i*s + k/2: strides and offsets included, as TubeViT §3.3 asks. Row-major (t, h, w) order,
  as the convolution output is flattened.
  """
  axes = [o + s * np.arange(n) + k / 2 for k, s, o, n in zip(kernel, stride, offset, grid)]
  t, y, x = np.meshgrid(*axes, indexing='ij')
  return np.stack([t.ravel(), y.ravel(), x.ravel()], axis=-1).astype(np.float32)


def parse_tubes(tubes) -> tuple[Tube, ...]:
  """Tubes from the config as tuples of int triples, with clear errors on malformed entries."""
  out = []
  for i, tube in enumerate(tubes):
    try:
      k, s, o = (tuple(int(v) for v in part) for part in tube)
      ok = len(k) == len(s) == len(o) == 3
    except (TypeError, ValueError):
      ok = False
    if not ok or min(k + s) < 1 or min(o) < 0:
      raise ValueError(
          f'config.model.tubes[{i}] = {tube!r} is not a tube: write it as '
          '((kt, kh, kw), (st, sh, sw), (ot, oh, ow)) with kernel and stride >= 1 and offset >= 0.')
    out.append((k, s, o))
  if not out:
    raise ValueError('config.model.tubes is empty: give at least one ((kernel), (stride), (offset)).')
  return tuple(out)


def clip_shape(input_shape: Sequence[int], in_channels: int = 3) -> tuple[bool, Triple]:
  """(is_image, (T, H, W)) of one example's shape as the model sees it, without batch:
  (T, H, W, C) for a video, (H, W, C) for an image (a one-frame video)."""
  shape = tuple(int(v) for v in input_shape)
  if len(shape) not in (3, 4) or shape[-1] != in_channels:
    raise ValueError(
        f'input shape {shape} is not one example as the model sees it: give (T, H, W, C) for a '
        f'video or (H, W, C) for an image, with C = config.model.in_channels = {in_channels}.')
  return len(shape) == 3, ((1,) + shape[:2] if len(shape) == 3 else shape[:3])


def _check(tubes: Sequence[Tube], image_tube: int | None, input_shape: Sequence[int] | None,
           in_channels: int = 3):
  if image_tube is None:
    if input_shape is not None and clip_shape(input_shape, in_channels)[0]:
      raise ValueError('this model has no image path (config.model.image_tube = None) but gets '
                       f'images of shape {tuple(input_shape)}: set config.model.image_tube to '
                       'the index of a 2D-patch tube, or drop the image dataset.')
  elif not 0 <= image_tube < len(tubes):
    raise ValueError(f'config.model.image_tube = {image_tube} but there are {len(tubes)} tubes: '
                     f'set it to the index of the 2D-patch tube (0..{len(tubes) - 1}).')
  else:
    (kt, _, _), _, (ot, _, _) = tubes[image_tube]
    if kt != 1 or ot != 0:
      raise ValueError(
          f'config.model.tubes[{image_tube}] is the image tube (config.model.image_tube='
          f'{image_tube}) but is not 2D: its kernel t is {kt} and offset t is {ot}; images are one '
          'frame, so set kernel t to 1 and offset t to 0, or point image_tube at the 2D-patch tube.')
  if input_shape is None:
    return
  is_image, thw = clip_shape(input_shape, in_channels)
  for i in ([image_tube] if is_image else range(len(tubes))):
    k, s, o = tubes[i]
    for axis, l, kk, oo in zip(_AXES, thw, k, o):
      if kk + oo > l:
        raise ValueError(
            f'config.model.tubes[{i}] = ({k}, {s}, {o}) does not fit the input '
            f'(T, H, W) = {thw}: along {axis} kernel {kk} + offset {oo} > {l}. '
            f'Make the kernel or offset smaller along {axis}, or feed a larger input.')


def _complete(model_cfg):
  """config.model with defaults.model() filling in what a partial dict (tests, tools) leaves out."""
  return defaults.model(**(model_cfg.to_dict() if hasattr(model_cfg, 'to_dict') else model_cfg))


def validate_tubes(model_cfg, input_shape: Sequence[int] | None = None) -> None:
  """Raise ValueError naming `config.model.tubes[i]` and the fix when the tube set is unusable.

  input_shape: one example without batch, (T, H, W, C) for a video or (H, W, C) for an image
  (`sparse_tubes.config.input_shape`); None for the structural checks only.
  """
  model_cfg = _complete(model_cfg)
  tubes = parse_tubes(model_cfg.tubes)
  _check(tubes, image_tube_index(model_cfg), input_shape, int(model_cfg.in_channels))
  if model_cfg.tube_variant == 'space_to_depth':
    fold = tuple(model_cfg.space_to_depth)
    image_tube = image_tube_index(model_cfg)
    for i, (k, s, _) in enumerate(tubes):
      bad = [a for a, kk, ss, f in zip(_AXES, k, s, fold) if kk % f or ss % f]
      if bad or (i == image_tube and fold[0] != 1):
        raise ValueError(
            f"config.model.tube_variant = 'space_to_depth' folds by config.model.space_to_depth = "
            f'{fold}, which must divide every tube kernel and stride (and f_t = 1 for the image '
            f'tube): config.model.tubes[{i}] = {(k, s)} fails along {bad or ["time"]}.')


def image_tube_index(model_cfg) -> int | None:
  image_tube = _complete(model_cfg).image_tube
  return None if image_tube is None else int(image_tube)


def count_tokens(model_cfg, input_shape: Sequence[int]) -> dict:
  """Tokens per tube and in total for one example, (T, H, W, C) video or (H, W, C) image.

  Images go through the image tube only; the other tubes count 0 there.
  """
  validate_tubes(model_cfg, input_shape)
  model_cfg = _complete(model_cfg)
  tubes, image_tube = parse_tubes(model_cfg.tubes), image_tube_index(model_cfg)
  is_image, thw = clip_shape(input_shape, int(model_cfg.in_channels))
  per_tube = [0 if is_image and i != image_tube else int(np.prod(tube_grid(*tube, thw)))
              for i, tube in enumerate(tubes)]
  return dict(per_tube=per_tube, total=sum(per_tube))


class Tokens(NamedTuple):
  tokens: jax.Array        # (B, N, D)
  centres: np.ndarray      # (N, 3) [t, y, x], static: depends on shapes only
  grids: tuple             # ((tube index, (n_t, n_h, n_w)), ...) in token order


def space_to_depth(x: jax.Array, fold: Sequence[int]) -> jax.Array:
  """(B, T, H, W, C) -> (B, T/ft, H/fh, W/fw, ft*fh*fw*C), cropping the remainder; channel order
  (dt, dh, dw, c)."""
  b, t, h, w, c = x.shape
  ft, fh, fw = fold
  x = x[:, :t - t % ft, :h - h % fh, :w - w % fw]
  x = x.reshape(b, t // ft, ft, h // fh, fh, w // fw, fw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // ft, h // fh, w // fw, ft * fh * fw * c)


def windows(x: jax.Array, axis: int, kernel: int, stride: int) -> jax.Array:
  """Axis `axis` of length L becomes two, (n, kernel), the n = (L - kernel) // stride + 1 VALID
  windows: out[..., i, j, ...] = x[..., i*stride + j, ...].

  Reshapes and static slices only, so the backward pass is pads and adds (no gather, no scatter,
  no convolution). The axis is cut into blocks of `stride`; window i is blocks i .. i+q-1 laid end
  to end (q = ceil(kernel / stride)), truncated to `kernel`. stride == kernel is a plain reshape,
  stride > kernel (gapped tubes) a reshape and a slice, stride < kernel (overlapping, tube 2 in
  time) q shifted slices of the blocks, concatenated.
  """
  length = x.shape[axis]
  n = (length - kernel) // stride + 1
  if n < 1:
    raise ValueError(f'a tube kernel of {kernel} does not fit an input axis of {length}: '
                     'check the tubes against the input shape with validate_tubes first.')
  q = -(-kernel // stride)
  need = (n + q - 1) * stride
  if need > length:  # zeros past the end of the last window: the final slice cuts them off
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, need - length)
    x = jnp.pad(x, pad)
  else:
    x = jax.lax.slice_in_dim(x, 0, need, axis=axis)
  blocks = x.reshape(x.shape[:axis] + (n + q - 1, stride) + x.shape[axis + 1:])
  if q > 1:
    blocks = jnp.concatenate(
        [jax.lax.slice_in_dim(blocks, j, j + n, axis=axis) for j in range(q)], axis=axis + 1)
  return jax.lax.slice_in_dim(blocks, 0, kernel, axis=axis + 1)


def embed_tube(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: Sequence[int]
               ) -> jax.Array:
  """What a VALID 3D convolution of x (B, T, H, W, C) with kernel (kt, kh, kw, C, D) and `stride`,
  plus bias (D,), computes: (B, n_t, n_h, n_w, D). Windows cut out by slicing, then one matmul.
  """
  k = kernel.shape[:3]
  # The axes whose windows shrink the data most go first (gapped before overlapping), so the
  # overlapping time windows of tube 2 copy frames already cut down to 4x4 pixels.
  done = []
  for a in sorted(range(3), key=lambda a: k[a] / stride[a]):
    # Axis a sits after the batch and after one extra axis per earlier axis already split.
    x = windows(x, 1 + a + sum(d < a for d in done), k[a], stride[a])
    done.append(a)
  # x: (B, n_t, k_t, n_h, k_h, n_w, k_w, C)
  y = jnp.einsum('btihjwkc,ijkcd->bthwd', x, kernel)
  return y + bias


class TubeKernel(nnx.Module):
  """One tube's kernel (kt, kh, kw, C, D) and bias (D,): the parameters of the 3D convolution it
  computes (`embed_tube`), in nnx.Conv's layout and order of initialisation, so checkpoints and
  imports (pretrained/) see tokenizer/convs/<i>/{kernel,bias} as before."""

  def __init__(self, in_channels: int, hidden_size: int, kernel_size: Triple, strides: Triple, *,
               kernel_init, bias_init, dtype, rngs: nnx.Rngs):
    self.kernel_size, self.strides, self.dtype = tuple(kernel_size), tuple(strides), dtype
    self.kernel = nnx.Param(kernel_init(
        rngs.params(), (*self.kernel_size, in_channels, hidden_size), jnp.float32))
    self.bias = nnx.Param(bias_init(rngs.params(), (hidden_size,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return embed_tube(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                      self.bias[...].astype(self.dtype), self.strides)


class SparseTubes(nnx.Module):
  """One kernel per tube (each its own, TubeViT §3.2), tokens concatenated.

  Videos (B,T,H,W,C) go through every tube; images (B,H,W,C) through the image tube only, as
  one-frame videos, so an image token and the same patch of frame 0 get the same position.
  """

  def __init__(self, tubes, hidden_size: int, *, image_tube: int | None, in_channels: int = 3,
               variant: str = 'conv', fold=(1, 2, 2), interpolated_kernel=(8, 8, 8),
               dtype=jnp.float32, rngs: nnx.Rngs):
    if variant not in VARIANTS:
      raise ValueError(f'config.model.tube_variant = {variant!r}: use one of {VARIANTS}.')
    self.tubes = parse_tubes(tubes)
    self.image_tube = None if image_tube is None else int(image_tube)
    self.in_channels, self.variant, self.dtype = int(in_channels), variant, dtype
    self.fold = tuple(int(f) for f in fold) if variant == 'space_to_depth' else (1, 1, 1)
    _check(self.tubes, self.image_tube, None)
    # lecun-normal tube kernels, zero biases: big_vision's ViT patch embedding.
    kernel_init = partitioning.names(nnx.initializers.lecun_normal(),
                                     (None, None, None, None, 'embed'))
    bias_init = partitioning.names(nnx.initializers.zeros_init(), ('embed',))
    if variant == 'interpolated':
      self.base_shape = tuple(int(k) for k in interpolated_kernel)
      self.kernel = nnx.Param(kernel_init(
          rngs.params(), (*self.base_shape, in_channels, hidden_size), jnp.float32))
      self.bias = nnx.Param(bias_init(rngs.params(), (hidden_size,), jnp.float32))
      return
    cin = self.in_channels * int(np.prod(self.fold))
    self.convs = nnx.List([
        TubeKernel(cin, hidden_size, tuple(a // f for a, f in zip(k, self.fold)),
                   tuple(a // f for a, f in zip(s, self.fold)), kernel_init=kernel_init,
                   bias_init=bias_init, dtype=dtype, rngs=rngs)
        for k, s, _ in self.tubes])

  def tube_kernel(self, i: int) -> jax.Array:
    """The interpolated variant's kernel for tube i: (kt, kh, kw, C, D)."""
    k = self.tubes[i][0]
    base = self.kernel[...]
    w = jax.image.resize(base, (*k, *base.shape[3:]), method='trilinear', antialias=False)
    return w * (np.prod(self.base_shape) / np.prod(k))

  def _embed(self, i: int, x: jax.Array) -> jax.Array:
    k, s, o = self.tubes[i]
    x = x[:, o[0]:, o[1]:, o[2]:]                        # VALID from the tube's offset (§3.2)
    if self.variant == 'interpolated':
      return embed_tube(x.astype(self.dtype), self.tube_kernel(i).astype(self.dtype),
                        self.bias[...].astype(self.dtype), s)
    if self.variant == 'space_to_depth':
      x = space_to_depth(x, self.fold)
    return self.convs[i](x)

  def __call__(self, x: jax.Array) -> Tokens:
    if x.ndim not in (4, 5):
      raise ValueError(f'expected a video (B,T,H,W,C) or an image (B,H,W,C), got shape {x.shape}')
    _check(self.tubes, self.image_tube, x.shape[1:], self.in_channels)
    if x.ndim == 4:  # image: a one-frame video through the 2D-patch tube only
      x, used = x[:, None], [self.image_tube]
    else:
      used = range(len(self.tubes))
    tokens, centres, grids = [], [], []
    for i in used:
      k, s, o = self.tubes[i]
      y = self._embed(i, x)
      b, nt, nh, nw, d = y.shape
      tokens.append(y.reshape(b, nt * nh * nw, d))
      centres.append(tube_centres(k, s, o, (nt, nh, nw)))
      grids.append((i, (nt, nh, nw)))
    tokens = partitioning.constrain(jnp.concatenate(tokens, axis=1), partitioning.BTE)
    return Tokens(tokens, np.concatenate(centres), tuple(grids))
