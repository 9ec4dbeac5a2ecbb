"""Small random image ViTs and their checkpoint files in every layout (no downloads), shared by
tests/pretrained/test_{vit,inflate,init}.py and tests/models/test_scaling.py.

The reference is HuggingFace transformers' ViTModel (an independent implementation): its state dict
is rewritten here, by code that is not the loader's, into timm, torchvision and npz names.
"""
import jax
import ml_collections
import numpy as np
from flax import nnx

from sparse_tubes import defaults
from sparse_tubes.models import video_vit
from sparse_tubes.pretrained import inflate, vit

D, LAYERS, HEADS, MLP, PATCH, SIZE = 32, 2, 4, 64, 8, 32


def image_model_cfg(**kw) -> ml_collections.ConfigDict:
  """Our image ViT: one 2D-patch tube, learned posemb, class token, joint attention."""
  c = ml_collections.ConfigDict(dict(
      name='vivit', hidden_size=D, num_layers=LAYERS, num_heads=HEADS, mlp_dim=MLP,
      tubes=(((1, PATCH, PATCH), (1, PATCH, PATCH), (0, 0, 0)),), image_tube=0, posemb='learned',
      head='token', attention='joint', input_shape=(1, SIZE, SIZE, 3)))
  c.update(kw)
  return c


def build(cfg, num_classes=None, seed=0):
  return video_vit.build_model(cfg, num_classes or {'x': 5}, rngs=nnx.Rngs(params=seed))


def params_of(model) -> dict:
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def load_into(model, params):
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model


def model_from(vit_obj, cfg, num_classes=None, opts=None, seed=1):
  """The model of `cfg` inflated from `vit_obj`, config.init_from's defaults changed by `opts`."""
  init_cfg = defaults.base().init_from
  init_cfg.update(opts or {})
  m = build(cfg, num_classes, seed)
  new, report = inflate.inflate(vit_obj, params_of(m), cfg, init_cfg)
  return load_into(m, new), report


def perturbed(params, seed=0, scale=0.05):
  """Every array moved off its init (LayerNorm scales, zero biases and heads included)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (a + scale * rng.standard_normal(a.shape)).astype(a.dtype), params)


# ---------------------------------------------------------------------------------------------
# HuggingFace ViT reference and its state dict rewritten into the other layouts.

def hf_vit(seed=0, num_labels=0):
  import torch
  from transformers import ViTConfig, ViTForImageClassification, ViTModel
  torch.manual_seed(seed)
  cfg = ViTConfig(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=MLP, image_size=SIZE, patch_size=PATCH, layer_norm_eps=1e-6,
                  hidden_act='gelu', num_labels=max(num_labels, 1))
  model = (ViTForImageClassification(cfg) if num_labels else ViTModel(cfg, add_pooling_layer=False))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


def hf_features(model, images: np.ndarray) -> np.ndarray:
  """The class token's final features (after the last LayerNorm), (B, D)."""
  import torch
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    base = getattr(model, 'vit', model)
    return base(pixel_values=x).last_hidden_state[:, 0].numpy()


