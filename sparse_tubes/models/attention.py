"""One multi-head attention core. Space/time patterns (ViViT, TimeSformer) reshape tokens around
it; the core itself only sees (batch, tokens, heads, head_dim).

`attention_impl` (config.model.attention_impl):
  'xla'    jax.nn.dot_product_attention(implementation=None): XLA on CPU/TPU, cuDNN flash on GPU.
  'einsum' einsum -> softmax (float32) -> einsum; about 1.6x faster than 'xla' on CPU.
  'auto'   'einsum' when jax.default_backend() == 'cpu', else 'xla'.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from sparse_tubes.models import partitioning

IMPLS = ('auto', 'xla', 'einsum')
BTHK = ('batch', 'tokens', 'heads', 'kv')  # logical names of q, k, v


def resolve_impl(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f'config.model.attention_impl = {impl!r}: use one of {IMPLS}.')
  if impl == 'auto':
    return 'einsum' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def dot_product_attention(q, k, v, *, impl: str = 'auto') -> jax.Array:
  """softmax(q k^T / sqrt(d)) v for q (B,Tq,N,d), k and v (B,Tk,N,d) -> (B,Tq,N,d)."""
  if resolve_impl(impl) == 'xla':
    return jax.nn.dot_product_attention(q, k, v, implementation=None)
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum('bqnd,bknd->bnqk', q, k, preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bnqk,bknd->bqnd', weights, v)


class MultiHeadAttention(nnx.Module):
  """Query/key/value projections (embed -> heads x kv), attention, output projection.

  Kernels are xavier-uniform over (fan_in, fan_out) = (embed, heads*kv), biases zero: big_vision's
  ViT (`nn.MultiHeadDotProductAttention(kernel_init=xavier_uniform())`). Separate q/k/v kernels
  keep the layout of image-ViT checkpoints.
  """

  def __init__(self, hidden_size: int, num_heads: int, *, attention_impl: str = 'auto',
               zero_init_out: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    if hidden_size % num_heads:
      raise ValueError(f'config.model.hidden_size = {hidden_size} is not divisible by '
                       f'num_heads = {num_heads}.')
    resolve_impl(attention_impl)
    self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
    self.attention_impl, self.dtype = attention_impl, dtype
    shape_in = (hidden_size, num_heads, self.head_dim)
    init_in = partitioning.names(
        nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)), ('embed', 'heads', 'kv'))
    init_b = partitioning.names(nnx.initializers.zeros_init(), ('heads', 'kv'))
    for name in ('query', 'key', 'value'):
      setattr(self, name, nnx.Param(init_in(rngs.params(), shape_in, jnp.float32)))
      setattr(self, f'{name}_bias', nnx.Param(init_b(rngs.params(), shape_in[1:], jnp.float32)))
    # zero_init_out: the block starts as the identity on this branch (ViViT M3's temporal attention
    # "initialised to zero", §3.4: zeroing q/k/v too would leave them without gradient).
    init_out = partitioning.names(
        nnx.initializers.zeros_init() if zero_init_out
        else nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2), ('heads', 'kv', 'embed'))
    self.out = nnx.Param(init_out(rngs.params(), (num_heads, self.head_dim, hidden_size),
                                  jnp.float32))
    self.out_bias = nnx.Param(partitioning.names(nnx.initializers.zeros_init(), ('embed',))(
        rngs.params(), (hidden_size,), jnp.float32))

  def _project(self, x, kernel, bias):
    y = (jnp.einsum('btd,dnh->btnh', x, kernel[...].astype(self.dtype))
         + bias[...].astype(self.dtype))
    return partitioning.constrain(y, BTHK)

  def qkv(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None):
    """Projections (B, T, heads, kv) each; used directly by patterns that split heads (ViViT M4)."""
    inputs_q = inputs_q.astype(self.dtype)
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv.astype(self.dtype)
    return (self._project(inputs_q, self.query, self.query_bias),
            self._project(inputs_kv, self.key, self.key_bias),
            self._project(inputs_kv, self.value, self.value_bias))

  def project_out(self, y: jax.Array) -> jax.Array:
    """(B, T, heads, kv) -> (B, T, D)."""
    return (jnp.einsum('btnh,nhd->btd', y, self.out[...].astype(self.dtype))
            + self.out_bias[...].astype(self.dtype))

  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None) -> jax.Array:
    """(B, Tq, D) queries attend over (B, Tk, D) keys/values (self-attention when None)."""
    q, k, v = self.qkv(inputs_q, inputs_kv)
    return self.project_out(dot_product_attention(q, k, v, impl=self.attention_impl))
