"""One multi-head attention core. Space/time patterns (ViViT, TimeSformer) reshape tokens around
it; the core itself only sees (batch, tokens, heads, head_dim).

`attention_impl` (config.model.attention_impl):
  'einsum' einsum -> softmax (float32) -> einsum; about 1.6x faster than 'xla' on CPU.
  'xla'    jax.nn.dot_product_attention(implementation=None): XLA's own attention.
  'splash' the Pallas splash-attention kernel (jax.experimental.pallas.ops.tpu.splash_attention):
           flash attention for TPUs, which never materialises the (Tq, Tk) score matrix. Sequences
           are padded to the kernel's block size and the padded keys masked out (segment ids).
           Anywhere but on a TPU it runs in Pallas interpret mode (slow; for tests).
  'cudnn'  cuDNN flash attention, jax.nn.dot_product_attention(implementation='cudnn'): NVIDIA GPUs,
           bfloat16/float16 only.
  'auto'   per call, from the backend and the shapes: 'einsum' on CPU; 'splash' on TPU when the key
           sequence is long enough for the kernel to pay (>= SPLASH_MIN_TOKENS), else 'xla';
           'cudnn' on GPU when the dtype and head size allow it, else 'xla'. The choice is logged.

The fused kernels run under `shard_map` over the mesh axes that 'batch' and 'heads' map to (the
config's sharding rules), so each device runs the kernel on its own examples and heads.
"""
import functools
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from sparse_tubes.models import partitioning

IMPLS = ('auto', 'xla', 'einsum', 'splash', 'cudnn')
BTHK = ('batch', 'tokens', 'heads', 'kv')  # logical names of q, k, v
# Below this many keys the score matrix is small and XLA's fused attention is as fast as the kernel
# (and splash would pad to at least one 128-token block).
SPLASH_MIN_TOKENS = 1024
SPLASH_BLOCKS = (512, 256, 128)   # TPU tiles are multiples of 128 lanes
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_logged = set()


def platform() -> str:
  """The platform the current computation targets: the devices of the mesh set with
  `jax.set_mesh` (also for an ahead-of-time compile for a TPU topology from a CPU host), else
  jax's default backend."""
  device = getattr(jax.sharding.get_abstract_mesh(), 'abstract_device', None)
  return device.platform if device is not None else jax.default_backend()


def check_impl(impl: str) -> str:
  """Validates config.model.attention_impl before anything is compiled."""
  if impl not in IMPLS:
    raise ValueError(f'config.model.attention_impl = {impl!r}: use one of {IMPLS}.')
  if impl == 'cudnn' and platform() != 'gpu':
    raise ValueError(f"config.model.attention_impl = 'cudnn' is cuDNN flash attention for NVIDIA "
                     f"GPUs, but this process runs on '{platform()}': use 'auto', 'xla' or "
                     "'einsum' (or 'splash' on TPU).")
  return impl


def resolve_impl(impl: str, q=None, k=None) -> str:
  """The implementation one call uses; with q and k given, 'auto' looks at their shapes."""
  check_impl(impl)
  if impl != 'auto':
    return impl
  backend = platform()
  if backend == 'cpu':
    return 'einsum'
  if q is None:
    return 'xla'
  choice = 'xla'
  if backend == 'tpu' and k.shape[1] >= SPLASH_MIN_TOKENS:
    choice = 'splash'
  elif backend == 'gpu' and q.dtype in CUDNN_DTYPES and q.shape[-1] <= 128 \
      and q.shape[-1] % 8 == 0:
    choice = 'cudnn'
  key = (backend, q.shape, k.shape, q.dtype, choice)
  if key not in _logged:
    _logged.add(key)
    logging.info("attention_impl='auto' on %s: q %s, k %s (%s) -> '%s'", backend, q.shape,
                 k.shape, q.dtype, choice)
  return choice


def _block(n: int) -> int:
  """The largest splash block whose padding costs at most ~3% over padding to one 128-lane tile."""
  pad = lambda b: -n % b  # noqa: E731
  return next(b for b in SPLASH_BLOCKS if pad(b) - pad(128) <= n // 32)


def _splash(q, k, v, *, interpret: bool):
  """Splash attention on one device's shard: q (B,Tq,N,d) pre-scaled, k and v (B,Tk,N,d)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  tq, n, tk = q.shape[1], q.shape[2], k.shape[1]
  bq, bk = _block(tq), _block(tk)
  # The kernel is per example, heads leading: (N, T, d); padded to whole blocks.
  to_kernel = lambda a, b: jnp.pad(a.transpose(0, 2, 1, 3),  # noqa: E731
                                   ((0, 0), (0, 0), (0, -a.shape[1] % b), (0, 0)))
  q, k, v = to_kernel(q, bq), to_kernel(k, bk), to_kernel(v, bk)
  blocks = sa.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                         block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  mask = sa.MultiHeadMask([sa.FullMask((q.shape[2], k.shape[2]))] * n)
  kernel = sa.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                              interpret=interpret)
  if k.shape[2] == tk:
    out = jax.vmap(kernel)(q, k, v)
  else:  # padded keys get segment 0, every query (padded ones too: no empty rows) segment 1
    ids = sa.SegmentIds(q=jnp.ones((q.shape[2],), jnp.int32),
                        kv=(jnp.arange(k.shape[2]) < tk).astype(jnp.int32))
    out = jax.vmap(kernel, in_axes=(0, 0, 0, None))(q, k, v, ids)
  return out[:, :, :tq].transpose(0, 2, 1, 3)


def _sharded(fn, q, k, v):
  """fn under shard_map over the mesh axes of 'batch' and 'heads' (a plain call without a mesh)."""
  mesh, rules = partitioning._mesh_and_rules()  # pylint: disable=protected-access
  if mesh is None or not rules:
    return fn(q, k, v)
  spec = partitioning.logical_to_mesh(('batch', None, 'heads', None), rules)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)(
      q, k, v)


def dot_product_attention(q, k, v, *, impl: str = 'auto') -> jax.Array:
  """softmax(q k^T / sqrt(d)) v for q (B,Tq,N,d), k and v (B,Tk,N,d) -> (B,Tq,N,d)."""
  impl = resolve_impl(impl, q, k)
  if impl == 'xla':
    return jax.nn.dot_product_attention(q, k, v, implementation=None)
  if impl == 'cudnn':
    return jax.nn.dot_product_attention(q, k, v, implementation='cudnn')
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  if impl == 'splash':
    return _sharded(functools.partial(_splash, interpret=platform() != 'tpu'), q, k, v)
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
    check_impl(attention_impl)
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
