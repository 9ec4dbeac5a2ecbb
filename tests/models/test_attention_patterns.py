"""Each attention pattern lets a token see exactly what the paper says, shown by gradients.

R[i, j] = d(output token i) / d(input token j) != 0, for ONE block (or one attention step) on a
4 frames x 4 x 4 grid, in float32. Extra branches start non-zero (temporal_zero_init=False): with the
zero-initialised temporal_fc of the official code the temporal path would have no gradient at init.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_tubes.models import attention_patterns as patterns
from sparse_tubes.models.encoder import EncoderBlock

GRID = (4, 4, 4)
N = int(np.prod(GRID))
D = 8
T, H, W = np.unravel_index(np.arange(N), GRID)


def same(*axes):
  """(N, N) bool: patch tokens i, j agree on every given coordinate array."""
  return functools.reduce(np.logical_and, [a[:, None] == a[None, :] for a in axes],
                          np.ones((N, N), bool))


SPACE = same(T)                         # its frame
TIME = same(H, W)                       # its position, every frame
WIDTH = same(T, H)                      # its row
HEIGHT = same(T, W)                     # its column
LOCAL = same(H // 2, W // 2)            # F x H/2 x W/2 window (all 4 frames, one quadrant)
GLOBAL = same(T % 2, H % 2, W % 2)      # stride 2 in t, h, w
ALL = np.ones((N, N), bool)


def block(attention, **kw):
  return EncoderBlock(D, 2, 16, attention=attention, temporal_zero_init=False,
                      rngs=nnx.Rngs(0), **kw)


def reach(fn, num_cls=0):
  """Boolean reachability matrix of fn: (1, C+N, D) -> (1, C+N, D)."""
  x = np.random.RandomState(0).standard_normal((1, num_cls + N, D)).astype(np.float32)
  jac = jax.jit(jax.jacrev(fn))(x)[0, :, :, 0, :, :]      # (C+N, D, C+N, D)
  return np.asarray(jnp.abs(jac).sum(axis=(1, 3)) > 0)


def step_reach(b, i, num_cls=0):
  layout = patterns.Layout(GRID, num_cls)
  return reach(lambda x: b.step(i, x, layout), num_cls)


def block_reach(b, num_cls=0):
  layout = patterns.Layout(GRID, num_cls)
  return reach(lambda x: b(x, layout), num_cls)


def compose(*steps):
  """Reachability of residual steps applied in order: (I + A_k) ... (I + A_1)."""
  r = np.eye(N, dtype=bool)
  for a in steps:
    r = ((np.eye(N, dtype=bool) | a).astype(int) @ r.astype(int)) > 0
  return r


@pytest.mark.parametrize('attention,expected_steps', [
    ('joint', [ALL]),
    ('space', [SPACE]),
    ('divided', [TIME, SPACE]),
    ('axial', [TIME, WIDTH, HEIGHT]),
    ('local_global', [LOCAL, GLOBAL]),
    ('factorised_self_attention', [SPACE, TIME]),
    ('factorised_dot_product', [SPACE | TIME]),
])
def test_each_step_and_the_block_see_exactly_the_pattern(attention, expected_steps):
  b = block(attention)
  assert len(b.steps) == len(expected_steps)
  for i, expected in enumerate(expected_steps):
    np.testing.assert_array_equal(step_reach(b, i), expected, err_msg=f'{attention} step {i}')
  # One whole block: the steps composed through their residuals (the MLP is per token).
  whole = block_reach(b)
  np.testing.assert_array_equal(whole, compose(*expected_steps))
  if attention == 'space':
    np.testing.assert_array_equal(whole, SPACE)                   # never another frame
  elif attention == 'factorised_dot_product':
    np.testing.assert_array_equal(whole, SPACE | TIME)            # its frame + its position
  else:
    assert whole.all()  # T then S (etc.) reaches every token after one block on this grid


def test_factorised_order_time_space_reverses_the_steps():
  b = block('factorised_self_attention', factorised_order='time_space')
  np.testing.assert_array_equal(step_reach(b, 0), TIME)
  np.testing.assert_array_equal(step_reach(b, 1), SPACE)


def test_divided_class_token_skips_time_and_joins_every_frame_in_space():
  b = block('divided')
  r_time, r_space = step_reach(b, 0, num_cls=1), step_reach(b, 1, num_cls=1)
  # Temporal step: the class token neither moves nor is seen.
  assert not r_time[0].any() and not r_time[1:, 0].any()
  np.testing.assert_array_equal(r_time[1:, 1:], TIME)
  # Spatial step: every patch sees its frame and the class token; the class token, averaged over
  # the frames, sees everything.
  np.testing.assert_array_equal(r_space[1:, 1:], SPACE)
  assert r_space[1:, 0].all() and r_space[0].all()


def test_space_only_keeps_one_class_token_per_frame():
  b = block('space')
  r = step_reach(b, 0, num_cls=GRID[0])
  c = GRID[0]
  np.testing.assert_array_equal(r[c:, c:], SPACE)
  np.testing.assert_array_equal(r[:c, :c], np.eye(c, dtype=bool))   # class token t: frame t only
  np.testing.assert_array_equal(r[:c, c:], SPACE[::GRID[1] * GRID[2]])
  np.testing.assert_array_equal(r[c:, :c], SPACE[:, ::GRID[1] * GRID[2]])


def test_grouping_round_trips():
  x = jnp.arange(2 * N * 3, dtype=jnp.float32).reshape(2, N, 3)
  for grouping in ('space', 'time', 'width', 'height', 'local', 'global'):
    factors, inner = patterns._factors(grouping, GRID, None, (2, 2, 2))
    g, n = patterns.group(x, GRID, factors, inner)
    np.testing.assert_array_equal(patterns.ungroup(g, 2, factors, inner), x)


def test_patterns_need_a_grid_and_divisible_sizes():
  b = block('divided')
  x = jnp.zeros((1, N, D))
  with pytest.raises(ValueError, match=r"config\.model\.attention = 'divided'.*single dense tube"):
    b(x, patterns.Layout(None, 0))
  lg = block('local_global', global_stride=(2, 3, 2))
  with pytest.raises(ValueError, match=r'config\.model\.global_stride = \(2, 3, 2\)'):
    lg(x, patterns.Layout(GRID, 0))
  with pytest.raises(ValueError, match=r'num_heads = 3 must be even'):
    EncoderBlock(6, 3, 12, attention='factorised_dot_product', rngs=nnx.Rngs(0))(
        jnp.zeros((1, N, 6)), patterns.Layout(GRID, 0))
  with pytest.raises(ValueError, match=r"config\.model\.attention = 'dilated'"):
    block('dilated')
  with pytest.raises(ValueError, match=r'config\.model\.factorised_order'):
    block('factorised_self_attention', factorised_order='spacetime')


@pytest.mark.parametrize('grouping', ['time', 'width', 'height'])
def test_grid_attention_equals_grouped_attention(grouping):
  """The transpose-free einsum path (CPU) is group -> attention -> ungroup, values and gradients
  (on a grid of three different sizes, so a swapped axis cannot pass)."""
  grid = (2, 3, 4)
  from sparse_tubes.models.attention import dot_product_attention
  factors, inner = patterns._factors(grouping, grid, None, None)
  q, k, v = (np.random.RandomState(i).standard_normal((2, 24, 2, 4)).astype(np.float32)
             for i in range(3))
  def grouped(q, k, v):
    qg, kg, vg = (patterns.group(a, grid, factors, inner)[0] for a in (q, k, v))
    return patterns.ungroup(dot_product_attention(qg, kg, vg, impl='einsum'), 2, factors, inner)
  direct = lambda q, k, v: patterns.grid_attention(  # noqa: E731
      q, k, v, grid, patterns.GRID_AXES[grouping])
  for f in (lambda f: f, lambda f: jax.grad(lambda *a: (f(*a) ** 2).sum(), argnums=(0, 1, 2))):
    np.testing.assert_allclose(jax.tree.leaves(jax.jit(f(direct))(q, k, v)),
                               jax.tree.leaves(jax.jit(f(grouped))(q, k, v)), atol=1e-5)
