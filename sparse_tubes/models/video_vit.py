"""The model: tokenizer -> (+ position) -> encoder -> pooled representation -> head[dataset].

Every paper model is a configuration of this one class:
  TubeViT      sparse tubes, posemb='sincos3d', attention='joint', head='map'
  ViViT M1     one tubelet tube (2,16,16)/(2,16,16), posemb='learned', attention='joint', head='token'
  ViViT M2     the same with encoder='factorised' (spatial encoder per frame, temporal_layers)
  ViViT M3/M4  attention='factorised_self_attention' / 'factorised_dot_product', head='gap'
  TimeSformer  one 2D-patch tube (1,16,16)/(1,16,16), posemb='learned_space_time', head='token',
               attention in 'space' | 'joint' | 'divided' | 'local_global' | 'axial'

Keys of `config.model`, with their defaults and types in `sparse_tubes.defaults.model()` (checked
by `sparse_tubes.config.model_config`; required: name, hidden_size, num_layers, num_heads, mlp_dim,
tubes):
  name              'tubevit' | 'vivit' | 'timesformer'; all build VideoViT. The name only sets
                    the defaults of posemb, head and attention (defaults.NAME_DEFAULTS) when they
                    are left ''.
  hidden_size, num_layers, num_heads, mlp_dim   the ViT encoder (num_layers: the spatial encoder's
                    for encoder='factorised').
  tubes             ((kernel), (stride), (offset)) per tube, each (t, h, w); see tokenizers.py.
  image_tube=None   index of the 2D-patch tube images go through; None: no image path.
  tube_variant='conv'   'conv' | 'space_to_depth' | 'interpolated' (TubeViT §3.4, tokenizers.py).
  space_to_depth=(1, 2, 2)        fold (t, h, w) of tube_variant='space_to_depth'.
  interpolated_kernel=(8, 8, 8)   the one learned kernel of tube_variant='interpolated'.
  in_channels=3
  posemb            'sincos3d' | 'learned' | 'learned_space_time' (position.py). Default by name:
                    tubevit 'sincos3d', vivit 'learned', timesformer 'learned_space_time'.
  posemb_tau=10000.0    sincos3d's tau.
  input_shape=None  (T, H, W, C) of the largest clip: sizes the learned tables (required by the
                    learned posembs).
  head              pooling before the per-dataset linear heads: 'token' (class token) | 'gap' |
                    'map'. Default by name: tubevit 'map', vivit 'token', timesformer 'token'.
  head_mlp_dim=0    0: TubeViT's attention pooling (probe, attention, LayerNorm; paper §3.1);
                    > 0: big_vision's MAPHead, with an MLP block of this width.
  attention         the encoder's space/time pattern (attention_patterns.py): 'joint' | 'space' |
                    'divided' | 'local_global' | 'axial' | 'factorised_self_attention' (ViViT M3) |
                    'factorised_dot_product' (ViViT M4). Default 'joint' (timesformer: 'divided').
                    All but 'joint' need a single dense tube.
  factorised_order='space_time'   ViViT M3's order, or 'time_space'.
  temporal_zero_init=True   TimeSformer's `<p>_fc` and ViViT M3's temporal attention output start
                    at zero, so each block starts as the image model.
  local_window=None     local_global's window in tokens (t, h, w); None = (n_t, n_h/2, n_w/2).
  global_stride=(2, 2, 2)   local_global's sparse global stride (t, h, w).
  encoder='single'  or 'factorised' (ViViT M2: spatial encoder per frame, then temporal encoder).
  temporal_layers=4     L_t, the temporal encoder's depth (encoder='factorised').
  spatial_pool='token'  the spatial encoder's per-frame vector: 'token' (its class token) | 'gap'.
  dropout=0.0, stochastic_depth=0.0   (drop path rate rising linearly to this over the layers)
  dtype='float32'   activations/compute: 'float32' | 'bfloat16'; parameters stay float32.
  remat=False       False/'none' | True/'full' | 'dots_saveable' | 'dots_with_no_batch_dims_saveable'.
  scan_layers=False     jax.lax.scan over the (identical) blocks: compile time constant in depth.
                    Parameters then live at 'encoder/blocks/<name>' with a leading layer axis
                    (logical name None) instead of 'encoder/blocks/<i>/<name>'.
  attention_impl='auto'   'auto' | 'xla' | 'einsum' | 'splash' (TPU Pallas) | 'cudnn' (GPU) (attention.py).
  scaling_gate_layers=()  TubeViT image-to-video scaling (§3.6, scaling.py): the layers that add
                    tanh(alpha) * z0 (alpha zero at init); an int k means layers k..L-1.
  layer_norm_eps=1e-6, gelu_approximate=False   to match published checkpoints exactly (HF
                    TimeSformer: eps 1e-6, exact gelu; HF ViViT: eps 1e-6, 'gelu_fast' = the tanh
                    approximation, i.e. gelu_approximate=True).
  space_cls_average='before_norm'   space-only TimeSformer: average the per-frame class tokens
                    before the final LayerNorm (official code) or 'after_norm' (= the mean of HF
                    transformers' per-frame logits; set by checkpoints imported from HF).

Parameter paths: tokenizer/{convs/<i>/{kernel,bias} | kernel, bias}, posemb/{tables/<i>, cls,
space, time, time_cls}, cls_token (1,1,D), spatial_cls_token (M2), encoder/... (encoder.py) or
spatial_encoder/... + temporal_encoder/... (M2), pool/... (MAP), heads/<dataset>/{kernel,bias}.
"""
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from sparse_tubes import compat
from sparse_tubes import config as config_lib
from sparse_tubes.defaults import ENCODERS, POOLS, POSEMBS  # the schema's choices
from sparse_tubes.models import attention_patterns as patterns
from sparse_tubes.models import partitioning, position, tokenizers
from sparse_tubes.models.encoder import Encoder, apply_dropout
from sparse_tubes.models.heads import MAPHead, check_dataset, dataset_heads, gap

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _cls_param(d, rngs):
  init = partitioning.names(nnx.initializers.zeros_init(), (None, None, 'embed'))  # big_vision
  return nnx.Param(init(rngs.params(), (1, 1, d), jnp.float32))


