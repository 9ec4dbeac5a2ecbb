"""Inflate an image ViT (vit.ImageViT) into any model of the zoo (ViViT, TimeSformer, TubeViT).

Given the freshly initialised parameters of the target model (a pure dict) and the options of
`config.init_from`, every parameter the image ViT has an answer for is replaced; the rest keep their
init and are listed in the report.

  tokenizer   each tube's kernel (kt, kh, kw, C, D): the image patch kernel resized to (kh, kw)
              (kernel_resize='pi': FlexiViT's pseudo-inverse resize, the token of a bilinearly
              resized patch is the image token of the patch; 'bilinear': resized and scaled by the
              area ratio), then inflated over kt (tube_init='central_frame': zeros but frame kt//2,
              ViViT's best; 'average': replicated and divided by kt, I3D's filter inflation).
              tube_variant='space_to_depth' gets the same kernel folded; 'interpolated' its base
              kernel. Biases: the patch bias.
  posemb      'learned': every tube's (n_t, n_h, n_w) table = the image table resized (bilinear)
              to (n_h, n_w), repeated over time (posemb='repeat'; 'init' keeps the init);
              'learned_space_time' (TimeSformer): space = the resized image table, time = 0
              (TimeSformer's init: identical frames then give the image tokens); the class token's
              entry = the image one (0 where the image ViT adds none, as big_vision);
              'sincos3d': fixed, nothing to load.
  cls_token   the image class token (ViViT M2: its spatial class token; the temporal one keeps
              its init).
  encoder     blocks 0..L-1 from the image blocks (first L of them if the image ViT is deeper).
              Extra attention steps (<p>_norm, <p>_attention, <p>_fc) by temporal_init:
              'copy' (TimeSformer: copied from the spatial attention, <p>_fc at zero),
              'zero' (ViViT M3: the temporal attention's output projection at zero, so the block
              is the image block), 'init' (kept), 'auto' = copy for TimeSformer's patterns
              (divided, axial, local_global), zero for factorised_self_attention.
              ViViT M2: the spatial encoder from the image encoder, the temporal one at init.
  pool        big_vision's MAP head where both have one; else kept.
  heads       dropped (kept at their zero init) unless keep_heads=True, which copies the image
              head into every dataset head of the same number of classes (an error otherwise).
"""
import jax
import numpy as np

from sparse_tubes.models import attention_patterns as patterns
from sparse_tubes.models import tokenizers
from sparse_tubes import config as config_lib
from sparse_tubes import defaults
from sparse_tubes.pretrained.vit import ImageViT
from sparse_tubes.pretrained.weights import CheckpointMismatch, flatten, summarise, unflatten_like

TUBE_INITS = ('central_frame', 'average')
KERNEL_RESIZES = ('pi', 'bilinear')
POSEMB_INITS = ('repeat', 'init')
TEMPORAL_INITS = ('auto', 'copy', 'zero', 'init')


# ---------------------------------------------------------------------------------------------
# Resizing.

def _resize(x: np.ndarray, shape, *, antialias: bool) -> np.ndarray:
  return np.asarray(jax.image.resize(np.asarray(x, np.float32), tuple(shape), method='bilinear',
                                     antialias=antialias))


def resize_posemb(table: np.ndarray, grid) -> np.ndarray:
  """(gh, gw, D) -> (nh, nw, D), bilinear (align-corners False, as timm and big_vision)."""
  if tuple(table.shape[:2]) == tuple(grid):
    return np.asarray(table)
  return _resize(table, (*grid, table.shape[-1]), antialias=False)


def resize_kernel(kernel: np.ndarray, size, method: str = 'pi') -> np.ndarray:
  """(ph, pw, C, D) -> (kh, kw, C, D).

  'pi': FlexiViT (Beyer et al. 2023) pseudo-inverse resize: with B the bilinear resize of a patch
  from (ph, pw) to (kh, kw), w' = pinv(B^T) w, so <B x, w'> = <x, w> for every patch x when
  upsampling (the least-squares answer when downsampling).
  'bilinear': the kernel resized and scaled by (ph*pw)/(kh*kw) (a smooth kernel's response to a
  flat patch kept).
  """
  ph, pw = kernel.shape[:2]
  kh, kw = size
  if (ph, pw) == (kh, kw):
    return np.asarray(kernel, np.float32)
  if method == 'bilinear':
    return _resize(kernel, (kh, kw, *kernel.shape[2:]), antialias=True) * (ph * pw / (kh * kw))
  if method != 'pi':
    raise ValueError(f'config.init_from.kernel_resize = {method!r}: use one of {KERNEL_RESIZES}.')
  basis = np.eye(ph * pw, dtype=np.float32).reshape(ph * pw, ph, pw)
  b = np.asarray(jax.vmap(lambda e: jax.image.resize(e, (kh, kw), 'bilinear', antialias=True))(
      basis)).reshape(ph * pw, kh * kw).T            # B: (kh*kw, ph*pw), x' = B x
  mat = np.linalg.pinv(b.T)                            # (kh*kw, ph*pw)
  w = kernel.reshape(ph * pw, -1)
  return (mat @ w).reshape(kh, kw, *kernel.shape[2:]).astype(np.float32)


