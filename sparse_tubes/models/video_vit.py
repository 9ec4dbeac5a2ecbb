"""The model: tokenizer -> (+ position) -> encoder -> pooled representation -> head[dataset].

TubeViT (DESIGN §2) is the 'tubevit' configuration: sparse tubes, fixed 3D sin/cos at tube centres,
a joint-attention encoder, MAP pooling and one linear head per dataset.

Keys read from `config.model` (defaults for the optional ones):
  name, hidden_size, num_layers, num_heads, mlp_dim, tubes, image_tube,
  dropout=0.0, stochastic_depth=0.0, posemb='sincos3d' ('sincos3d'|'learned'), head='map'
  ('map'|'gap'), dtype='float32' ('float32'|'bfloat16', compute only), remat=False,
  attention_impl='auto' ('auto'|'xla'|'einsum'), in_channels=3, posemb_tau=10000.0,
  head_mlp_dim=mlp_dim (MAP head's MLP), input_shape=None ((T, H, W, C) of the largest clip, sizing
  the learned tables; required by posemb='learned').
"""
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from sparse_tubes.models import position, tokenizers
from sparse_tubes.models.encoder import Encoder, apply_dropout
from sparse_tubes.models.heads import MAPHead, check_dataset, dataset_heads, gap

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
POSEMBS = ('sincos3d', 'learned')
POOLS = ('map', 'gap')


def _choice(cfg, key, default, allowed):
  value = cfg.get(key, default)
  if value not in allowed:
    raise ValueError(f'config.model.{key} = {value!r}: use one of {tuple(allowed)}.')
  return value


class VideoViT(nnx.Module):

  def __init__(self, model_cfg, num_classes: Mapping[str, int], *, rngs: nnx.Rngs):
    cfg = model_cfg
    self.dtype = DTYPES[_choice(cfg, 'dtype', 'float32', DTYPES)]
    self.posemb_kind = _choice(cfg, 'posemb', 'sincos3d', POSEMBS)
    self.pool_kind = _choice(cfg, 'head', 'map', POOLS)
    self.posemb_tau = float(cfg.get('posemb_tau', 10000.0))
    attention_impl = cfg.get('attention_impl', 'auto')
    d = int(cfg.hidden_size)

    tokenizers.validate_tubes(cfg)
    self.tokenizer = tokenizers.SparseTubes(
        cfg.tubes, d, image_tube=cfg.image_tube, in_channels=int(cfg.get('in_channels', 3)),
        dtype=self.dtype, rngs=rngs)
    self.posemb = nnx.data(None)  # a module slot, filled for posemb='learned'
    if self.posemb_kind == 'learned':
      input_shape = cfg.get('input_shape', None)
      if input_shape is None:
        raise ValueError("config.model.posemb = 'learned' needs config.model.input_shape = "
                         '(T, H, W, C), the clip shape that sizes the learned tables.')
      tokenizers.validate_tubes(cfg, tuple(input_shape))
      _, thw = tokenizers.clip_shape(input_shape, self.tokenizer.in_channels)
      grids = [tokenizers.tube_grid(*tube, thw) for tube in self.tokenizer.tubes]
      self.posemb = position.LearnedPosEmb(grids, d, rngs=rngs)
    # Dropout on the embedded tokens, as big_vision's ViT.
    self.dropout = nnx.Dropout(float(cfg.get('dropout', 0.0)))
    self.encoder = Encoder(
        int(cfg.num_layers), d, int(cfg.num_heads), int(cfg.mlp_dim),
        dropout=float(cfg.get('dropout', 0.0)),
        stochastic_depth=float(cfg.get('stochastic_depth', 0.0)), attention_impl=attention_impl,
        remat=bool(cfg.get('remat', False)), dtype=self.dtype, rngs=rngs)
    self.pool = nnx.data(None)  # a module slot, filled for head='map'
    if self.pool_kind == 'map':
      self.pool = MAPHead(d, int(cfg.num_heads), int(cfg.get('head_mlp_dim', cfg.mlp_dim)),
                          attention_impl=attention_impl, dtype=self.dtype, rngs=rngs)
    self.heads = dataset_heads(d, num_classes, rngs=rngs)

  def representation(self, x: jax.Array, *, train: bool = False,
                     rngs: nnx.Rngs | None = None) -> jax.Array:
    """Pooled features (B, hidden_size) of a video (B,T,H,W,C) or an image (B,H,W,C)."""
    tok = self.tokenizer(x)
    if self.posemb_kind == 'sincos3d':
      pos = jnp.asarray(position.sincos_3d(tok.centres, tok.tokens.shape[-1], self.posemb_tau))
    else:
      pos = self.posemb(tok.grids)
    z = tok.tokens + pos.astype(self.dtype)[None]
    z = apply_dropout(self.dropout, z, train=train, rngs=rngs)
    z = self.encoder(z, train=train, rngs=rngs)
    return self.pool(z) if self.pool is not None else gap(z)

  def __call__(self, x: jax.Array, *, dataset: str, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """float32 logits (B, num_classes[dataset])."""
    check_dataset(self.heads, dataset)  # before any compute: a clear error, not a KeyError
    h = self.representation(x, train=train, rngs=rngs)
    return self.heads[dataset](h.astype(jnp.float32))


MODELS = {'tubevit': VideoViT}


def build_model(model_cfg, num_classes: Mapping[str, int], *, rngs: nnx.Rngs) -> nnx.Module:
  name = model_cfg.get('name', None)
  if name not in MODELS:
    raise ValueError(f'config.model.name = {name!r}: known models are {sorted(MODELS)}.')
  return MODELS[name](model_cfg, num_classes, rngs=rngs)
