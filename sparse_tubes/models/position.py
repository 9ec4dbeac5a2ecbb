"""Position embeddings (`config.model.posemb`):
  'sincos3d'  TubeViT's fixed 3D sin/cos at tube centres (§3.3, Eqs. 3-7); a class token gets none.
  'learned'   one learned table per tube over its (n_t, n_h, n_w) grid: ViViT's joint learned
              embedding for a single tube (TubeViT's ablation baseline for sparse tubes); a class
              token gets its own learned entry `posemb/cls` (ViViT/HF: (1 + N) positions).
  'learned_space_time'  TimeSformer (§3, "learned space position embedding plus learned time
              embedding"): `posemb/space` (n_h, n_w, D) added to every frame's patches, `posemb/cls`
              (D,) to the class token (HF's position_embeddings[0]), and `posemb/time` (n_t, D)
              added to every patch of frame t, not to the class token. As the official code,
              the space-only model has no time embedding. ViViT M2 uses the same two tables:
              space before the spatial encoder, time (+ `posemb/time_cls`) before the temporal one.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_tubes.models import partitioning


def sincos_3d(centres, dim: int, tau: float = 10000.) -> np.ndarray:
  """Fixed embedding (N, dim) of token centres (N, 3) = [t, y, x] in input frame/pixel units.

  TubeViT §3.3, with n = dim // 6 frequencies, j = 0..n-1:
    Eq. 3   w_j = tau^(-j/n)                          (= tau^(-6j/dim) when 6 | dim)
    Eq. 4-6 p_{j,a} = (sin(a * w_j), cos(a * w_j))    for a in (t, x, y)
    Eq. 7   z[6j:6(j+1)] = [p_{j,t}, p_{j,x}, p_{j,y}]
  When dim is not a multiple of 6, the last dim % 6 channels are zero (no position signal there;
  e.g. hidden 64 -> 60 position channels + 4 zeros).
  Computed with numpy from static shapes: a constant under jit, never a parameter.
  """
  n = dim // 6
  if n < 1:
    raise ValueError(f'sincos_3d needs dim >= 6 (groups of 6 = (sin, cos) x (t, x, y)), got {dim}')
  c = np.asarray(centres, np.float64)
  omega = tau ** (-np.arange(n) / n)                                   # Eq. 3
  t, y, x = (c[:, a, None] * omega for a in range(3))                   # (N, n) each
  z = np.stack([np.sin(t), np.cos(t), np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=-1)
  z = z.reshape(len(c), 6 * n)                                          # Eq. 7 channel layout
  return np.pad(z, ((0, 0), (0, dim - 6 * n))).astype(np.float32)


class LearnedPosEmb(nnx.Module):
  """One learned table (n_t, n_h, n_w, dim) per tube, for the grids of a reference input shape.

  Smaller inputs take the leading slice of each table, i.e. the same pixel positions: an image is
  frame 0 of its 2D-patch tube's table.
  """

  def __init__(self, grids: Sequence[Sequence[int]], dim: int, *, class_token: bool = False,
               rngs: nnx.Rngs):
    # normal(1/sqrt(dim)): big_vision's learned ViT position embedding ('learn').
    init = partitioning.names(nnx.initializers.normal(stddev=dim ** -0.5),
                              (None, None, None, 'embed'))
    self.tables = nnx.List([nnx.Param(init(rngs.params(), (*g, dim), jnp.float32)) for g in grids])
    self.cls = nnx.data(None)
    if class_token:
      self.cls = nnx.Param(partitioning.names(nnx.initializers.normal(stddev=dim ** -0.5),
                                              ('embed',))(rngs.params(), (dim,), jnp.float32))

  def __call__(self, grids) -> jax.Array:
    """grids: ((tube index, (n_t, n_h, n_w)), ...) as returned by the tokenizer -> (N, dim)."""
    out = []
    for i, (nt, nh, nw) in grids:
      table = self.tables[i][...]
      if nt > table.shape[0] or nh > table.shape[1] or nw > table.shape[2]:
        raise ValueError(
            f'tube {i} gives a ({nt}, {nh}, {nw}) token grid but its learned position table is '
            f'{table.shape[:3]}: set config.model.input_shape to the largest (T, H, W, C) fed.')
      out.append(table[:nt, :nh, :nw].reshape(nt * nh * nw, -1))
    return jnp.concatenate(out, axis=0)


def _check_grid(name, have, want):
  if any(w > h for w, h in zip(want, have)):
    raise ValueError(f'a ({", ".join(map(str, want))}) token grid does not fit the learned {name} '
                     f'embedding {tuple(have)}: set config.model.input_shape to the largest '
                     '(T, H, W, C) fed.')


class SpaceTimePosEmb(nnx.Module):
  """TimeSformer's learned space + time embeddings (and ViViT M2's) over one dense tube's grid."""

  def __init__(self, grid: Sequence[int], dim: int, *, time: bool = True, class_token: bool = False,
               time_cls: bool = False, rngs: nnx.Rngs):
    nt, nh, nw = grid
    init = nnx.initializers.normal(stddev=0.02)  # TimeSformer: trunc_normal(std=.02)
    def param(shape, axes):
      return nnx.Param(partitioning.names(init, axes)(rngs.params(), shape, jnp.float32))
    self.space = param((nh, nw, dim), (None, None, 'embed'))
    self.time = param((nt, dim), (None, 'embed')) if time else nnx.data(None)
    self.cls = param((dim,), ('embed',)) if class_token else nnx.data(None)
    self.time_cls = param((dim,), ('embed',)) if time_cls else nnx.data(None)

  def space_table(self, grid) -> jax.Array:
    """(n_t*n_h*n_w, D): the space embedding of each token, (t, h, w) order."""
    nt, nh, nw = grid
    _check_grid('space', self.space.shape[:2], (nh, nw))
    s = self.space[...][:nh, :nw].reshape(1, nh * nw, -1)
    return jnp.broadcast_to(s, (nt, nh * nw, s.shape[-1])).reshape(nt * nh * nw, -1)

  def time_table(self, nt: int) -> jax.Array:
    _check_grid('time', self.time.shape[:1], (nt,))
    return self.time[...][:nt]

  def __call__(self, grid, *, with_time: bool = True) -> jax.Array:
    """Space (+ time, per frame) embedding of the patch tokens: (n_t*n_h*n_w, D)."""
    pos = self.space_table(grid)
    if with_time and self.time is not None:
      nt, nh, nw = grid
      pos = pos + jnp.repeat(self.time_table(nt), nh * nw, axis=0)
    return pos