def inflate_time(kernel2d: np.ndarray, kt: int, mode: str) -> np.ndarray:
  """(kh, kw, C, D) -> (kt, kh, kw, C, D) by central frame or filter inflation (average)."""
  if mode == 'central_frame':
    out = np.zeros((kt, *kernel2d.shape), np.float32)
    out[kt // 2] = kernel2d
    return out
  if mode == 'average':
    return np.repeat(kernel2d[None] / kt, kt, axis=0).astype(np.float32)
  raise ValueError(f'config.init_from.tube_init = {mode!r}: use one of {TUBE_INITS}.')


def fold_kernel(kernel: np.ndarray, fold) -> np.ndarray:
  """(kt, kh, kw, C, D) -> (kt/ft, kh/fh, kw/fw, ft*fh*fw*C, D): the kernel of the space-to-depth
  tube that computes what `kernel` computes (channel order (dt, dh, dw, c), tokenizers.py)."""
  kt, kh, kw, c, d = kernel.shape
  ft, fh, fw = fold
  k = kernel.reshape(kt // ft, ft, kh // fh, fh, kw // fw, fw, c, d)
  k = k.transpose(0, 2, 4, 1, 3, 5, 6, 7)
  return k.reshape(kt // ft, kh // fh, kw // fw, ft * fh * fw * c, d)


# ---------------------------------------------------------------------------------------------

def _heads_shape(a: np.ndarray, num_heads: int, kind: str) -> np.ndarray:
  d = a.shape[0] if kind != 'bias' else a.shape[0]
  if kind == 'in':        # (D, D) -> (D, H, hd)
    return a.reshape(a.shape[0], num_heads, -1)
  if kind == 'out':       # (D, D) -> (H, hd, D)
    return a.reshape(num_heads, -1, a.shape[-1])
  return a.reshape(num_heads, d // num_heads)   # bias (D,) -> (H, hd)


def attention_params(src: dict, prefix: str, num_heads: int) -> dict:
  """Our MultiHeadAttention's params from canonical '<prefix>{query,...}' entries."""
  out = {}
  for name in ('query', 'key', 'value'):
    out[name] = _heads_shape(src[f'{prefix}{name}'], num_heads, 'in')
    out[f'{name}_bias'] = _heads_shape(src[f'{prefix}{name}_bias'], num_heads, 'bias')
  out['out'] = _heads_shape(src[f'{prefix}out'], num_heads, 'out')
  out['out_bias'] = np.asarray(src[f'{prefix}out_bias'])
  return out


def block_params(vit: ImageViT, i: int, num_heads: int) -> dict:
  """Block-relative names (ours) -> arrays, for image block i."""
  p, q = vit.params, f'blocks/{i}/'
  out = {f'norm1/{k}': p[f'{q}norm1/{k}'] for k in ('scale', 'bias')}
  out.update({f'norm2/{k}': p[f'{q}norm2/{k}'] for k in ('scale', 'bias')})
  out.update({f'attention/{k}': v for k, v in attention_params(p, f'{q}attention/', num_heads).items()})
  for fc in ('fc1', 'fc2'):
    for k in ('kernel', 'bias'):
      out[f'mlp/{fc}/{k}'] = p[f'{q}mlp/{fc}/{k}']
  return out


def inflate(vit: ImageViT, params: dict, model_cfg, init_cfg=None) -> tuple[dict, list[str]]:
  """(new params with `params`' structure (numpy), report lines), as config.init_from
  (`init_cfg`, every key of defaults.base().init_from; None: those defaults) asks."""
  init_cfg = defaults.base().init_from if init_cfg is None else init_cfg
  flat = {k: np.asarray(v) for k, v in flatten(params).items()}
  new, loaded, shapes = dict(flat), set(), []
  report = []

  def put(key, value):
    value = np.asarray(value, np.float32)
    if key not in flat:
      raise KeyError(f'inflate: the target model has no parameter {key!r}')
    if value.shape != flat[key].shape:
      shapes.append((key, value.shape, flat[key].shape))
      return
    new[key] = value.astype(flat[key].dtype)
    loaded.add(key)

  cfg = config_lib.model_config(model_cfg)
  name, posemb_kind, attention = cfg.name, cfg.posemb, cfg.attention
  factorised = cfg.encoder == 'factorised'
  d, num_heads = int(cfg.hidden_size), int(cfg.num_heads)
  tube_init, kernel_resize = init_cfg.tube_init, init_cfg.kernel_resize
  posemb_init, temporal_init = init_cfg.posemb, init_cfg.temporal_init
  keep_heads = bool(init_cfg.keep_heads)
  for key, value, allowed in (('tube_init', tube_init, TUBE_INITS),
                              ('kernel_resize', kernel_resize, KERNEL_RESIZES),
                              ('posemb', posemb_init, POSEMB_INITS),
                              ('temporal_init', temporal_init, TEMPORAL_INITS)):
    if value not in allowed:
      raise ValueError(f'config.init_from.{key} = {value!r}: use one of {allowed}.')
  if vit.hidden_size != d:
    raise CheckpointMismatch(
        f'{vit.layout} image ViT into config.model', shapes=[('hidden_size', (vit.hidden_size,), (d,))])
  if vit.num_heads is not None and vit.num_heads != num_heads:
    raise CheckpointMismatch(f'{vit.layout} image ViT into config.model',
                             shapes=[('num_heads', (vit.num_heads,), (num_heads,))])
  if vit.mlp_dim != int(cfg.mlp_dim):
    raise CheckpointMismatch(f'{vit.layout} image ViT into config.model',
                             shapes=[('mlp_dim', (vit.mlp_dim,), (int(cfg.mlp_dim),))])
  p = vit.params

  # Tokenizer.
  tubes = tokenizers.parse_tubes(cfg.tubes)
  variant = cfg.tube_variant
  c_in = cfg.in_channels
  if p['patch/kernel'].shape[2] != c_in:
    shapes.append(('patch/kernel channels', p['patch/kernel'].shape, ('ph', 'pw', c_in, d)))
  if variant == 'interpolated':
    bt, bh, bw = (int(k) for k in cfg.interpolated_kernel)
    put('tokenizer/kernel', inflate_time(resize_kernel(p['patch/kernel'], (bh, bw), kernel_resize),
                                         bt, tube_init))
    put('tokenizer/bias', p['patch/bias'])
  else:
    fold = tuple(cfg.space_to_depth) if variant == 'space_to_depth' else None
    for i, (k, _, _) in enumerate(tubes):
      w = inflate_time(resize_kernel(p['patch/kernel'], k[1:], kernel_resize), k[0], tube_init)
      put(f'tokenizer/convs/{i}/kernel', fold_kernel(w, fold) if fold else w)
      put(f'tokenizer/convs/{i}/bias', p['patch/bias'])
  report.append(f'tubes: image patch {vit.patch_size} -> {[t[0] for t in tubes]} '
                f'({tube_init}, {kernel_resize} resize)')

  # Position embeddings.
  zeros = lambda key: np.zeros_like(flat[key])  # noqa: E731
  if posemb_kind == 'sincos3d':
    report.append('posemb: fixed sin/cos (the image table is not used)')
  elif 'posemb' not in p:
    report.append('posemb: the image ViT has no learned table; kept at init')
  elif posemb_init == 'repeat':
    cls_entry = p.get('posemb_cls', np.zeros(d, np.float32))
    if posemb_kind == 'learned':
      i = 0
      while f'posemb/tables/{i}' in flat:
        nt, nh, nw, _ = flat[f'posemb/tables/{i}'].shape
        put(f'posemb/tables/{i}', np.broadcast_to(resize_posemb(p['posemb'], (nh, nw)),
                                                  (nt, nh, nw, d)))
        i += 1
    else:
      nh, nw, _ = flat['posemb/space'].shape
      put('posemb/space', resize_posemb(p['posemb'], (nh, nw)))
      if 'posemb/time' in flat:
        put('posemb/time', zeros('posemb/time'))
      if 'posemb/time_cls' in flat:
        put('posemb/time_cls', zeros('posemb/time_cls'))
    if 'posemb/cls' in flat:
      put('posemb/cls', cls_entry)
    report.append(f'posemb: image grid {p["posemb"].shape[:2]} resized and repeated over time')

  # Class tokens.
  cls_target = 'spatial_cls_token' if factorised and 'spatial_cls_token' in flat else 'cls_token'
  if cls_target in flat and 'cls' in p:
    put(cls_target, p['cls'].reshape(1, 1, d))

  # Encoder.
  enc = 'spatial_encoder' if factorised else 'encoder'
  steps = patterns.steps(attention, cfg.factorised_order)
  if temporal_init == 'auto':
    temporal_init = 'zero' if attention == 'factorised_self_attention' else 'copy'
  scan = f'{enc}/blocks/norm1/scale' in flat
  block_keys = sorted({k.split('/', 3)[3] if not scan else k.split('/', 2)[2]
                       for k in flat if k.startswith(f'{enc}/blocks/')})
  num_layers = (flat[f'{enc}/blocks/norm1/scale'].shape[0] if scan else
                len({k.split('/')[2] for k in flat if k.startswith(f'{enc}/blocks/')}))
  if num_layers > vit.num_layers:
    raise CheckpointMismatch(f'{vit.layout} image ViT into config.model',
                             shapes=[('num_layers', (vit.num_layers,), (num_layers,))])
  if num_layers < vit.num_layers:
    report.append(f'encoder: the first {num_layers} of the image ViT\'s {vit.num_layers} blocks')
  per_layer = []
  for i in range(num_layers):
    src = block_params(vit, i, num_heads)
    vals = dict(src)
    for _, prefix in steps:
      if not prefix:
        continue
      if temporal_init == 'copy':
        for k in ('scale', 'bias'):
          vals[f'{prefix}_norm/{k}'] = src[f'norm1/{k}']
        for k, v in src.items():
          if k.startswith('attention/'):
            vals[f'{prefix}_{k}'] = v
      elif temporal_init == 'zero':
        vals[f'{prefix}_attention/out'] = np.zeros_like(src['attention/out'])
        vals[f'{prefix}_attention/out_bias'] = np.zeros_like(src['attention/out_bias'])
      if temporal_init in ('copy', 'zero') and f'{prefix}_fc/kernel' in block_keys:
        vals[f'{prefix}_fc/kernel'] = np.zeros((d, d), np.float32)
        vals[f'{prefix}_fc/bias'] = np.zeros((d,), np.float32)
    per_layer.append(vals)
  for name in block_keys:
    if name not in per_layer[0]:
      continue
    if scan:
      put(f'{enc}/blocks/{name}', np.stack([v[name] for v in per_layer]))
    else:
      for i, vals in enumerate(per_layer):
        put(f'{enc}/blocks/{i}/{name}', vals[name])
  for k in ('scale', 'bias'):
    put(f'{enc}/norm/{k}', p[f'norm/{k}'])
  extra = [pr for _, pr in steps if pr]
  if extra:
    report.append(f'extra attention steps {extra}: temporal_init={temporal_init}')

  # Pooling and heads.
  if 'pool/probe' in flat and 'pool/probe' in p:
    put('pool/probe', p['pool/probe'])
    for k, v in attention_params(p, 'pool/attention/', num_heads).items():
      put(f'pool/attention/{k}', v)
    for k in ('scale', 'bias'):
      put(f'pool/norm/{k}', p[f'pool/norm/{k}'])
    for fc in ('fc1', 'fc2') if 'pool/mlp/fc1/kernel' in flat else ():  # config.model.head_mlp_dim
      for k in ('kernel', 'bias'):
        put(f'pool/mlp/{fc}/{k}', p[f'pool/mlp/{fc}/{k}'])
  heads = sorted({k.split('/')[1] for k in flat if k.startswith('heads/')})
  if keep_heads:
    if 'head/kernel' not in p:
      raise CheckpointMismatch(f'{vit.layout} image ViT (config.init_from.keep_heads=True)',
                               missing=['head/kernel', 'head/bias'])
    for h in heads:
      put(f'heads/{h}/kernel', p['head/kernel'])
      put(f'heads/{h}/bias', p['head/bias'])
    if 'pre_logits/kernel' in p:
      report.append('pre_logits: the image ViT\'s tanh pre-logits layer has no place here; dropped')
  if shapes:
    raise CheckpointMismatch(f'{vit.layout} image ViT into config.model ({name})', shapes=shapes)
  kept = sorted(set(flat) - loaded)
  report.append(f'{len(loaded)} of {len(flat)} parameter arrays from the image ViT; kept at init: '
                + (summarise(kept) or 'none'))
  return unflatten_like(params, new, what='inflated parameters'), report