class VideoViT(nnx.Module):

  def __init__(self, model_cfg, num_classes: Mapping[str, int], *, rngs: nnx.Rngs):
    cfg = config_lib.model_config(model_cfg)  # defaults filled in, checked, names resolved
    self.dtype = DTYPES[cfg.dtype]
    self.posemb_kind = cfg.posemb
    self.pool_kind = cfg.head
    self.attention = cfg.attention
    self.encoder_kind = cfg.encoder
    self.spatial_pool = cfg.spatial_pool
    self.posemb_tau = float(cfg.posemb_tau)
    d = cfg.hidden_size

    tokenizers.validate_tubes(cfg)
    self.tokenizer = tokenizers.SparseTubes(
        cfg.tubes, d, image_tube=tokenizers.image_tube_index(cfg), in_channels=cfg.in_channels,
        variant=cfg.tube_variant, fold=cfg.space_to_depth,
        interpolated_kernel=cfg.interpolated_kernel, dtype=self.dtype, rngs=rngs)
    use_cls = self.pool_kind == 'token'
    factorised = self.encoder_kind == 'factorised'

    self.posemb = nnx.data(None)  # a module slot, filled for the learned embeddings
    if self.posemb_kind != 'sincos3d':
      input_shape = tuple(cfg.input_shape)
      tokenizers.validate_tubes(cfg, input_shape)
      _, thw = tokenizers.clip_shape(input_shape, self.tokenizer.in_channels)
      grids = [tokenizers.tube_grid(*tube, thw) for tube in self.tokenizer.tubes]
      if self.posemb_kind == 'learned':
        self.posemb = position.LearnedPosEmb(
            grids, d, class_token=use_cls or (factorised and self.spatial_pool == 'token'), rngs=rngs)
      else:
        self.posemb = position.SpaceTimePosEmb(
            grids[0], d, time=self.attention != 'space',
            class_token=(self.spatial_pool == 'token') if factorised else use_cls,
            time_cls=factorised and use_cls, rngs=rngs)
    self.cls_token = _cls_param(d, rngs) if use_cls else nnx.data(None)
    self.spatial_cls_token = nnx.data(None)
    # Dropout on the embedded tokens, as big_vision's ViT.
    self.dropout = nnx.Dropout(float(cfg.dropout))
    enc_kw = dict(
        dropout=float(cfg.dropout), stochastic_depth=float(cfg.stochastic_depth),
        attention_impl=cfg.attention_impl, remat=cfg.remat, scan=cfg.scan_layers,
        layer_norm_eps=float(cfg.layer_norm_eps), gelu_approximate=cfg.gelu_approximate,
        dtype=self.dtype, rngs=rngs)
    heads_mlp = (d, cfg.num_heads, cfg.mlp_dim)
    if factorised:
      if self.spatial_pool == 'token':
        self.spatial_cls_token = _cls_param(d, rngs)
      self.spatial_encoder = Encoder(cfg.num_layers, *heads_mlp, **enc_kw)
      self.temporal_encoder = Encoder(cfg.temporal_layers, *heads_mlp, **enc_kw)
    else:
      self.encoder = Encoder(
          cfg.num_layers, *heads_mlp, attention=self.attention,
          space_cls_average=cfg.space_cls_average, factorised_order=cfg.factorised_order,
          temporal_zero_init=cfg.temporal_zero_init, local_window=cfg.local_window,
          global_stride=tuple(cfg.global_stride), gate_layers=cfg.scaling_gate_layers, **enc_kw)
    self.pool = nnx.data(None)  # a module slot, filled for head='map'
    if self.pool_kind == 'map':
      self.pool = MAPHead(d, cfg.num_heads, cfg.head_mlp_dim, attention_impl=cfg.attention_impl,
                          dtype=self.dtype, rngs=rngs)
    self.heads = dataset_heads(d, num_classes, rngs=rngs)

  def _embed(self, x):
    """Tokens + position, (B, N, D), and the single tube's grid (None for sparse tube sets)."""
    tok = self.tokenizer(x)
    grid = tok.grids[0][1] if len(tok.grids) == 1 else None
    if self.posemb_kind == 'sincos3d':
      pos = jnp.asarray(position.sincos_3d(tok.centres, tok.tokens.shape[-1], self.posemb_tau))
    elif self.posemb_kind == 'learned':
      pos = self.posemb(tok.grids)
    else:
      pos = self.posemb(grid, with_time=self.encoder_kind == 'single')
    return tok.tokens + pos.astype(self.dtype)[None], grid

  def _with_cls(self, z, cls_param, pos_param, copies: int = 1):
    c = cls_param[...]
    if pos_param is not None:
      c = c + pos_param[...]
    c = jnp.broadcast_to(c.astype(self.dtype), (z.shape[0], copies, z.shape[-1]))
    return jnp.concatenate([c, z], axis=1)

  def _pool(self, z, num_cls: int):
    if self.pool_kind == 'token':
      return z[:, 0]
    return self.pool(z[:, num_cls:]) if self.pool is not None else gap(z[:, num_cls:])

  def representation(self, x: jax.Array, *, train: bool = False,
                     rngs: nnx.Rngs | None = None) -> jax.Array:
    """Pooled features (B, hidden_size) of a video (B,T,H,W,C) or an image (B,H,W,C)."""
    if self.encoder_kind == 'factorised':
      return self._factorised(x, train=train, rngs=rngs)
    z, grid = self._embed(x)
    num_cls = 0
    if self.cls_token is not None:
      # Space-only (TimeSformer code): one class-token copy per frame, averaged at the end.
      num_cls = grid[0] if self.attention == 'space' else 1
      pos = getattr(self.posemb, 'cls', None) if self.posemb is not None else None
      z = self._with_cls(z, self.cls_token, pos, num_cls)
    z = apply_dropout(self.dropout, z, train=train, rngs=rngs)
    z = self.encoder(z, patterns.Layout(grid, num_cls), train=train, rngs=rngs)
    return self._pool(z, min(num_cls, 1))

  def _factorised(self, x, *, train, rngs):
    """ViViT M2 (§3.3, Fig. 3): spatial encoder on each frame index's tokens -> one vector per
    time step (its class token or the mean) -> temporal encoder over the n_t vectors."""
    z, (nt, nh, nw) = self._embed(x)
    b, d = z.shape[0], z.shape[-1]
    z = z.reshape(b * nt, nh * nw, d)
    c = 0
    if self.spatial_cls_token is not None:
      c = 1
      z = self._with_cls(z, self.spatial_cls_token,
                         getattr(self.posemb, 'cls', None) if self.posemb is not None else None)
    z = apply_dropout(self.dropout, z, train=train, rngs=rngs)
    z = self.spatial_encoder(z, patterns.Layout(None, c), train=train, rngs=rngs)
    frames = (z[:, 0] if c else gap(z)).reshape(b, nt, d)
    frames = partitioning.constrain(frames, partitioning.BTE)
    if isinstance(self.posemb, position.SpaceTimePosEmb):
      frames = frames + self.posemb.time_table(nt).astype(frames.dtype)[None]
    c = 0
    if self.cls_token is not None:
      c = 1
      pos = self.posemb.time_cls if isinstance(self.posemb, position.SpaceTimePosEmb) else None
      frames = self._with_cls(frames, self.cls_token, pos)
    z = self.temporal_encoder(frames, patterns.Layout(None, c), train=train, rngs=rngs)
    return self._pool(z, c)

  def __call__(self, x: jax.Array, *, dataset: str, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """float32 logits (B, num_classes[dataset])."""
    check_dataset(self.heads, dataset)  # before any compute: a clear error, not a KeyError
    h = self.representation(x, train=train, rngs=rngs)
    return self.heads[dataset](h.astype(jnp.float32))


def build_model(model_cfg, num_classes: Mapping[str, int], *, rngs: nnx.Rngs) -> nnx.Module:
  """Every name of defaults.NAME_DEFAULTS is a VideoViT; `model_cfg` may be partial (a dict of
  the keys that differ from defaults.model())."""
  return VideoViT(model_cfg, num_classes, rngs=rngs)


def abstract_model(model_cfg, num_classes: Mapping[str, int]):
  """(graphdef, abstract Param state) of the model: shapes only, nothing allocated, no sharding
  annotations. Host-counted RNG streams keep the traced build linear in the model's size
  (compat.host_counted_rngs)."""
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: build_model(model_cfg, num_classes,
                                               rngs=compat.host_counted_rngs(params=0)))
  return nnx.split(model, nnx.Param)
