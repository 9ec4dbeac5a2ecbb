"""Image-ViT checkpoints in the layouts users have, read into one canonical flat dict.

Layouts (`load(path)` tells them apart by their keys):
  vision_transformer .npz  'embedding/kernel' (ph,pw,C,D), 'cls' (1,1,D),
        'Transformer/posembed_input/pos_embedding' (1, 1+N, D) (class token's entry first),
        'Transformer/encoderblock_{i}/LayerNorm_0|LayerNorm_2', '.../MultiHeadDotProductAttention_1/
        {query,key,value}/{kernel (D,H,hd), bias (H,hd)}', '.../out/{kernel (H,hd,D), bias}',
        '.../MlpBlock_3/Dense_{0,1}', 'Transformer/encoder_norm', 'head', optional 'pre_logits'.
  big_vision .npz  the same with 'LayerNorm_1', 'MultiHeadDotProductAttention_0', 'MlpBlock_0',
        top-level 'pos_embedding' (1, N, D) added before the class token (no class entry), and
        'MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}' for MAP heads.
  timm state dict  'patch_embed.proj.weight' (D,C,ph,pw), 'cls_token', 'pos_embed' (1, 1+N, D),
        'blocks.{i}.{norm1, attn.qkv (3D,D), attn.proj, norm2, mlp.fc1, mlp.fc2}', 'norm', 'head'.
  torchvision state dict  'conv_proj', 'class_token', 'encoder.pos_embedding',
        'encoder.layers.encoder_layer_{i}.{ln_1, self_attention.in_proj_weight/bias,
        self_attention.out_proj, ln_2, mlp.0|mlp.linear_1, mlp.3|mlp.linear_2}', 'encoder.ln',
        'heads.head'.
  HuggingFace ViT state dict (transformers ViTModel / ViTForImageClassification, old and new names)
        'embeddings.{cls_token, position_embeddings, patch_embeddings.projection}',
        '[encoder.]layer[s].{i}.{layernorm_before, attention.{q,k,v,o}_proj |
        attention.attention.{query,key,value} + attention.output.dense, layernorm_after,
        mlp.fc1|intermediate.dense, mlp.fc2|output.dense}', 'layernorm', 'classifier'.
PyTorch files (.pth/.pt/.bin, or .safetensors) need torch (imported only then).

Canonical dict (numpy, our names; `ImageViT`):
  patch/kernel (ph,pw,C,D), patch/bias (D,)
  cls (D,)                 the class token, if any
  posemb (gh, gw, D)       the patch grid's table
  posemb_cls (D,)          the class token's entry, if the table has one (big_vision has none)
  blocks/{i}/norm1/{scale,bias}, blocks/{i}/attention/{query,key,value,out} (D, D) as
      (in, out) matrices with heads contiguous along the heads*hd side, {...}_bias,
      blocks/{i}/norm2/{scale,bias}, blocks/{i}/mlp/fc{1,2}/{kernel (in,out), bias}
  norm/{scale,bias}        the final LayerNorm
  head/{kernel (D,K), bias (K,)}, pre_logits/{kernel,bias}   if present
  pool/{probe (1,1,D), attention/..., norm/..., mlp/...}     big_vision's MAP head, if present
plus `num_heads` where the file says it (npz kernels are (D, H, hd)).
"""
import dataclasses
import os
import re

import numpy as np

from sparse_tubes.pretrained import optional


@dataclasses.dataclass
class ImageViT:
  params: dict            # canonical name -> np.ndarray
  num_heads: int | None   # None where the layout does not say (torch (3D, D) projections)
  layout: str             # 'vit_npz' | 'big_vision_npz' | 'timm' | 'torchvision' | 'hf_vit' | 'ours'

  @property
  def hidden_size(self) -> int:
    return int(self.params['patch/kernel'].shape[-1])

  @property
  def num_layers(self) -> int:
    return len({int(k.split('/')[1]) for k in self.params if k.startswith('blocks/')})

  @property
  def patch_size(self) -> tuple[int, int]:
    return tuple(int(s) for s in self.params['patch/kernel'].shape[:2])

  @property
  def mlp_dim(self) -> int:
    return int(self.params['blocks/0/mlp/fc1/kernel'].shape[1])


