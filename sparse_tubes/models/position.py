"""Position embeddings: TubeViT's fixed 3D sin/cos at tube centres (§3.3, Eqs. 3-7), and learned
embeddings (the ablation baseline, `config.model.posemb='learned'`).
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

  def __init__(self, grids: Sequence[Sequence[int]], dim: int, *, rngs: nnx.Rngs):
    # normal(1/sqrt(dim)): big_vision's learned ViT position embedding ('learn').
    init = partitioning.names(nnx.initializers.normal(stddev=dim ** -0.5),
                              (None, None, None, 'embed'))
    self.tables = nnx.List([nnx.Param(init(rngs.params(), (*g, dim), jnp.float32)) for g in grids])

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
