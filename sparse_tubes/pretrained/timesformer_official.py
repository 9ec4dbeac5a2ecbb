"""The official TimeSformer checkpoints (facebookresearch/TimeSformer, e.g.
TimeSformer_divST_8x32_224_K400.pyth) -> our layout.

A .pyth file is a `torch.save` dict {'epoch', 'model_state', 'optimizer_state', 'cfg' (YAML text)};
'model_state' holds the `vit_base_patch16_224` wrapper's weights (timesformer/models/vit.py):
  model.cls_token (1,1,D)  model.pos_embed (1,1+N,D)  model.time_embed (1,T,D)  (not for space-only)
  model.patch_embed.proj.{weight (D,C,p,p), bias}
  model.blocks.{i}.{norm1, attn.qkv, attn.proj, temporal_norm1, temporal_attn.qkv,
                    temporal_attn.proj, temporal_fc, norm2, mlp.fc1, mlp.fc2}.{weight,bias}
  model.norm.{weight,bias}   model.head.{weight,bias}
They are renamed into the HF TimeSformer layout (the renaming of transformers'
convert_timesformer_to_pytorch.py) and converted by `hf.convert_state_dict`. The file carries no
architecture, so it is read off the shapes: hidden size, depth, MLP size, patch size, frames, image
size, classes, and the attention type (temporal_fc present: divided; time_embed only: joint; neither:
space-only). The head count is not in the shapes: hidden/64 (12 for ViT-B, as every published
TimeSformer) unless given. Eps 1e-6 and the exact GELU (vit.py's nn.GELU); the space-only model
averages class tokens before the final norm, as vit.py does (our default).
"""
import re

import numpy as np

from sparse_tubes.pretrained import hf, weights

RENAMES = (
    (r'^cls_token$', 'timesformer.embeddings.cls_token'),
    (r'^pos_embed$', 'timesformer.embeddings.position_embeddings'),
    (r'^time_embed$', 'timesformer.embeddings.time_embeddings'),
    (r'^patch_embed\.proj\.', 'timesformer.embeddings.patch_embeddings.projection.'),
    (r'^norm\.', 'timesformer.layernorm.'),
    (r'^head\.', 'classifier.'),
    (r'^blocks\.(\d+)\.', r'timesformer.encoder.layer.\1.'),
    (r'\.norm1\.', '.layernorm_before.'),
    (r'\.norm2\.', '.layernorm_after.'),
    (r'\.temporal_norm1\.', '.temporal_layernorm.'),
    (r'\.temporal_attn\.qkv\.', '.temporal_attention.attention.qkv.'),
    (r'\.temporal_attn\.proj\.', '.temporal_attention.output.dense.'),
    (r'\.temporal_fc\.', '.temporal_dense.'),
    (r'\.attn\.qkv\.', '.attention.attention.qkv.'),
    (r'\.attn\.proj\.', '.attention.output.dense.'),
    (r'\.mlp\.fc1\.', '.intermediate.dense.'),
    (r'\.mlp\.fc2\.', '.output.dense.'),
)


def model_state(obj) -> dict:
  """The weights of a loaded .pyth / .pth object, without the 'model.' / 'module.' wrappers."""
  sd = obj.get('model_state', obj.get('state_dict', obj.get('model', obj)))
  out = {}
  for k, v in sd.items():
    for prefix in ('module.', 'model.'):
      if k.startswith(prefix):
        k = k[len(prefix):]
    out[k] = v
  return out


def to_hf_keys(sd: dict) -> dict:
  out = {}
  for k, v in sd.items():
    for pat, rep in RENAMES:
      k = re.sub(pat, rep, k)
    out[k] = v
  return out


def infer_config(sd: dict, *, num_heads: int | None = None, num_frames: int | None = None) -> dict:
  """The HF TimesformerConfig dict of official weights `sd` (keys without 'model.')."""
  d = sd['cls_token'].shape[-1]
  w = sd['patch_embed.proj.weight']
  p, c = int(w.shape[-1]), int(w.shape[1])
  n = sd['pos_embed'].shape[1] - 1
  side = int(round(np.sqrt(n)))
  if side * side != n:
    raise ValueError(f'pos_embed has {n} patch positions, not a square grid.')
  depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r'blocks\.(\d+)\.', k)))
  if any('temporal_fc' in k for k in sd):
    attention = 'divided_space_time'
  elif 'time_embed' in sd:
    attention = 'joint_space_time'
  else:
    attention = 'space_only'
  t = int(sd['time_embed'].shape[1]) if 'time_embed' in sd else int(num_frames or 8)
  heads = int(num_heads or max(d // 64, 1))
  if d % heads:
    raise ValueError(f'hidden size {d} is not divisible by {heads} heads.')
  cfg = dict(model_type='timesformer', hidden_size=int(d), num_hidden_layers=depth,
             num_attention_heads=heads, intermediate_size=int(sd['blocks.0.mlp.fc1.weight'].shape[0]),
             patch_size=p, image_size=side * p, num_channels=c, num_frames=t,
             attention_type=attention, hidden_act='gelu', layer_norm_eps=1e-6, qkv_bias=True)
  if 'head.weight' in sd:
    cfg['num_labels'] = int(sd['head.weight'].shape[0])
  return cfg


def convert(obj, *, num_heads: int | None = None, num_frames: int | None = None,
            source: str = '') -> hf.Imported:
  """A loaded .pyth object (or its model_state dict) -> `hf.Imported` in our layout."""
  sd = {k: np.asarray(v) for k, v in weights.to_numpy(model_state(obj)).items()}
  cfg = infer_config(sd, num_heads=num_heads, num_frames=num_frames)
  imported = hf.convert_state_dict(to_hf_keys(sd), cfg, source=source)
  # The official space-only model averages the per-frame class tokens before the final norm.
  imported.model.pop('space_cls_average', None)
  return imported


def load(path: str, *, num_heads: int | None = None, num_frames: int | None = None) -> hf.Imported:
  return convert(weights.read_torch_pickle(path), num_heads=num_heads, num_frames=num_frames, source=path)