class CheckpointMismatch(ValueError):
  """Keys or shapes of a checkpoint that do not fit: all of them listed at once."""

  def __init__(self, what: str, missing=(), unexpected=(), shapes=()):
    lines = [f'{what} does not fit:']
    if missing:
      lines.append(f'  missing keys ({len(missing)}): ' + ', '.join(sorted(missing)))
    if unexpected:
      lines.append(f'  unexpected keys ({len(unexpected)}): ' + ', '.join(sorted(unexpected)))
    for key, have, want in shapes:
      lines.append(f'  shape mismatch: {key} is {tuple(have)}, expected {tuple(want)}')
    super().__init__('\n'.join(lines))
    self.missing, self.unexpected, self.shapes = list(missing), list(unexpected), list(shapes)


# ---------------------------------------------------------------------------------------------
# Reading files.

def read_npz(path: str) -> dict:
  with np.load(path, allow_pickle=False) as f:
    return {k: np.asarray(f[k]) for k in f.files}


def read_torch(path: str) -> dict:
  """A PyTorch state dict as numpy arrays (torch imported here only)."""
  if path.endswith('.safetensors'):
    load_file = optional('safetensors.numpy', f'reading {path}').load_file
    return {k: np.asarray(v) for k, v in load_file(path).items()}
  torch = optional('torch', f'{path} is a PyTorch checkpoint: reading it')
  sd = torch.load(path, map_location='cpu', weights_only=True)
  for key in ('model', 'state_dict', 'model_state'):   # training checkpoints wrap the state dict
    if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
      sd = sd[key]
  return {k: v.detach().float().numpy() for k, v in sd.items() if hasattr(v, 'detach')}


