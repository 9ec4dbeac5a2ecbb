"""Pre-LN transformer encoder (ViT; TubeViT §3.1 Eqs. 1-2):
    y = MSA(LN(z)) + z
    z = MLP(LN(y)) + y
with dropout (big_vision's Encoder1DBlock) and stochastic depth (per-example drop path, Huang et
al. 2016), its rate rising linearly with depth from 0 to `config.model.stochastic_depth`.

The MSA step is one of the space/time patterns of `attention_patterns` (joint, space, divided, axial,
local_global, ViViT M3/M4): a block runs its pattern's attention steps in order, each a residual
branch, then the MLP.

Parameter paths of one block (prefix 'encoder/blocks/<i>/', or 'encoder/blocks/' with a leading
layer axis when config.model.scan_layers=True):
  norm1/{scale,bias}  attention/{query,key,value}[_bias], attention/out[_bias]  (the image-ViT ones)
  <p>_norm, <p>_attention [, <p>_fc/{kernel,bias}]   for each extra step, p in temporal|width|local
  norm2  mlp/fc1/{kernel,bias}  mlp/fc2/{kernel,bias}
and 'encoder/norm' after the last block; 'encoder/gates/alpha' with config.model.scaling_gate_layers
(models/scaling.py).
"""
import functools
import jax
import jax.numpy as jnp
from flax import nnx

from sparse_tubes import compat
from sparse_tubes.models import attention_patterns as patterns
from sparse_tubes.models import partitioning, scaling
from sparse_tubes.models.attention import MultiHeadAttention


def layer_norm(hidden_size: int, dtype, rngs: nnx.Rngs, eps: float = 1e-6) -> nnx.LayerNorm:
  return nnx.LayerNorm(
      hidden_size, epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
      scale_init=partitioning.names(nnx.initializers.ones_init(), ('embed',)),
      bias_init=partitioning.names(nnx.initializers.zeros_init(), ('embed',)), rngs=rngs)


def dropout_key(rngs: nnx.Rngs | None) -> jax.Array:
  if rngs is None:
    raise ValueError('train=True with dropout or stochastic_depth > 0 needs random keys: call '
                     'model(x, dataset=..., train=True, rngs=nnx.Rngs(dropout=key)).')
  return rngs.dropout()


