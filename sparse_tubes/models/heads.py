"""Pooling and classifiers. TubeViT has no class token: attention pooling over all tokens, then one
linear layer per dataset (TubeViT Fig. 2, App. A: joint training gives each dataset its own head).
"""
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from sparse_tubes.models import partitioning
from sparse_tubes.models.attention import MultiHeadAttention
from sparse_tubes.models.encoder import MlpBlock, layer_norm


def gap(x: jax.Array) -> jax.Array:
  """Global average pool over tokens: (B, N, D) -> (B, D)."""
  return jnp.mean(x, axis=1)


class MAPHead(nnx.Module):
  """Multihead attention pooling: a learned probe query attends over all tokens.

  mlp_dim = 0 is TubeViT's pooling (paper §3.1, Fig. 2: attention pooling of all tokens into one
  vector, then the FC layer): LN(attention(probe, tokens)). mlp_dim > 0 is big_vision's MAPHead,
  x = attention(probe, tokens); x + MLP(LN(x)), whose MLP adds 2 * hidden * mlp_dim parameters
  (5M for TubeViT-B). Probe and attention kernels xavier-uniform."""

  def __init__(self, hidden_size: int, num_heads: int, mlp_dim: int, *,
               attention_impl: str = 'auto', dtype=jnp.float32, rngs: nnx.Rngs):
    init = partitioning.names(nnx.initializers.xavier_uniform(), (None, None, 'embed'))
    self.probe = nnx.Param(init(rngs.params(), (1, 1, hidden_size), jnp.float32))
    self.attention = MultiHeadAttention(hidden_size, num_heads, attention_impl=attention_impl,
                                        dtype=dtype, rngs=rngs)
    self.norm = layer_norm(hidden_size, dtype, rngs)
    self.mlp = MlpBlock(hidden_size, mlp_dim, dtype=dtype, rngs=rngs) if mlp_dim else nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = self.attention(probe, x)
    x = self.norm(x) if self.mlp is None else x + self.mlp(self.norm(x))
    return x[:, 0]


def dataset_heads(hidden_size: int, num_classes: Mapping[str, int], *,
                  rngs: nnx.Rngs) -> nnx.Dict:
  """One linear classifier per dataset name, zero-initialised (big_vision's head_zeroinit), run in
  float32. Parameters live at ('heads', <dataset>, 'kernel' | 'bias')."""
  if not num_classes:
    raise ValueError('num_classes is empty: give {dataset name: number of classes}.')
  zeros = nnx.initializers.zeros_init()
  return nnx.Dict({
      name: nnx.Linear(hidden_size, int(n), dtype=jnp.float32, param_dtype=jnp.float32,
                       kernel_init=partitioning.names(zeros, ('embed', 'vocab')),
                       bias_init=partitioning.names(zeros, ('vocab',)), rngs=rngs)
      for name, n in sorted(num_classes.items())})


def check_dataset(heads: nnx.Dict, dataset: str) -> None:
  if dataset not in heads:
    raise ValueError(f'no head for dataset {dataset!r}; known heads: {sorted(heads.keys())}. '
                     'Pass one of these names, or add the dataset to num_classes.')
