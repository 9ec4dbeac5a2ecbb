"""Space/time attention patterns (ViViT, TimeSformer) around the one attention core.

Tokens reach the encoder as (B, C + n_t*n_h*n_w, D): C class tokens first (0, 1, or n_t for
TimeSformer's space-only model, one per frame), then the patch tokens of ONE dense tube in row-major
(t, h, w) order. A `Layout` (static) carries that grid. Each pattern is a sequence of attention
*steps*, each over one *grouping* of the patch tokens (every token attends only inside its group):

  grouping  token (t, h, w) attends to                       used by
  'all'     every token (class tokens included)               joint: ViViT M1, TimeSformer ST, TubeViT
  'space'   its frame t                                       TimeSformer S, divided S, ViViT M3
  'time'    its position (h, w) in every frame                divided T, axial T, ViViT M3
  'width'   its row: same (t, h)                              axial W
  'height'  its column: same (t, w)                           axial H
  'local'   its window of `local_window` (default             local-global L
            (n_t, n_h/2, n_w/2): F x H/2 x W/2, non-overlapping)
  'global'  tokens with the same (t, h, w) mod `global_stride`  local-global G
            (default (2, 2, 2): "a stride of 2 patches along the temporal dimension and also the
            two spatial dimensions", TimeSformer §3; a dilated, clip-wide sparse grid)

Class tokens (TimeSformer's divided-attention code, facebookresearch/TimeSformer vit.py): they do NOT
take part in 'time' steps (their update there is zero); in every other grouped step the class token
is prepended to every group and its update is the mean over groups ("averaged over frames" for
'space'). With n_t class tokens (space-only), class token t joins frame t's group only.

Patterns (config.model.attention) -> steps, (grouping, parameter prefix); prefix '' is the block's
main `norm1`/`attention` (the image-ViT weights), other prefixes get their own `{p}_norm`,
`{p}_attention` and, for TimeSformer's patterns (WITH_FC), a `{p}_fc` linear layer before the
residual add.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparse_tubes.models.attention import dot_product_attention, resolve_impl

PATTERNS = {
    'joint': (('all', ''),),
    'space': (('space', ''),),
    'divided': (('time', 'temporal'), ('space', '')),                       # TimeSformer T+S
    'axial': (('time', 'temporal'), ('width', 'width'), ('height', '')),    # TimeSformer T+W+H
    'local_global': (('local', 'local'), ('global', '')),                   # TimeSformer L+G
    'factorised_self_attention': (('space', ''), ('time', 'temporal')),     # ViViT M3
    'factorised_dot_product': (('m4', ''),),                                # ViViT M4
}
# Patterns with a TimeSformer-style linear layer after each extra attention (zero-initialised by
# default, as the official code's `temporal_fc`).
WITH_FC = ('divided', 'axial', 'local_global')
# Patterns that never see a class token (ViViT §3.3: M3/M4 avoid the ambiguity of reshaping it).
NO_CLASS_TOKEN = ('factorised_self_attention', 'factorised_dot_product')
ORDERS = ('space_time', 'time_space')


class Layout(NamedTuple):
  grid: tuple | None     # (n_t, n_h, n_w) of the single dense tube; None: sparse tube set
  num_cls: int = 0       # class tokens in front: 0, 1, or n_t (space-only: one per frame)


def steps(attention: str, factorised_order: str = 'space_time') -> tuple:
  if attention not in PATTERNS:
    raise ValueError(f'config.model.attention = {attention!r}: use one of {tuple(PATTERNS)}.')
  if factorised_order not in ORDERS:
    raise ValueError(f'config.model.factorised_order = {factorised_order!r}: use one of {ORDERS}.')
  s = PATTERNS[attention]
  if attention == 'factorised_self_attention' and factorised_order == 'time_space':
    s = s[::-1]
  return s


def _factors(group: str, grid, local_window, global_stride):
  """Per axis (outer, inner) sizes and whether groups index the inner factor."""
  nt, nh, nw = grid
  one = lambda n: (n, 1)   # noqa: E731  axis splits groups
  seq = lambda n: (1, n)   # noqa: E731  axis runs along the sequence
  if group == 'space':
    return (one(nt), seq(nh), seq(nw)), False
  if group == 'time':
    return (seq(nt), one(nh), one(nw)), False
  if group == 'width':
    return (one(nt), one(nh), seq(nw)), False
  if group == 'height':
    return (one(nt), seq(nh), one(nw)), False
  if group == 'all':
    return (seq(nt), seq(nh), seq(nw)), False
  if group == 'local':
    win = tuple(min(w, n) for w, n in zip(local_window or (nt, max(nh // 2, 1), max(nw // 2, 1)),
                                          grid))  # min: images are one frame
    _divides(grid, win, 'local_window', 'local_global')
    return tuple((n // w, w) for n, w in zip(grid, win)), False
  if group == 'global':
    global_stride = tuple(min(st, n) for st, n in zip(global_stride, grid))
    _divides(grid, global_stride, 'global_stride', 'local_global')
    return tuple((n // s, s) for n, s in zip(grid, global_stride)), True
  raise ValueError(f'unknown grouping {group!r}')


def _divides(grid, sizes, key, pattern):
  if len(sizes) != 3 or any(n % s for n, s in zip(grid, sizes)):
    raise ValueError(
        f"config.model.attention = '{pattern}' needs config.model.{key} = {tuple(sizes)} to divide "
        f'the token grid (n_t, n_h, n_w) = {tuple(grid)}: change the tube or the clip size, or '
        f'set config.model.{key}.')


def group(p: jax.Array, grid, factors, inner: bool):
  """(B, n_t*n_h*n_w, ...) -> (B*G, n, ...): tokens of one group along axis 1."""
  b, rest = p.shape[0], p.shape[2:]
  (ot, it), (oh, ih), (ow, iw) = factors
  p = p.reshape(b, ot, it, oh, ih, ow, iw, *rest)
  g, s = ((2, 4, 6), (1, 3, 5)) if inner else ((1, 3, 5), (2, 4, 6))
  r = tuple(range(7, 7 + len(rest)))
  p = p.transpose((0, *g, *s, *r))
  n_groups = int(np.prod([p.shape[i] for i in (1, 2, 3)]))
  return p.reshape(b * n_groups, -1, *rest), n_groups


def ungroup(y: jax.Array, b: int, factors, inner: bool):
  """Inverse of `group`: (B*G, n, ...) -> (B, n_t*n_h*n_w, ...)."""
  (ot, it), (oh, ih), (ow, iw) = factors
  rest = y.shape[2:]
  if inner:
    y = y.reshape(b, it, ih, iw, ot, oh, ow, *rest)
    perm = (0, 4, 1, 5, 2, 6, 3)
  else:
    y = y.reshape(b, ot, oh, ow, it, ih, iw, *rest)
    perm = (0, 1, 4, 2, 5, 3, 6)
  y = y.transpose(perm + tuple(range(7, 7 + len(rest))))
  return y.reshape(b, ot * it * oh * ih * ow * iw, *rest)


def grid_attention(q, k, v, grid, axis: int):
  """einsum attention along one axis of the token grid (0 'time', 1 'height', 2 'width'; the other
  two axes index the groups), on the grid as it lies: q, k, v (B, n_t*n_h*n_w, N, d) are only
  reshaped to (B, n_t, n_h, n_w, N, d), never transposed into groups and back. Same result as
  `group` -> einsum attention -> `ungroup`."""
  shape = q.shape
  q, k, v = (a.reshape(a.shape[0], *grid, *a.shape[2:]) for a in (q, k, v))
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  lq = 'bthwnd'
  a = lq[1 + axis]                                   # the attending axis; 'x' its key side
  lk = lq.replace(a, 'x')
  lw = 'b' + ''.join(c for c in 'thw' if c != a) + 'n' + a + 'x'
  logits = jnp.einsum(f'{lq},{lk}->{lw}', q, k, preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum(f'{lw},{lk}->{lq}', weights, v).reshape(shape)


# Groupings that attend along one grid axis: with einsum (the CPU path) they skip the transposes
# into groups and back (`grid_attention`). Measured on CPU (fwd + bwd of one step, XLA 0.10): 0-10%
# faster on the tiny configs, within 3% at ViT-B sizes (8x14x14 tokens, 768 wide); XLA folds most
# transposes into the matmul layouts. Not taken with a class token in each group, nor for
# 'local'/'global' groups: the same trick there measured up to 45% slower at ViT-B sizes.
GRID_AXES = {'time': 0, 'height': 1, 'width': 2}


def _on_grid(mha, grouping: str) -> bool:
  """Whether this step takes the transpose-free einsum path (`grid_attention`)."""
  return resolve_impl(mha.attention_impl) == 'einsum' and grouping in GRID_AXES


def _attend_grouped(mha, p, grid, factors, inner, grouping):
  """mha's update of the patch tokens p (B, N, D), each attending inside its group."""
  if _on_grid(mha, grouping):
    return mha.project_out(grid_attention(*mha.qkv(p), grid, GRID_AXES[grouping]))
  pg, _ = group(p, grid, factors, inner)
  return ungroup(mha(pg), p.shape[0], factors, inner)


