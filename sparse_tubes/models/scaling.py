"""TubeViT image-to-video scaling (§3.6): the gated connection added to the layers of a large image
ViT that see tube tokens it was not trained on,

    z = MLP(LN(y)) + y + tanh(alpha) * z0,

where y is the block's output after attention, z0 the encoder's input tokens (tubes + position)
and alpha a learned scalar per gated layer, zero at init: the model starts exactly as the image
ViT it was built from, and learns how much of the raw tube tokens each later layer reads.

`config.model.scaling_gate_layers`: () (none, the default), an int k (layers k .. L-1, i.e. the
layers after the frozen ones when `config.freeze.layers_before = k`), or a sequence of layer
indices. Parameters: 'encoder/gates/alpha' (num_layers,), with a static mask for the ungated layers
(their alpha never moves: its gradient is zero).
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sparse_tubes.models import partitioning


def gate_layers(value, num_layers: int) -> tuple[int, ...]:
  """config.model.scaling_gate_layers -> sorted layer indices."""
  if value is None or value == ():
    return ()
  if isinstance(value, int) and not isinstance(value, bool):
    if not 0 <= value <= num_layers:
      raise ValueError(f'config.model.scaling_gate_layers = {value}: an int k gates layers k..L-1 '
                       f'and needs 0 <= k <= num_layers = {num_layers}.')
    return tuple(range(value, num_layers))
  layers = tuple(sorted({int(i) for i in value}))
  bad = [i for i in layers if not 0 <= i < num_layers]
  if bad:
    raise ValueError(f'config.model.scaling_gate_layers = {tuple(value)}: layers {bad} do not '
                     f'exist (0 .. {num_layers - 1}).')
  return layers


class ScalingGates(nnx.Module):
  """tanh(alpha_l) * z0 added after block l, for the gated layers l."""

  def __init__(self, num_layers: int, layers: Sequence[int], *, rngs: nnx.Rngs):
    self.layers = tuple(layers)
    self.mask = tuple(float(i in self.layers) for i in range(num_layers))  # static
    init = partitioning.names(nnx.initializers.zeros_init(), (None,))
    self.alpha = nnx.Param(init(rngs.params(), (num_layers,), jnp.float32))

  def __call__(self, x: jax.Array, z0: jax.Array, layer) -> jax.Array:
    """x: block `layer`'s output (y + MLP(LN(y))); layer: a Python int or a traced index (scan)."""
    g = jnp.tanh(jnp.asarray(self.alpha[...])[layer]) * jnp.asarray(self.mask, jnp.float32)[layer]
    return x + g.astype(x.dtype) * z0.astype(x.dtype)