def load(path: str, kind: str | None = None) -> ImageViT:
  """An image-ViT checkpoint (npz or PyTorch) as an ImageViT. kind: 'vit_npz' | 'vit_torch' | None
  (by extension)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'image-ViT checkpoint {path!r} not found (config.init_from.path).')
  if kind is None:
    kind = 'vit_npz' if path.endswith('.npz') else 'vit_torch'
  if kind == 'vit_npz':
    return from_npz(read_npz(path))
  if kind == 'vit_torch':
    return from_torch(read_torch(path))
  raise ValueError(f"image-ViT checkpoint kind {kind!r}: use 'vit_npz' or 'vit_torch'.")


# ---------------------------------------------------------------------------------------------
# Layout -> canonical. Each converter pops what it uses and reports what is left as unexpected.

def _split_posemb(pe: np.ndarray, has_cls_entry: bool | None, what: str):
  """(1, [1+]N, D) -> ((gh, gw, D), cls entry or None)."""
  pe = np.asarray(pe).reshape(-1, pe.shape[-1])
  n = pe.shape[0]
  g = int(round(np.sqrt(n)))
  if has_cls_entry is None:   # decide by the count: N square, or 1 + N square
    has_cls_entry = g * g != n
  cls = None
  if has_cls_entry:
    cls, pe = pe[0], pe[1:]
  g = int(round(np.sqrt(pe.shape[0])))
  if g * g != pe.shape[0]:
    raise ValueError(f'{what}: {n} position embeddings are neither N nor 1 + N for a square grid.')
  return pe.reshape(g, g, -1), cls


def _check_used(sd: dict, used: set, what: str, ignore=()):
  left = [k for k in sd if k not in used and not any(re.fullmatch(p, k) for p in ignore)]
  if left:
    raise CheckpointMismatch(what, unexpected=left)


def _need(sd, key, missing):
  if key not in sd:
    missing.append(key)
    return None
  return sd[key]


def from_npz(sd: dict) -> ImageViT:
  """vision_transformer or big_vision .npz (flat '/'-joined keys)."""
  big_vision = any('MultiHeadDotProductAttention_0' in k for k in sd if k.startswith('Transformer/'))
  ln2, mha, mlp = (('LayerNorm_1', 'MultiHeadDotProductAttention_0', 'MlpBlock_0') if big_vision
                   else ('LayerNorm_2', 'MultiHeadDotProductAttention_1', 'MlpBlock_3'))
  what = ('big_vision' if big_vision else 'vision_transformer') + ' .npz image ViT'
  out, used, missing = {}, set(), []

  def take(dst, src, fn=lambda a: a):
    v = _need(sd, src, missing)
    used.add(src)
    if v is not None:
      out[dst] = fn(np.asarray(v, np.float32))

  take('patch/kernel', 'embedding/kernel')
  take('patch/bias', 'embedding/bias')
  if 'cls' in sd:
    take('cls', 'cls', lambda a: a.reshape(-1))
  for key, cls_entry in (('Transformer/posembed_input/pos_embedding', None),
                         ('Transformer/pos_embedding', None), ('pos_embedding', False)):
    if key in sd:
      used.add(key)
      out['posemb'], c = _split_posemb(sd[key], cls_entry, what)
      if c is not None:
        out['posemb_cls'] = c
      break
  layers = sorted({int(m.group(1)) for k in sd
                   for m in [re.match(r'Transformer/encoderblock_(\d+)/', k)] if m})
  if not layers:
    missing.append('Transformer/encoderblock_0/...')
  num_heads = None
  for i in layers:
    p, q = f'Transformer/encoderblock_{i}/', f'blocks/{i}/'
    for ln_src, ln_dst in (('LayerNorm_0', 'norm1'), (ln2, 'norm2')):
      take(f'{q}{ln_dst}/scale', f'{p}{ln_src}/scale')
      take(f'{q}{ln_dst}/bias', f'{p}{ln_src}/bias')
    num_heads = _npz_attention(take, f'{p}{mha}/', f'{q}attention/', sd) or num_heads
    for j, fc in ((0, 'fc1'), (1, 'fc2')):
      take(f'{q}mlp/{fc}/kernel', f'{p}{mlp}/Dense_{j}/kernel')
      take(f'{q}mlp/{fc}/bias', f'{p}{mlp}/Dense_{j}/bias')
  take('norm/scale', 'Transformer/encoder_norm/scale')
  take('norm/bias', 'Transformer/encoder_norm/bias')
  for name in ('head', 'pre_logits'):
    if f'{name}/kernel' in sd:
      take(f'{name}/kernel', f'{name}/kernel')
      take(f'{name}/bias', f'{name}/bias')
  if any(k.startswith('MAPHead_0/') for k in sd):
    take('pool/probe', 'MAPHead_0/probe')
    _npz_attention(take, 'MAPHead_0/MultiHeadDotProductAttention_0/', 'pool/attention/', sd)
    take('pool/norm/scale', 'MAPHead_0/LayerNorm_0/scale')
    take('pool/norm/bias', 'MAPHead_0/LayerNorm_0/bias')
    for j, fc in ((0, 'fc1'), (1, 'fc2')):
      take(f'pool/mlp/{fc}/kernel', f'MAPHead_0/MlpBlock_0/Dense_{j}/kernel')
      take(f'pool/mlp/{fc}/bias', f'MAPHead_0/MlpBlock_0/Dense_{j}/bias')
  if missing:
    raise CheckpointMismatch(what, missing=missing,
                             unexpected=[k for k in sd if k not in used])
  _check_used(sd, used, what)
  return _finish(ImageViT(out, num_heads, 'big_vision_npz' if big_vision else 'vit_npz'))


def _npz_attention(take, src: str, dst: str, sd: dict) -> int | None:
  for name in ('query', 'key', 'value'):
    take(f'{dst}{name}', f'{src}{name}/kernel', lambda a: a.reshape(a.shape[0], -1))
    take(f'{dst}{name}_bias', f'{src}{name}/bias', lambda a: a.reshape(-1))
  take(f'{dst}out', f'{src}out/kernel', lambda a: a.reshape(-1, a.shape[-1]))
  take(f'{dst}out_bias', f'{src}out/bias')
  k = sd.get(f'{src}query/kernel')
  return int(k.shape[1]) if k is not None and k.ndim == 3 else None


def _torch_layout(sd: dict) -> str:
  keys = set(sd)
  if 'patch_embed.proj.weight' in keys:
    return 'timm'
  if 'conv_proj.weight' in keys:
    return 'torchvision'
  if any(k.endswith('embeddings.patch_embeddings.projection.weight') for k in keys):
    return 'hf_vit'
  raise CheckpointMismatch(
      'PyTorch image ViT (timm, torchvision or HuggingFace ViT)',
      missing=['patch_embed.proj.weight (timm) | conv_proj.weight (torchvision) | '
               'embeddings.patch_embeddings.projection.weight (HF ViT)'],
      unexpected=sorted(keys)[:20])


def from_torch(sd: dict) -> ImageViT:
  """timm, torchvision or HuggingFace ViT state dict (numpy values)."""
  layout = _torch_layout(sd)
  if layout == 'hf_vit':
    prefix = next(k for k in sd if k.endswith('embeddings.patch_embeddings.projection.weight'))
    prefix = prefix[:-len('embeddings.patch_embeddings.projection.weight')]
    sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
  what = {'timm': 'timm', 'torchvision': 'torchvision', 'hf_vit': 'HuggingFace ViT'}[layout] + \
      ' image ViT state dict'
  out, used, missing = {}, set(), []

  def take(dst, src, fn=lambda a: a):
    srcs = (src,) if isinstance(src, str) else src
    for s in srcs:
      if s in sd:
        used.add(s)
        out[dst] = fn(np.asarray(sd[s], np.float32))
        return
    missing.append(' | '.join(srcs))

  lin = lambda a: a.T  # noqa: E731  torch Linear (out, in) -> (in, out)
  conv = lambda a: a.transpose(2, 3, 1, 0)  # noqa: E731  (D, C, ph, pw) -> (ph, pw, C, D)
  if layout == 'timm':
    names = dict(patch='patch_embed.proj', cls='cls_token', pos='pos_embed', block='blocks.{i}.',
                 norm1='norm1', norm2='norm2', fc1='mlp.fc1', fc2='mlp.fc2', norm='norm',
                 head='head', layer_re=r'blocks\.(\d+)\.')
  elif layout == 'torchvision':
    names = dict(patch='conv_proj', cls='class_token', pos='encoder.pos_embedding',
                 block='encoder.layers.encoder_layer_{i}.', norm1='ln_1', norm2='ln_2',
                 fc1=('mlp.0', 'mlp.linear_1'), fc2=('mlp.3', 'mlp.linear_2'), norm='encoder.ln',
                 head='heads.head', layer_re=r'encoder\.layers\.encoder_layer_(\d+)\.')
  else:
    new = any(k.startswith('layers.') for k in sd)
    names = dict(patch='embeddings.patch_embeddings.projection', cls='embeddings.cls_token',
                 pos='embeddings.position_embeddings',
                 block='layers.{i}.' if new else 'encoder.layer.{i}.',
                 norm1='layernorm_before', norm2='layernorm_after',
                 fc1='mlp.fc1' if new else 'intermediate.dense',
                 fc2='mlp.fc2' if new else 'output.dense', norm='layernorm', head='classifier',
                 layer_re=r'layers\.(\d+)\.' if new else r'encoder\.layer\.(\d+)\.')

  def both(x):
    return x if isinstance(x, tuple) else (x,)

  take('patch/kernel', f'{names["patch"]}.weight', conv)
  take('patch/bias', f'{names["patch"]}.bias')
  if names['cls'] in sd:
    take('cls', names['cls'], lambda a: a.reshape(-1))
  if names['pos'] in sd:
    used.add(names['pos'])
    out['posemb'], c = _split_posemb(sd[names['pos']], 'cls' in out, what)
    if c is not None:
      out['posemb_cls'] = c
  layers = sorted({int(m.group(1)) for k in sd for m in [re.match(names['layer_re'], k)] if m})
  if not layers:
    missing.append(names['block'].format(i=0) + '...')
  for i in layers:
    p, q = names['block'].format(i=i), f'blocks/{i}/'
    for src, dst in ((names['norm1'], 'norm1'), (names['norm2'], 'norm2')):
      take(f'{q}{dst}/scale', f'{p}{src}.weight')
      take(f'{q}{dst}/bias', f'{p}{src}.bias')
    if layout == 'hf_vit':
      if new:
        srcs = dict(query='attention.q_proj', key='attention.k_proj', value='attention.v_proj',
                    out='attention.o_proj')
      else:
        srcs = dict(query='attention.attention.query', key='attention.attention.key',
                    value='attention.attention.value', out='attention.output.dense')
      for name, src in srcs.items():
        take(f'{q}attention/{name}', f'{p}{src}.weight', lin)
        take(f'{q}attention/{name}_bias', f'{p}{src}.bias')
    else:
      w_key, b_key, o_key = (('attn.qkv.weight', 'attn.qkv.bias', 'attn.proj') if layout == 'timm'
                             else ('self_attention.in_proj_weight', 'self_attention.in_proj_bias',
                                   'self_attention.out_proj'))
      w, b = _need(sd, p + w_key, missing), _need(sd, p + b_key, missing)
      used.update({p + w_key, p + b_key})
      if w is not None and b is not None:
        d = w.shape[1]
        for j, name in enumerate(('query', 'key', 'value')):
          out[f'{q}attention/{name}'] = np.asarray(w[j * d:(j + 1) * d], np.float32).T
          out[f'{q}attention/{name}_bias'] = np.asarray(b[j * d:(j + 1) * d], np.float32)
      take(f'{q}attention/out', f'{p}{o_key}.weight', lin)
      take(f'{q}attention/out_bias', f'{p}{o_key}.bias')
    for fc in ('fc1', 'fc2'):
      take(f'{q}mlp/{fc}/kernel', tuple(f'{p}{s}.weight' for s in both(names[fc])), lin)
      take(f'{q}mlp/{fc}/bias', tuple(f'{p}{s}.bias' for s in both(names[fc])))
  take('norm/scale', f'{names["norm"]}.weight')
  take('norm/bias', f'{names["norm"]}.bias')
  if f'{names["head"]}.weight' in sd:
    take('head/kernel', f'{names["head"]}.weight', lin)
    take('head/bias', f'{names["head"]}.bias')
  if missing:
    raise CheckpointMismatch(what, missing=missing, unexpected=[k for k in sd if k not in used])
  # Buffers and poolers nobody needs: HF's pooler (a tanh Dense on the class token), position ids.
  _check_used(sd, used, what, ignore=(r'(.*\.)?pooler\..*', r'.*position_ids', r'.*num_batches.*'))
  return _finish(ImageViT(out, None, layout))


def _finish(vit: ImageViT) -> ImageViT:
  """Shape checks across the canonical dict."""
  p, d = vit.params, vit.hidden_size
  bad = []
  for k, v in p.items():
    if (k.endswith(('/scale', '/bias', '_bias')) and not k.startswith(('head/', 'pre_logits/'))
        and 'mlp/fc1' not in k and v.shape != (d,)):
      bad.append((k, v.shape, (d,)))
    if re.fullmatch(r'(blocks/\d+|pool)/attention/(query|key|value|out)', k) and v.shape != (d, d):
      bad.append((k, v.shape, (d, d)))
  if 'posemb' in p and p['posemb'].shape[-1] != d:
    bad.append(('posemb', p['posemb'].shape, (..., d)))
  if bad:
    raise CheckpointMismatch(f'{vit.layout} image ViT (hidden size {d})', shapes=bad)
  return vit


# ---------------------------------------------------------------------------------------------
# Our own image model -> canonical -> .npz: to save an image ViT trained here in the layout every
# tool reads (the scaling experiment does), and for the test fixtures.

def from_model_params(params: dict, *, image_tube: int = 0) -> ImageViT:
  """Canonical ImageViT from the pure-dict params of one of our image models: a single-stack
  VideoViT with 'learned' position embeddings, joint attention and no scan (an image ViT)."""
  from sparse_tubes.pretrained import inflate  # flat helpers
  flat = inflate.flatten(params)
  out = {}
  tok = flat.get(f'tokenizer/convs/{image_tube}/kernel')
  if tok is None or tok.shape[0] != 1:
    raise ValueError('from_model_params needs a model with a (1, ph, pw) 2D-patch tube.')
  out['patch/kernel'] = np.asarray(tok[0])
  out['patch/bias'] = np.asarray(flat[f'tokenizer/convs/{image_tube}/bias'])
  if 'cls_token' in flat:
    out['cls'] = np.asarray(flat['cls_token']).reshape(-1)
  if f'posemb/tables/{image_tube}' in flat:
    out['posemb'] = np.asarray(flat[f'posemb/tables/{image_tube}'])[0]
    if 'posemb/cls' in flat:
      out['posemb_cls'] = np.asarray(flat['posemb/cls'])
  num_heads = None
  for k, v in flat.items():
    m = re.fullmatch(r'encoder/blocks/(\d+)/(.*)', k)
    if m:
      name = m.group(2)
      if name.startswith('attention/'):
        if name.endswith(('query', 'key', 'value')):
          num_heads = v.shape[1]
          v = v.reshape(v.shape[0], -1)
        elif name.endswith('out'):
          v = v.reshape(-1, v.shape[-1])
        elif name.endswith('_bias') and v.ndim == 2:
          v = v.reshape(-1)
      out[f'blocks/{m.group(1)}/{name}'] = np.asarray(v)
    elif k.startswith('encoder/norm/'):
      out['norm/' + k.split('/')[-1]] = np.asarray(v)
    elif k.startswith('pool/'):
      name = k[len('pool/'):]
      if name.startswith('attention/'):
        if name.endswith(('query', 'key', 'value')):
          v = v.reshape(v.shape[0], -1)
        elif name.endswith('out'):
          v = v.reshape(-1, v.shape[-1])
        elif name.endswith('_bias') and v.ndim == 2:
          v = v.reshape(-1)
      out[k] = np.asarray(v)
  heads = sorted({k.split('/')[1] for k in flat if k.startswith('heads/')})
  if len(heads) == 1:
    out['head/kernel'] = np.asarray(flat[f'heads/{heads[0]}/kernel'])
    out['head/bias'] = np.asarray(flat[f'heads/{heads[0]}/bias'])
  return _finish(ImageViT(out, num_heads, 'ours'))


def to_npz_dict(vit: ImageViT, *, style: str = 'vit', num_heads: int | None = None) -> dict:
  """Canonical -> flat npz keys of vision_transformer (style='vit') or big_vision."""
  h = num_heads or vit.num_heads
  if h is None:
    raise ValueError('to_npz_dict needs num_heads (the npz attention kernels are (D, H, hd)).')
  p, d = vit.params, vit.hidden_size
  bv = style == 'big_vision'
  ln2, mha, mlp = (('LayerNorm_1', 'MultiHeadDotProductAttention_0', 'MlpBlock_0') if bv
                   else ('LayerNorm_2', 'MultiHeadDotProductAttention_1', 'MlpBlock_3'))
  out = {'embedding/kernel': p['patch/kernel'], 'embedding/bias': p['patch/bias']}
  cls = p.get('cls')
  if cls is not None:
    out['cls'] = cls.reshape(1, 1, d)
  if 'posemb' in p:
    pe = p['posemb'].reshape(1, -1, d)
    if bv:
      if cls is not None and 'posemb_cls' in p:   # big_vision: the class entry folds into cls
        out['cls'] = (cls + p['posemb_cls']).reshape(1, 1, d)
      out['pos_embedding'] = pe
    else:
      if cls is not None:
        pe = np.concatenate([p.get('posemb_cls', np.zeros(d, pe.dtype)).reshape(1, 1, d), pe], 1)
      out['Transformer/posembed_input/pos_embedding'] = pe

  def attention(src, dst):
    for name in ('query', 'key', 'value'):
      out[f'{dst}{name}/kernel'] = p[f'{src}{name}'].reshape(d, h, -1)
      out[f'{dst}{name}/bias'] = p[f'{src}{name}_bias'].reshape(h, -1)
    out[f'{dst}out/kernel'] = p[f'{src}out'].reshape(h, -1, d)
    out[f'{dst}out/bias'] = p[f'{src}out_bias']

  for i in range(vit.num_layers):
    q, b = f'blocks/{i}/', f'Transformer/encoderblock_{i}/'
    for dst, src in (('LayerNorm_0', 'norm1'), (ln2, 'norm2')):
      out[f'{b}{dst}/scale'], out[f'{b}{dst}/bias'] = p[f'{q}{src}/scale'], p[f'{q}{src}/bias']
    attention(f'{q}attention/', f'{b}{mha}/')
    for j, fc in ((0, 'fc1'), (1, 'fc2')):
      out[f'{b}{mlp}/Dense_{j}/kernel'] = p[f'{q}mlp/{fc}/kernel']
      out[f'{b}{mlp}/Dense_{j}/bias'] = p[f'{q}mlp/{fc}/bias']
  out['Transformer/encoder_norm/scale'], out['Transformer/encoder_norm/bias'] = \
      p['norm/scale'], p['norm/bias']
  for name in ('head', 'pre_logits'):
    if f'{name}/kernel' in p:
      out[f'{name}/kernel'], out[f'{name}/bias'] = p[f'{name}/kernel'], p[f'{name}/bias']
  if 'pool/probe' in p:
    out['MAPHead_0/probe'] = p['pool/probe']
    attention('pool/attention/', 'MAPHead_0/MultiHeadDotProductAttention_0/')
    out['MAPHead_0/LayerNorm_0/scale'] = p['pool/norm/scale']
    out['MAPHead_0/LayerNorm_0/bias'] = p['pool/norm/bias']
    for j, fc in ((0, 'fc1'), (1, 'fc2')):
      out[f'MAPHead_0/MlpBlock_0/Dense_{j}/kernel'] = p[f'pool/mlp/{fc}/kernel']
      out[f'MAPHead_0/MlpBlock_0/Dense_{j}/bias'] = p[f'pool/mlp/{fc}/bias']
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def save_npz(vit: ImageViT, path: str, **kw) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, **to_npz_dict(vit, **kw))
  return path