def require_grid(layout: Layout, attention: str):
  if layout.grid is None:
    raise ValueError(
        f"config.model.attention = '{attention}' needs the tokens on one (time, height, width) grid, "
        'i.e. a single dense tube in config.model.tubes (2D patches (1,16,16) or tubelets (2,16,16) '
        "with stride = kernel); TubeViT's sparse multi-tube sets use config.model.attention = "
        "'joint'.")


def attend(mha, x: jax.Array, layout: Layout, grouping: str, *, attention: str = '',
           local_window=None, global_stride=(2, 2, 2)) -> jax.Array:
  """The update of `mha` under one grouping: (B, C + N, D) -> (B, C + N, D)."""
  if grouping == 'all':
    return mha(x)
  require_grid(layout, attention or grouping)
  b, c = x.shape[0], layout.num_cls
  cls, p = x[:, :c], x[:, c:]
  if grouping == 'm4':
    return _factorised_dot_product(mha, p, layout)
  factors, inner = _factors(grouping, layout.grid, local_window, global_stride)
  if c == 0 or grouping == 'time':
    y = _attend_grouped(mha, p, layout.grid, factors, inner, grouping)
    return jnp.concatenate([jnp.zeros_like(cls, dtype=y.dtype), y], axis=1) if c else y
  pg, g = group(p, layout.grid, factors, inner)
  if c == 1:    # one class token, joining every group; its update averaged over the groups
    cg = jnp.repeat(cls, g, axis=0)
    yg = mha(jnp.concatenate([cg, pg], axis=1))
    y_cls = yg[:, :1].reshape(b, g, 1, -1).mean(axis=1)
  else:         # one class token per frame (space-only): token t joins frame t
    if grouping != 'space' or c != g:
      raise ValueError(f'{c} class tokens work with the space-only pattern only')
    yg = mha(jnp.concatenate([cls.reshape(b * g, 1, -1), pg], axis=1))
    y_cls = yg[:, :1].reshape(b, g, -1)
  return jnp.concatenate([y_cls, ungroup(yg[:, 1:], b, factors, inner)], axis=1)


def _factorised_dot_product(mha, p, layout: Layout):
  """ViViT M4 (§3.3, Fig. 5): one q/k/v/out projection; the first half of the heads attend over
  space (same frame), the second half over time (same position); concatenated, then projected."""
  b, grid = p.shape[0], layout.grid
  q, k, v = mha.qkv(p)
  n = q.shape[2]
  if n % 2:
    raise ValueError(f"config.model.attention = 'factorised_dot_product' splits the heads in two "
                     f'halves (space, time): config.model.num_heads = {n} must be even.')
  outs = []
  for grouping, heads in (('space', slice(0, n // 2)), ('time', slice(n // 2, n))):
    factors, inner = _factors(grouping, grid, None, None)
    if _on_grid(mha, grouping):
      outs.append(grid_attention(q[:, :, heads], k[:, :, heads], v[:, :, heads], grid,
                                 GRID_AXES[grouping]))
      continue
    qg, kg, vg = (group(a[:, :, heads], grid, factors, inner)[0] for a in (q, k, v))
    y = dot_product_attention(qg, kg, vg, impl=mha.attention_impl)
    outs.append(ungroup(y, b, factors, inner))
  return mha.project_out(jnp.concatenate(outs, axis=2))