def hf_state(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _hf_layers(sd):
  return sorted({int(k.split('.')[1]) for k in sd if k.startswith('layers.')})


def _strip(sd):
  return {k[len('vit.'):] if k.startswith('vit.') else k: v for k, v in sd.items()}


def hf_to_timm(sd) -> dict:
  sd = _strip(sd)
  out = {'patch_embed.proj.weight': sd['embeddings.patch_embeddings.projection.weight'],
         'patch_embed.proj.bias': sd['embeddings.patch_embeddings.projection.bias'],
         'cls_token': sd['embeddings.cls_token'], 'pos_embed': sd['embeddings.position_embeddings'],
         'norm.weight': sd['layernorm.weight'], 'norm.bias': sd['layernorm.bias']}
  for i in _hf_layers(sd):
    a, b = f'layers.{i}.', f'blocks.{i}.'
    out[b + 'norm1.weight'], out[b + 'norm1.bias'] = sd[a + 'layernorm_before.weight'], sd[a + 'layernorm_before.bias']
    out[b + 'norm2.weight'], out[b + 'norm2.bias'] = sd[a + 'layernorm_after.weight'], sd[a + 'layernorm_after.bias']
    out[b + 'attn.qkv.weight'] = np.concatenate([sd[a + f'attention.{n}_proj.weight'] for n in 'qkv'])
    out[b + 'attn.qkv.bias'] = np.concatenate([sd[a + f'attention.{n}_proj.bias'] for n in 'qkv'])
    out[b + 'attn.proj.weight'], out[b + 'attn.proj.bias'] = sd[a + 'attention.o_proj.weight'], sd[a + 'attention.o_proj.bias']
    for fc in ('fc1', 'fc2'):
      out[b + f'mlp.{fc}.weight'], out[b + f'mlp.{fc}.bias'] = sd[a + f'mlp.{fc}.weight'], sd[a + f'mlp.{fc}.bias']
  if 'classifier.weight' in sd:
    out['head.weight'], out['head.bias'] = sd['classifier.weight'], sd['classifier.bias']
  return out


def timm_to_torchvision(t) -> dict:
  out = {'conv_proj.weight': t['patch_embed.proj.weight'], 'conv_proj.bias': t['patch_embed.proj.bias'],
         'class_token': t['cls_token'], 'encoder.pos_embedding': t['pos_embed'],
         'encoder.ln.weight': t['norm.weight'], 'encoder.ln.bias': t['norm.bias']}
  for i in sorted({int(k.split('.')[1]) for k in t if k.startswith('blocks.')}):
    a, b = f'blocks.{i}.', f'encoder.layers.encoder_layer_{i}.'
    for x, y in (('norm1', 'ln_1'), ('norm2', 'ln_2'), ('attn.proj', 'self_attention.out_proj'),
                 ('mlp.fc1', 'mlp.0'), ('mlp.fc2', 'mlp.3')):
      out[f'{b}{y}.weight'], out[f'{b}{y}.bias'] = t[f'{a}{x}.weight'], t[f'{a}{x}.bias']
    out[b + 'self_attention.in_proj_weight'] = t[a + 'attn.qkv.weight']
    out[b + 'self_attention.in_proj_bias'] = t[a + 'attn.qkv.bias']
  if 'head.weight' in t:
    out['heads.head.weight'], out['heads.head.bias'] = t['head.weight'], t['head.bias']
  return out


def timm_to_npz(t, big_vision=False) -> dict:
  h, d = HEADS, t['cls_token'].shape[-1]
  ln2, mha, mlp = (('LayerNorm_1', 'MultiHeadDotProductAttention_0', 'MlpBlock_0') if big_vision
                   else ('LayerNorm_2', 'MultiHeadDotProductAttention_1', 'MlpBlock_3'))
  out = {'embedding/kernel': t['patch_embed.proj.weight'].transpose(2, 3, 1, 0),
         'embedding/bias': t['patch_embed.proj.bias'],
         'Transformer/encoder_norm/scale': t['norm.weight'],
         'Transformer/encoder_norm/bias': t['norm.bias']}
  pe = t['pos_embed']
  if big_vision:   # posemb added before the class token: fold the class entry into cls
    out['cls'] = t['cls_token'] + pe[:, :1]
    out['pos_embedding'] = pe[:, 1:]
  else:
    out['cls'] = t['cls_token']
    out['Transformer/posembed_input/pos_embedding'] = pe
  for i in sorted({int(k.split('.')[1]) for k in t if k.startswith('blocks.')}):
    a, b = f'blocks.{i}.', f'Transformer/encoderblock_{i}/'
    out[b + 'LayerNorm_0/scale'], out[b + 'LayerNorm_0/bias'] = t[a + 'norm1.weight'], t[a + 'norm1.bias']
    out[b + f'{ln2}/scale'], out[b + f'{ln2}/bias'] = t[a + 'norm2.weight'], t[a + 'norm2.bias']
    w, bias = t[a + 'attn.qkv.weight'], t[a + 'attn.qkv.bias']
    for j, n in enumerate(('query', 'key', 'value')):
      out[b + f'{mha}/{n}/kernel'] = w[j * d:(j + 1) * d].T.reshape(d, h, d // h)
      out[b + f'{mha}/{n}/bias'] = bias[j * d:(j + 1) * d].reshape(h, d // h)
    out[b + f'{mha}/out/kernel'] = t[a + 'attn.proj.weight'].T.reshape(h, d // h, d)
    out[b + f'{mha}/out/bias'] = t[a + 'attn.proj.bias']
    for j, fc in ((0, 'fc1'), (1, 'fc2')):
      out[b + f'{mlp}/Dense_{j}/kernel'] = t[a + f'mlp.{fc}.weight'].T
      out[b + f'{mlp}/Dense_{j}/bias'] = t[a + f'mlp.{fc}.bias']
  if 'head.weight' in t:
    out['head/kernel'], out['head/bias'] = t['head.weight'].T, t['head.bias']
  return out


def write(layout: str, sd_hf: dict, path) -> str:
  """One checkpoint file of `layout` from a HF ViT state dict; returns its path."""
  import torch
  path = str(path)
  if layout in ('vit_npz', 'big_vision_npz'):
    np.savez(path + '.npz', **timm_to_npz(hf_to_timm(sd_hf), big_vision=layout == 'big_vision_npz'))
    return path + '.npz'
  if layout == 'safetensors':
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in hf_to_timm(sd_hf).items()},
              path + '.safetensors')
    return path + '.safetensors'
  sd = {'hf_vit': sd_hf, 'timm': hf_to_timm(sd_hf),
        'torchvision': timm_to_torchvision(hf_to_timm(sd_hf))}[layout]
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path + '.pth')
  return path + '.pth'


def random_image_vit(seed=0, **cfg_kw):
  """(canonical ImageViT, our image model) from a random, perturbed image model of ours."""
  cfg = image_model_cfg(**cfg_kw)
  m = build(cfg, seed=seed)
  load_into(m, perturbed(params_of(m), seed))
  return vit.from_model_params(params_of(m)), m
