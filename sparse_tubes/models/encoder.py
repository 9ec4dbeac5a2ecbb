"""Pre-LN transformer encoder (ViT; TubeViT §3.1 Eqs. 1-2):
    y = MSA(LN(z)) + z
    z = MLP(LN(y)) + y
with dropout (big_vision's Encoder1DBlock) and stochastic depth (per-example drop path, Huang et
al. 2016), its rate rising linearly with depth from 0 to `config.model.stochastic_depth`.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from sparse_tubes.models import partitioning
from sparse_tubes.models.attention import MultiHeadAttention


def layer_norm(hidden_size: int, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
      hidden_size, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
      scale_init=partitioning.names(nnx.initializers.ones_init(), ('embed',)),
      bias_init=partitioning.names(nnx.initializers.zeros_init(), ('embed',)), rngs=rngs)


def dropout_key(rngs: nnx.Rngs | None) -> jax.Array:
  if rngs is None:
    raise ValueError('train=True with dropout or stochastic_depth > 0 needs random keys: call '
                     'model(x, dataset=..., train=True, rngs=nnx.Rngs(dropout=key)).')
  return rngs.dropout()


def drop_path(x: jax.Array, rate: float, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
  """Stochastic depth: drop the whole residual branch per example, scale the kept ones."""
  if not train or rate == 0.0:
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
               rngs: nnx.Rngs):
    def dense(n_in, n_out, axes):
      return nnx.Linear(
          n_in, n_out, dtype=dtype, param_dtype=jnp.float32,
          kernel_init=partitioning.names(nnx.initializers.xavier_uniform(), axes),
          bias_init=partitioning.names(nnx.initializers.normal(stddev=1e-6), axes[1:]), rngs=rngs)
    self.fc1 = dense(hidden_size, mlp_dim, ('embed', 'mlp'))
    self.fc2 = dense(mlp_dim, hidden_size, ('mlp', 'embed'))
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
    x = nnx.gelu(self.fc1(x))
    x = apply_dropout(self.dropout, x, train=train, rngs=rngs)
    return self.fc2(x)


class EncoderBlock(nnx.Module):
  """LN -> MHA -> dropout -> drop path -> residual; LN -> MLP -> dropout -> drop path -> residual."""

  def __init__(self, hidden_size: int, num_heads: int, mlp_dim: int, *, dropout: float = 0.0,
               drop_path: float = 0.0, attention_impl: str = 'auto', dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.norm1 = layer_norm(hidden_size, dtype, rngs)
    self.attention = MultiHeadAttention(hidden_size, num_heads, attention_impl=attention_impl,
                                        dtype=dtype, rngs=rngs)
    self.norm2 = layer_norm(hidden_size, dtype, rngs)
    self.mlp = MlpBlock(hidden_size, mlp_dim, dropout=dropout, dtype=dtype, rngs=rngs)
    self.dropout, self.drop_path = nnx.Dropout(dropout), drop_path

  def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
    def branch(y):
      y = apply_dropout(self.dropout, y, train=train, rngs=rngs)
      return drop_path(y, self.drop_path, train=train, rngs=rngs)
    x = x + branch(self.attention(self.norm1(x)))                      # Eq. 1
    x = x + branch(self.mlp(self.norm2(x), train=train, rngs=rngs))   # Eq. 2
    return partitioning.constrain(x, partitioning.BTE)


class Encoder(nnx.Module):
  """`num_layers` blocks and a final LayerNorm ('encoder_norm' in big_vision).

  remat=True recomputes each block's activations in the backward pass (nnx.remat), trading
  compute for memory on long token sequences.
  """

  def __init__(self, num_layers: int, hidden_size: int, num_heads: int, mlp_dim: int, *,
               dropout: float = 0.0, stochastic_depth: float = 0.0, attention_impl: str = 'auto',
               remat: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
    self.blocks = nnx.List([
        EncoderBlock(hidden_size, num_heads, mlp_dim, dropout=dropout,
                     drop_path=stochastic_depth * i / max(num_layers - 1, 1),
                     attention_impl=attention_impl, dtype=dtype, rngs=rngs)
        for i in range(num_layers)])
    self.norm = layer_norm(hidden_size, dtype, rngs)
    self.remat = remat

  def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
    def apply(block, x, rngs):
      return block(x, train=train, rngs=rngs)
    if self.remat:
      apply = nnx.remat(apply)
    for block in self.blocks:
      x = apply(block, x, rngs)
    return self.norm(x)
