"""One multi-head attention core. Space/time patterns (ViViT, TimeSformer) reshape tokens around
it; the core itself only sees (batch, tokens, heads, head_dim).

`attention_impl` (config.model.attention_impl):
  'einsum' einsum -> softmax (float32) -> einsum; about 1.6x faster than 'xla' on CPU.
  'xla'    jax.nn.dot_product_attention(implementation=None): XLA's own attention.
  'splash' the Pallas splash-attention kernel (jax.experimental.pallas.ops.tpu.splash_attention):
           flash attention for TPUs, which never materialises the (Tq, Tk) score matrix. Sequences
           are padded to the kernel's block size and the padded keys masked out (segment ids).
           Anywhere but on a TPU it runs in Pallas interpret mode (slow; for tests).
  'cudnn'  cuDNN flash attention, jax.nn.dot_product_attention(implementation='cudnn'), for NVIDIA
           GPUs, any sequence length: see "cuDNN" below. A call it cannot serve runs 'xla' instead,
           with one logged warning per cause.
  'auto'   per call, from the backend and the shapes: 'einsum' on CPU; 'splash' on TPU when the key
           sequence is long enough for the kernel to pay (>= SPLASH_MIN_TOKENS), else 'xla';
           'cudnn' on GPU when the call qualifies (`cudnn_unsupported`), else 'xla'. Each distinct
           choice and reason is logged once.

The fused kernels run under `shard_map` over the mesh axes that 'batch' and 'heads' map to (the
config's sharding rules), so each device runs the kernel on its own examples and heads.

cuDNN (what jax 0.10's `jax._src.cudnn.fused_attention_stablehlo` checks, and why):
  * dtype: q, k, v bfloat16 or float16, all the same (fp8 exists but needs scaling factors we do
    not keep). A float32 model (config.model.dtype = 'float32') gets 'xla'.
  * head_dim: a multiple of 8 and at most 128 (256 on Hopper, compute capability >= 9.0; cuDNN's
    support matrix: the Ampere/Ada backward stops at 128). The zoo uses 64 (Ti..L) and 80 (H).
  * GPU: compute capability >= 8.0 (Ampere); cuDNN's SDPA graph has no engine below.
  * sequence lengths, the bug of issue 17: jax replaces a missing bias by a placeholder array
    (`jnp.zeros(0)`) before its flash-attention check, so the check always sees "has bias", and
    for training with a bias it demands even Tq and Tk. The forward alone (no residuals) skips that
    check, which is why inference at 197 tokens works and the train step fails with
    "Unsupported sequence length Q 197, KV 197". The kernel itself takes any length (cuDNN's
    "arbitrary sequence length" engine tiles 64/128 and masks the tail). So we pad Tq and Tk up to
    CUDNN_SEQ_MULTIPLE (2) and mask the padded keys out; the padded queries (zeros, attending to the
    real keys: no empty softmax row) are sliced off, so their output gradient is zero.
  * masking: `key_value_seq_lengths` (cuDNN's padding mask, MaskType.PADDING) masks the padded
    keys without a bias tensor; it also routes the call to cuDNN's padded engine, the workaround
    NVIDIA gives for backward NaNs at awkward lengths (cudnn-frontend issues 160 and 1072). An
    explicit boolean `mask` becomes a (1, 1, Tq, Tk) additive bias: more memory, and cuDNN's
    backward with an explicit mask has returned NaN dQ at Tk % 128 == 64 on Hopper (pytorch issue
    196678), so it is kept only as an option (`mask='bias'`) for scripts/gpu_attention_check.py.
  * versions: jax 0.10 gates no mask type on the cuDNN version (its CUDA wheels bring cuDNN 9);
    only compute capability 10.3 (cuDNN >= 9.11) and q/v head sizes that differ (>= 9.10, Hopper)
    are gated, neither of which we use.
  * layout: BTNH (ours) and BNTH are accepted; the sequence and head_dim axes must not be sharded
    (we run it under shard_map over batch and heads). GQA (fewer k/v heads) is accepted; unused.
"""
import contextlib
import functools

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from sparse_tubes.models import partitioning