def drop_path(x: jax.Array, rate, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
  """Stochastic depth: drop the whole residual branch per example, scale the kept ones.
  `rate` may be traced (scan over layers); None or a Python 0.0 skips it."""
  if not train or rate is None or (isinstance(rate, (int, float)) and rate == 0.0):
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(dropout_key(rngs), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


def apply_dropout(layer: nnx.Dropout, x: jax.Array, *, train: bool,
            rngs: nnx.Rngs | None) -> jax.Array:
  """nnx.Dropout built without rngs (the model state stays nnx.Param only); keys come per call."""
  if not train or layer.rate == 0.0:
    return x
  return layer(x, deterministic=False, rngs=dropout_key(rngs))


class MlpBlock(nnx.Module):
  """Dense -> GELU -> dropout -> Dense. Xavier-uniform kernels, normal(1e-6) biases (big_vision)."""

  def __init__(self, hidden_size: int, mlp_dim: int, *, dropout: float = 0.0, dtype=jnp.float32,
               gelu_approximate: bool = False, rngs: nnx.Rngs):
    def dense(n_in, n_out, axes):
      return nnx.Linear(
          n_in, n_out, dtype=dtype, param_dtype=jnp.float32,
          kernel_init=partitioning.names(nnx.initializers.xavier_uniform(), axes),
          bias_init=partitioning.names(nnx.initializers.normal(stddev=1e-6), axes[1:]), rngs=rngs)
    self.fc1 = dense(hidden_size, mlp_dim, ('embed', 'mlp'))
    self.fc2 = dense(mlp_dim, hidden_size, ('mlp', 'embed'))
    self.dropout = nnx.Dropout(dropout)
    self.gelu_approximate = gelu_approximate  # False: exact erf GELU (HF TimeSformer 'gelu')

  def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
    x = jax.nn.gelu(self.fc1(x), approximate=self.gelu_approximate)
    x = apply_dropout(self.dropout, x, train=train, rngs=rngs)
    return self.fc2(x)


class EncoderBlock(nnx.Module):
  """Pattern steps (each LN -> attention -> [fc] -> dropout -> drop path -> residual), then
  LN -> MLP -> dropout -> drop path -> residual. The drop-path rate comes per call (scan-friendly).

  temporal_zero_init: the extra step's `<p>_fc` starts at zero (TimeSformer's temporal_fc), and for
  ViViT M3 the temporal attention's output projection does (§3.4), so the block starts as the
  image model.
  """

  def __init__(self, hidden_size: int, num_heads: int, mlp_dim: int, *, attention: str = 'joint',
               factorised_order: str = 'space_time', dropout: float = 0.0,
               attention_impl: str = 'auto', layer_norm_eps: float = 1e-6,
               gelu_approximate: bool = False, temporal_zero_init: bool = True,
               local_window=None, global_stride=(2, 2, 2), dtype=jnp.float32, rngs: nnx.Rngs):
    self.pattern = attention
    self.steps = patterns.steps(attention, factorised_order)
    self.local_window = None if local_window is None else tuple(local_window)
    self.global_stride = tuple(global_stride)
    ln = functools.partial(layer_norm, hidden_size, dtype, eps=layer_norm_eps)
    mha = functools.partial(MultiHeadAttention, hidden_size, num_heads,
                            attention_impl=attention_impl, dtype=dtype)
    self.norm1 = ln(rngs)
    self.attention = mha(rngs=rngs)
    for _, prefix in self.steps:
      if not prefix:
        continue
      setattr(self, f'{prefix}_norm', ln(rngs))
      setattr(self, f'{prefix}_attention', mha(
          zero_init_out=temporal_zero_init and attention == 'factorised_self_attention',
          rngs=rngs))
      if attention in patterns.WITH_FC:
        init = nnx.initializers.zeros_init() if temporal_zero_init else \
            nnx.initializers.xavier_uniform()
        setattr(self, f'{prefix}_fc', nnx.Linear(
            hidden_size, hidden_size, dtype=dtype, param_dtype=jnp.float32,
            kernel_init=partitioning.names(init, ('embed', None)),
            bias_init=partitioning.names(nnx.initializers.zeros_init(), ('embed',)), rngs=rngs))
    self.norm2 = ln(rngs)
    self.mlp = MlpBlock(hidden_size, mlp_dim, dropout=dropout, dtype=dtype,
                        gelu_approximate=gelu_approximate, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def step(self, i: int, x, layout: patterns.Layout):
    """The raw update of attention step i (before fc, dropout, residual); tests probe it."""
    grouping, prefix = self.steps[i]
    norm, mha = ((self.norm1, self.attention) if not prefix else
                 (getattr(self, f'{prefix}_norm'), getattr(self, f'{prefix}_attention')))
    return patterns.attend(mha, norm(x), layout, grouping, attention=self.pattern,
                           local_window=self.local_window, global_stride=self.global_stride)

  def __call__(self, x, layout: patterns.Layout | None = None, *, drop_rate=None,
               train: bool = False, rngs: nnx.Rngs | None = None):
    layout = layout or patterns.Layout(None, 0)
    def branch(y):
      y = apply_dropout(self.dropout, y, train=train, rngs=rngs)
      return drop_path(y, drop_rate, train=train, rngs=rngs)
    for i, (grouping, prefix) in enumerate(self.steps):
      y = branch(self.step(i, x, layout))
      if prefix and self.pattern in patterns.WITH_FC:
        fc = getattr(self, f'{prefix}_fc')
        c = layout.num_cls
        if grouping == 'time' and c:  # class tokens skip temporal attention: no update at all
          y = jnp.concatenate([y[:, :c], fc(y[:, c:])], axis=1)
        else:
          y = fc(y)
      x = x + y.astype(x.dtype)                                          # Eq. 1, per step
    x = x + branch(self.mlp(self.norm2(x), train=train, rngs=rngs))     # Eq. 2
    return partitioning.constrain(x, partitioning.BTE)


# config.model.space_cls_average: where TimeSformer's space-only model averages its per-frame class
# tokens. 'before_norm' (default) is the official code (facebookresearch/TimeSformer vit.py: mean
# over frames, then the final LayerNorm). HF transformers' TimesformerModel never averages: it
# returns per-frame logits (B*T, classes) from LayerNorm(class token of each frame); the mean of those
# logits is what 'after_norm' computes (LayerNorm per frame, then the mean; the head is linear).
# Checkpoints imported from HF use 'after_norm' so their logits match transformers' exactly.
SPACE_CLS_AVERAGES = ('before_norm', 'after_norm')

REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,        # recompute everything in backward
    'dots_saveable': jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
    'dots_with_no_batch_dims_saveable':
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(remat) -> str:
  """config.model.remat: False/'none', True/'full', 'dots_saveable', ... -> a REMAT_POLICIES key."""
  if remat is True or remat is False:
    return 'full' if remat else 'none'
  if remat not in REMAT_POLICIES:
    raise ValueError(f'config.model.remat = {remat!r}: use one of {tuple(REMAT_POLICIES)} '
                     '(or True = full, False = none).')
  return remat


def stack_modules(modules):
  """One module whose parameters are the given identical modules' stacked on a new leading axis
  (the layer axis; its logical name is None, i.e. never sharded)."""
  graphdef = nnx.graphdef(modules[0])
  states = [nnx.state(m) for m in modules]
  stacked = nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))
  for _, v in nnx.iter_graph(stacked):
    if isinstance(v, nnx.Variable) and 'out_sharding' in v.get_metadata():
      v.set_metadata('out_sharding', (None,) + tuple(v.get_metadata()['out_sharding']))
  return stacked


class Encoder(nnx.Module):
  """`num_layers` blocks and a final LayerNorm ('encoder_norm' in big_vision).

  remat: recompute each block's activations in the backward pass with a jax.checkpoint policy.
  scan: the blocks' parameters are stacked (leading axis = layer) and applied with jax.lax.scan,
  so compile time and program size do not grow with depth. Both initialise identically: the
  scanned parameters are exactly the unscanned ones, stacked.
  """

  def __init__(self, num_layers: int, hidden_size: int, num_heads: int, mlp_dim: int, *,
               dropout: float = 0.0, stochastic_depth: float = 0.0, remat=False,
               scan: bool = False, layer_norm_eps: float = 1e-6, dtype=jnp.float32,
               space_cls_average: str = 'before_norm', gate_layers=(), rngs: nnx.Rngs,
               **block_kw):
    blocks = [EncoderBlock(hidden_size, num_heads, mlp_dim, dropout=dropout, dtype=dtype,
                           layer_norm_eps=layer_norm_eps, rngs=rngs, **block_kw)
              for _ in range(num_layers)]
    self.blocks = stack_modules(blocks) if scan else nnx.List(blocks)
    self.norm = layer_norm(hidden_size, dtype, rngs, eps=layer_norm_eps)
    self.num_layers, self.scan = num_layers, scan
    self.remat = remat_policy(remat)
    self.drop_rates = tuple(stochastic_depth * i / max(num_layers - 1, 1)
                            for i in range(num_layers))
    self.random = dropout > 0 or stochastic_depth > 0
    # TubeViT image-to-video scaling (§3.6, models/scaling.py): + tanh(alpha_l) * z0 after block l.
    gate_layers = scaling.gate_layers(gate_layers, num_layers)
    self.gates = scaling.ScalingGates(num_layers, gate_layers, rngs=rngs) if gate_layers else \
        nnx.data(None)
    if space_cls_average not in SPACE_CLS_AVERAGES:
      raise ValueError(f'config.model.space_cls_average = {space_cls_average!r}: use one of '
                       f'{SPACE_CLS_AVERAGES}.')
    self.space_cls_average = space_cls_average

  def __call__(self, x, layout: patterns.Layout | None = None, *, train: bool = False,
               rngs: nnx.Rngs | None = None):
    layout = layout or patterns.Layout(None, 0)
    z0 = x
    random = train and self.random
    keys = jax.random.split(dropout_key(rngs), self.num_layers) if random else None
    rates = jnp.asarray(self.drop_rates, jnp.float32) if random and any(self.drop_rates) else None

    def apply(graphdef, state, x, key, rate):
      block = nnx.merge(graphdef, state)
      return block(x, layout, drop_rate=rate, train=train,
                   rngs=None if key is None else compat.host_counted_rngs(dropout=key))
    if self.remat != 'none':
      apply = jax.checkpoint(apply, policy=REMAT_POLICIES[self.remat], static_argnums=(0,),
                             prevent_cse=not self.scan)

    if self.scan:
      graphdef, state = nnx.split(self.blocks)
      def body(x, xs):
        x = apply(graphdef, xs[0], x, xs[1], xs[2])
        return (x if self.gates is None else self.gates(x, z0, xs[3])), None
      x, _ = jax.lax.scan(body, x, (state, keys, rates, jnp.arange(self.num_layers)))
    else:
      for i, block in enumerate(self.blocks):
        graphdef, state = nnx.split(block)
        x = apply(graphdef, state, x, None if keys is None else keys[i],
                  None if rates is None else rates[i])
        if self.gates is not None:
          x = self.gates(x, z0, i)
    if layout.num_cls > 1:  # space-only: one class token per frame, averaged (TimeSformer code)
      c = layout.num_cls
      if self.space_cls_average == 'after_norm':  # HF transformers (see SPACE_CLS_AVERAGES)
        x = self.norm(x)
      x = jnp.concatenate([x[:, :c].mean(axis=1, keepdims=True), x[:, c:]], axis=1)
      return x if self.space_cls_average == 'after_norm' else self.norm(x)
    return self.norm(x)
