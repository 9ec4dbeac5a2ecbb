"""The model: tokenizer -> (+ position) -> encoder -> pooled representation -> head[dataset].

Every paper model is a configuration of this one class (DESIGN §2-4):
  TubeViT      sparse tubes, posemb='sincos3d', attention='joint', head='map'
  ViViT M1     one tubelet tube (2,16,16)/(2,16,16), posemb='learned', attention='joint', head='token'
  ViViT M2     the same with encoder='factorised' (spatial encoder per frame, temporal_layers)
  ViViT M3/M4  attention='factorised_self_attention' / 'factorised_dot_product', head='gap'
  TimeSformer  one 2D-patch tube (1,16,16)/(1,16,16), posemb='learned_space_time', head='token',
               attention in 'space' | 'joint' | 'divided' | 'local_global' | 'axial'

Keys read from `config.model` (required: hidden_size, num_layers, num_heads, mlp_dim, tubes):
  name              'tubevit' | 'vivit' | 'timesformer'; all build VideoViT. The name only sets
                    the defaults of posemb, head and attention (NAME_DEFAULTS below).
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
  head_mlp_dim=mlp_dim  the MAP head's MLP.
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

from sparse_tubes.models import attention_patterns as patterns
from sparse_tubes.models import partitioning, position, tokenizers
from sparse_tubes.models.encoder import Encoder, apply_dropout
from sparse_tubes.models.heads import MAPHead, check_dataset, dataset_heads, gap

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
POSEMBS = ('sincos3d', 'learned', 'learned_space_time')
POOLS = ('map', 'gap', 'token')
ENCODERS = ('single', 'factorised')
NAME_DEFAULTS = {
    'tubevit': dict(posemb='sincos3d', head='map', attention='joint'),
    'vivit': dict(posemb='learned', head='token', attention='joint'),
    'timesformer': dict(posemb='learned_space_time', head='token', attention='divided'),
}


def _choice(cfg, key, default, allowed):
  value = cfg.get(key, default)
  if value not in allowed:
    raise ValueError(f'config.model.{key} = {value!r}: use one of {tuple(allowed)}.')
  return value


def _cls_param(d, rngs):
  init = partitioning.names(nnx.initializers.zeros_init(), (None, None, 'embed'))  # big_vision
  return nnx.Param(init(rngs.params(), (1, 1, d), jnp.float32))


class VideoViT(nnx.Module):

  def __init__(self, model_cfg, num_classes: Mapping[str, int], *, rngs: nnx.Rngs):
    cfg = model_cfg
    name = cfg.get('name', 'tubevit')
    if name not in NAME_DEFAULTS:
      raise ValueError(f'config.model.name = {name!r}: known models are {sorted(NAME_DEFAULTS)}.')
    dflt = NAME_DEFAULTS[name]
    self.dtype = DTYPES[_choice(cfg, 'dtype', 'float32', DTYPES)]
    self.posemb_kind = _choice(cfg, 'posemb', dflt['posemb'], POSEMBS)
    self.pool_kind = _choice(cfg, 'head', dflt['head'], POOLS)
    self.attention = cfg.get('attention', dflt['attention'])
    self.encoder_kind = _choice(cfg, 'encoder', 'single', ENCODERS)
    self.spatial_pool = _choice(cfg, 'spatial_pool', 'token', ('token', 'gap'))
    self.posemb_tau = float(cfg.get('posemb_tau', 10000.0))
    patterns.steps(self.attention, cfg.get('factorised_order', 'space_time'))  # checks both keys
    attention_impl = cfg.get('attention_impl', 'auto')
    d = int(cfg.hidden_size)

    tokenizers.validate_tubes(cfg)
    self.tokenizer = tokenizers.SparseTubes(
        cfg.tubes, d, image_tube=tokenizers.image_tube_index(cfg),
        in_channels=int(cfg.get('in_channels', 3)), variant=cfg.get('tube_variant', 'conv'),
        fold=cfg.get('space_to_depth', (1, 2, 2)),
        interpolated_kernel=cfg.get('interpolated_kernel', (8, 8, 8)), dtype=self.dtype, rngs=rngs)
    self._check_combinations(len(self.tokenizer.tubes))
    use_cls = self.pool_kind == 'token'
    factorised = self.encoder_kind == 'factorised'

    self.posemb = nnx.data(None)  # a module slot, filled for the learned embeddings
    if self.posemb_kind != 'sincos3d':
      input_shape = cfg.get('input_shape', None)
      if input_shape is None:
        raise ValueError(f"config.model.posemb = '{self.posemb_kind}' needs "
                         'config.model.input_shape = (T, H, W, C), the clip shape that sizes the '
                         'learned tables.')
      tokenizers.validate_tubes(cfg, tuple(input_shape))
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
    self.dropout = nnx.Dropout(float(cfg.get('dropout', 0.0)))
    enc_kw = dict(
        dropout=float(cfg.get('dropout', 0.0)),
        stochastic_depth=float(cfg.get('stochastic_depth', 0.0)), attention_impl=attention_impl,
        remat=cfg.get('remat', False), scan=bool(cfg.get('scan_layers', False)),
        layer_norm_eps=float(cfg.get('layer_norm_eps', 1e-6)),
        gelu_approximate=bool(cfg.get('gelu_approximate', False)), dtype=self.dtype, rngs=rngs)
    heads_mlp = (d, int(cfg.num_heads), int(cfg.mlp_dim))
    if factorised:
      if self.spatial_pool == 'token':
        self.spatial_cls_token = _cls_param(d, rngs)
      self.spatial_encoder = Encoder(int(cfg.num_layers), *heads_mlp, **enc_kw)
      self.temporal_encoder = Encoder(int(cfg.get('temporal_layers', 4)), *heads_mlp, **enc_kw)
    else:
      self.encoder = Encoder(
          int(cfg.num_layers), *heads_mlp, attention=self.attention,
          space_cls_average=cfg.get('space_cls_average', 'before_norm'),
          factorised_order=cfg.get('factorised_order', 'space_time'),
          temporal_zero_init=bool(cfg.get('temporal_zero_init', True)),
          local_window=cfg.get('local_window', None),
          global_stride=tuple(cfg.get('global_stride', (2, 2, 2))),
          gate_layers=cfg.get('scaling_gate_layers', ()), **enc_kw)
    self.pool = nnx.data(None)  # a module slot, filled for head='map'
    if self.pool_kind == 'map':
      self.pool = MAPHead(d, int(cfg.num_heads), int(cfg.get('head_mlp_dim', cfg.mlp_dim)),
                          attention_impl=attention_impl, dtype=self.dtype, rngs=rngs)
    self.heads = dataset_heads(d, num_classes, rngs=rngs)

  def _check_combinations(self, num_tubes: int):
    grid_needed = [k for k, bad in (
        (f"config.model.attention = '{self.attention}'", self.attention != 'joint'),
        ("config.model.posemb = 'learned_space_time'", self.posemb_kind == 'learned_space_time'),
        ("config.model.encoder = 'factorised'", self.encoder_kind == 'factorised')) if bad]
    if grid_needed and num_tubes != 1:
      raise ValueError(
          f'{grid_needed[0]} needs the tokens on one (time, height, width) grid, i.e. a single '
          f'dense tube, but config.model.tubes has {num_tubes}: use one tube (2D patches '
          "(1,16,16) or tubelets (2,16,16), stride = kernel), or config.model.attention = 'joint' "
          "(TubeViT's sparse tubes).")
    if self.pool_kind == 'token' and self.attention in patterns.NO_CLASS_TOKEN:
      raise ValueError(
          f"config.model.attention = '{self.attention}' (ViViT M3/M4) has no class token (ViViT "
          "§3.3): set config.model.head = 'gap' or 'map'.")
    if self.encoder_kind == 'factorised' and self.attention != 'joint':
      raise ValueError(
          "config.model.encoder = 'factorised' (ViViT M2) attends jointly inside each encoder "
          f"(spatial per frame, then temporal): set config.model.attention = 'joint', not "
          f"'{self.attention}'.")

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


MODELS = {name: VideoViT for name in NAME_DEFAULTS}


def build_model(model_cfg, num_classes: Mapping[str, int], *, rngs: nnx.Rngs) -> nnx.Module:
  name = model_cfg.get('name', None)
  if name not in MODELS:
    raise ValueError(f'config.model.name = {name!r}: known models are {sorted(MODELS)}.')
  return MODELS[name](model_cfg, num_classes, rngs=rngs)