IMPLS = ('auto', 'xla', 'einsum', 'splash', 'cudnn')
BTHK = ('batch', 'tokens', 'heads', 'kv')  # logical names of q, k, v
# Below this many keys the score matrix is small and XLA's fused attention is as fast as the kernel
# (and splash would pad to at least one 128-token block).
SPLASH_MIN_TOKENS = 1024
SPLASH_BLOCKS = (512, 256, 128)   # TPU tiles are multiples of 128 lanes
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MIN_CAPABILITY = (8, 0)     # Ampere
CUDNN_MAX_HEAD_DIM = {False: 128, True: 256}   # {Hopper or newer: limit}
# jax's check wants even lengths in training (module docstring); the kernel tiles the rest itself.
CUDNN_SEQ_MULTIPLE = 2
CUDNN_MASK = 'seqlens'            # 'seqlens' (cuDNN padding mask) or 'bias' (explicit mask)
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


@functools.cache
def gpu_capability() -> tuple | None:
  """(major, minor) CUDA compute capability of the first local GPU; None when this process has no
  GPU (a faked or ahead-of-time platform: the checks then assume a capable GPU); (0, 0) for a GPU
  without a CUDA capability (e.g. ROCm)."""
  try:
    devices = jax.local_devices(backend='gpu')
  except RuntimeError:
    return None
  try:
    return tuple(int(x) for x in str(devices[0].compute_capability).split('.')[:2])
  except (AttributeError, ValueError, IndexError):
    return (0, 0)


def cudnn_unsupported(q, k) -> str | None:
  """Why cuDNN flash attention cannot serve q (B,Tq,N,d) with k (B,Tk,N,d), or None if it can.
  Sequence lengths never disqualify: `cudnn_attention` pads them."""
  capability = gpu_capability()
  if capability is not None and capability < CUDNN_MIN_CAPABILITY:
    return (f'GPU compute capability {capability} (cuDNN flash attention needs '
            f'{CUDNN_MIN_CAPABILITY} or newer)')
  if q.dtype not in CUDNN_DTYPES or k.dtype != q.dtype:
    return (f'{q.dtype} inputs (cuDNN flash attention takes bfloat16/float16 only: set '
            "config.model.dtype = 'bfloat16')")
  max_d = CUDNN_MAX_HEAD_DIM[capability is not None and capability >= (9, 0)]
  d = q.shape[-1]
  if d > max_d or d % 8:
    return (f'head_dim {d} (cuDNN flash attention needs a multiple of 8, at most {max_d} on this '
            'GPU: change config.model.hidden_size / num_heads)')
  return None


def _log_once(level, key, msg: str, *args):
  if key not in _logged:
    _logged.add(key)
    logging.log(level, msg, *args)


_CHOICES: list[dict] = []   # open `recording_choices` records, innermost last


@contextlib.contextmanager
def recording_choices():
  """{implementation: calls} of every attention traced inside the block (what `bench` reports as
  the kernel a config runs)."""
  record = {}
  _CHOICES.append(record)
  try:
    yield record
  finally:
    _CHOICES.remove(record)


def resolve_impl(impl: str, q=None, k=None) -> str:
  """The implementation one call uses; with q and k given, 'auto' and 'cudnn' look at their shapes
  and dtype ('cudnn' falls back to 'xla' where cuDNN cannot serve, with a warning)."""
  choice = _resolve(impl, q, k)
  for record in _CHOICES:
    record[choice] = record.get(choice, 0) + 1
  return choice


def _resolve(impl: str, q, k) -> str:
  check_impl(impl)
  if impl not in ('auto', 'cudnn'):
    return impl
  backend = platform()
  if impl == 'auto' and backend == 'cpu':
    return 'einsum'
  if q is None:
    return 'xla' if impl == 'auto' else impl
  choice, reason = 'xla', None
  if backend == 'tpu':
    choice = 'splash' if k.shape[1] >= SPLASH_MIN_TOKENS else 'xla'
  elif backend == 'gpu':
    reason = cudnn_unsupported(q, k)
    choice = 'xla' if reason else 'cudnn'
  if reason:   # one warning per distinct cause, not per call or shape
    _log_once(logging.WARNING, (impl, backend, reason),
              "attention_impl=%r on %s: cuDNN flash attention cannot serve %s -> 'xla' "
              '(first seen at q %s, k %s)', impl, backend, reason, q.shape, k.shape)
  else:
    _log_once(logging.INFO, (impl, backend, q.shape, k.shape, q.dtype, choice),
              "attention_impl=%r on %s: q %s, k %s (%s) -> '%s'", impl, backend, q.shape,
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


def cudnn_attention(q, k, v, *, implementation: str = 'cudnn', multiple: int | None = None,
                    mask: str | None = None) -> jax.Array:
  """cuDNN flash attention for any Tq and Tk: q (B,Tq,N,d), k and v (B,Tk,N,d) -> (B,Tq,N,d).

  Pads Tq and Tk up to `multiple` (module docstring: jax's training check wants even lengths),
  masks the padded keys (`mask`: 'seqlens', cuDNN's padding mask, or 'bias', an explicit boolean
  mask) and slices the padded queries off; None: CUDNN_SEQ_MULTIPLE and CUDNN_MASK, read at call
  time (scripts/gpu_attention_check.py sets them). implementation='xla' makes the very same padded,
  masked call through XLA: the CPU tests of this wrapper.
  """
  multiple = CUDNN_SEQ_MULTIPLE if multiple is None else multiple
  mask = CUDNN_MASK if mask is None else mask
  if mask not in ('seqlens', 'bias'):
    raise ValueError(f"cudnn_attention mask = {mask!r}: use 'seqlens' or 'bias'.")
  b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
  pad = lambda a: jnp.pad(a, ((0, 0), (0, -a.shape[1] % multiple), (0, 0), (0, 0)))  # noqa: E731
  q, k, v = pad(q), pad(k), pad(v)
  masking = {}
  if k.shape[1] != tk and mask == 'seqlens':
    masking['key_value_seq_lengths'] = jnp.full((b,), tk, jnp.int32)
  elif k.shape[1] != tk:   # jax's cuDNN path wants the mask at full (.., Tq, Tk) size
    masking['mask'] = jnp.broadcast_to(jnp.arange(k.shape[1]) < tk, (1, 1, q.shape[1], k.shape[1]))
  out = jax.nn.dot_product_attention(q, k, v, implementation=implementation, **masking)
  return out[:, :tq]


def _sharded(fn, q, k, v):
  """fn under shard_map over the mesh axes of 'batch' and 'heads' (a plain call without a mesh)."""
  mesh, rules = partitioning.active_mesh_and_rules()
  if mesh is None or not rules:
    return fn(q, k, v)
  spec = partitioning.logical_to_mesh(('batch', None, 'heads', None), rules)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)(
      q, k, v)


def einsum_attention(q, k, v) -> jax.Array:
  """einsum -> softmax (float32) -> einsum."""
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum('bqnd,bknd->bnqk', q, k, preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bnqk,bknd->bqnd', weights, v)


def dot_product_attention(q, k, v, *, impl: str = 'auto') -> jax.Array:
  """softmax(q k^T / sqrt(d)) v for q (B,Tq,N,d), k and v (B,Tk,N,d) -> (B,Tq,N,d)."""
  impl = resolve_impl(impl, q, k)
  if impl == 'xla':
    return jax.nn.dot_product_attention(q, k, v, implementation=None)
  if impl == 'cudnn':
    return _sharded(cudnn_attention, q, k, v)
  if impl == 'splash':
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    return _sharded(functools.partial(_splash, interpret=platform() != 'tpu'), q, k, v)
  return einsum_attention(q, k, v)


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
