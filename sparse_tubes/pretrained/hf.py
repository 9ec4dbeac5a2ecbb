"""HuggingFace `transformers` TimeSformer and ViViT checkpoints in and out of our layout.

Import (`load`): a directory with config.json and model.safetensors (or pytorch_model.bin, or their
sharded `*.index.json` forms) of `TimesformerForVideoClassification` / `TimesformerModel` or
`VivitForVideoClassification` / `VivitModel`. The architecture comes from config.json, whatever its
sizes (`model_config`). Key layouts accepted:
  - with or without the base-model prefix ('timesformer.' / 'vivit.'; bare *Model checkpoints have
    none) and with a DataParallel 'module.' prefix;
  - ViViT's two layouts: transformers <= 4.x ('vivit.encoder.layer.{i}.attention.attention.query',
    '.attention.output.dense', '.intermediate.dense', '.output.dense') and 5.x ('vivit.layers.{i}.
    attention.{q,k,v,o}_proj', '.mlp.fc1', '.mlp.fc2'), renamed as transformers' own
    conversion_mapping.py ('ViTModel' rules) does;
  - TimeSformer's one layout ('timesformer.embeddings.{cls_token,position_embeddings,
    time_embeddings,patch_embeddings.projection}', 'timesformer.encoder.layer.{i}.{layernorm_before,
    attention.attention.qkv,attention.output.dense,temporal_layernorm,temporal_attention.*,
    temporal_dense,layernorm_after,intermediate.dense,output.dense}', 'timesformer.layernorm',
    'classifier');
  - LayerNorm 'gamma'/'beta' of old PyTorch pickles.
The official TimeSformer .pyth files are renamed into the HF TimeSformer layout first
(`timesformer_official.py`).

Export (`export`): ours -> config.json + model.safetensors loadable by
`TimesformerForVideoClassification.from_pretrained` / `VivitForVideoClassification.from_pretrained`
(TimeSformer divided / joint / space-only; ViViT Model 1), in the 5.x key layout (or the 4.x one
with layout='v4' for ViViT).

Where HF deviates from the papers (our defaults follow the papers), the imported config.model sets
the option that matches HF exactly:
  - ViViT: hidden_act 'gelu_fast' is the tanh GELU -> gelu_approximate=True (scenic's flax default
    too); TimeSformer 'gelu' is the exact one.
  - TimeSformer space-only: transformers returns one logit vector per frame (B*T rows) and never
    averages; we average them: space_cls_average='after_norm' (LayerNorm per frame, then the mean),
    where the official code averages the class tokens before the LayerNorm ('before_norm').
  - Layer-norm eps from config.json (1e-6 in both; 1e-12 in some hand-made configs).
Token order differs (HF TimeSformer orders patches (h, w, t), we (t, h, w)); attention is
permutation-equivariant within each grouping, so the logits are the same.

Tensors are numpy throughout; torch is needed only to read pytorch_model.bin / .pyth files.
"""
import dataclasses
import json
import os
import re

import numpy as np

from sparse_tubes import config as config_lib
from sparse_tubes.pretrained import optional, weights

MODEL_TYPES = ('timesformer', 'vivit')
TIMESFORMER_ATTENTION = {'divided_space_time': 'divided', 'joint_space_time': 'joint',
                         'space_only': 'space'}
EXACT_GELU = ('gelu',)
TANH_GELU = ('gelu_fast', 'gelu_new', 'gelu_pytorch_tanh')

# transformers' conversion_mapping.py 'ViTModel' (applied to VivitModel): old -> new, in order.
VIVIT_V4_TO_V5 = (
    (r'encoder\.layer\.', 'layers.'),
    (r'attention\.query', 'q_proj'),
    (r'attention\.key', 'k_proj'),
    (r'attention\.value', 'v_proj'),
    (r'attention\.output\.dense', 'attention.o_proj'),
    (r'intermediate\.dense', 'mlp.fc1'),
    (r'output\.dense', 'mlp.fc2'),
)
VIVIT_V5_TO_V4 = (
    (r'^layers\.', 'encoder.layer.'),
    (r'attention\.([qkv])_proj', lambda m: 'attention.attention.' + {
        'q': 'query', 'k': 'key', 'v': 'value'}[m.group(1)]),
    (r'attention\.o_proj', 'attention.output.dense'),
    (r'mlp\.fc1', 'intermediate.dense'),
    (r'mlp\.fc2', 'output.dense'),
)


# ------------------------------------------------------------------------------------ reading

def read_state_dict(path: str) -> dict:
  """A flat {name: np.ndarray} from a HF directory (safetensors preferred) or one weights file."""
  if os.path.isdir(path):
    for name in ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                 'pytorch_model.bin.index.json'):
      if os.path.exists(os.path.join(path, name)):
        return read_state_dict(os.path.join(path, name))
    raise FileNotFoundError(f'{path} holds no model.safetensors or pytorch_model.bin (nor their '
                            '.index.json shards): give a directory written by save_pretrained.')
  if path.endswith('.index.json'):
    with open(path) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
    sd = {}
    for name in files:
      sd.update(read_state_dict(os.path.join(os.path.dirname(path), name)))
    return sd
  return weights.read_torch(path)


def read_config(path: str) -> dict:
  cfg_path = os.path.join(path, 'config.json') if os.path.isdir(path) else path
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f'{cfg_path} not found: a HuggingFace checkpoint directory holds '
                            'config.json next to its weights.')
  with open(cfg_path) as f:
    cfg = json.load(f)
  if cfg.get('model_type') not in MODEL_TYPES:
    raise ValueError(f'{cfg_path}: model_type {cfg.get("model_type")!r} is not one of '
                     f'{MODEL_TYPES} (HF TimeSformer or ViViT).')
  return cfg


def _pair(v):
  return (int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(x) for x in v)


# ---------------------------------------------------------------------------- architecture

def model_config(hf: dict) -> dict:
  """config.model keys (sparse_tubes/models/video_vit.py) of the HF config `hf`."""
  act = hf.get('hidden_act', 'gelu' if hf['model_type'] == 'timesformer' else 'gelu_fast')
  if act not in EXACT_GELU + TANH_GELU:
    raise ValueError(f'hidden_act {act!r} is not supported: use one of {EXACT_GELU + TANH_GELU}.')
  d = int(hf.get('hidden_size', 768))
  heads = int(hf.get('num_attention_heads', 12))
  h, w = _pair(hf.get('image_size', 224))
  c = int(hf.get('num_channels', 3))
  model = dict(hidden_size=d, num_layers=int(hf.get('num_hidden_layers', 12)), num_heads=heads,
               mlp_dim=int(hf.get('intermediate_size', 3072)), in_channels=c, image_tube=None,
               head='token', layer_norm_eps=float(hf.get('layer_norm_eps', 1e-6)),
               gelu_approximate=act in TANH_GELU, dropout=0.0, stochastic_depth=0.0)
  if hf['model_type'] == 'timesformer':
    p = _pair(hf.get('patch_size', 16))
    t = int(hf.get('num_frames', 8))
    attention = TIMESFORMER_ATTENTION[hf.get('attention_type', 'divided_space_time')]
    model.update(name='timesformer', tubes=(((1, *p), (1, *p), (0, 0, 0)),),
                 posemb='learned_space_time', attention=attention, input_shape=(t, h, w, c))
    if attention == 'space':
      model['space_cls_average'] = 'after_norm'  # HF's per-frame logits, averaged
  else:
    tubelet = tuple(int(x) for x in hf.get('tubelet_size', (2, 16, 16)))
    t = int(hf.get('num_frames', 32))
    model.update(name='vivit', tubes=((tubelet, tubelet, (0, 0, 0)),), posemb='learned',
                 attention='joint', input_shape=(t, h, w, c))
  return model


def hf_config(model: dict, *, num_labels: int, id2label: dict | None = None) -> dict:
  """The HF config.json of our config.model (TimeSformer / ViViT Model 1 only)."""
  m = config_lib.model_config(model)  # defaults filled in, name defaults resolved
  name = m.name
  (k, s, o), = m['tubes'] if len(m['tubes']) == 1 else (None,)
  t, h, w, c = m['input_shape']
  act = 'gelu_fast' if m.gelu_approximate else 'gelu'
  common = dict(hidden_size=int(m['hidden_size']), num_hidden_layers=int(m['num_layers']),
                num_attention_heads=int(m['num_heads']), intermediate_size=int(m['mlp_dim']),
                num_channels=int(c), num_frames=int(t), hidden_act=act,
                layer_norm_eps=float(m.layer_norm_eps), qkv_bias=True,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  if tuple(k) != tuple(s) or any(o):
    raise ValueError(f'config.model.tubes = {m["tubes"]}: the HF layout needs one tube with stride '
                     '= kernel and no offset.')
  if m.head != 'token':
    raise ValueError("HF TimeSformer/ViViT classify the class token: config.model.head must be "
                     f"'token', not {m.head!r}.")
  labels = {str(i): (id2label or {}).get(i, f'LABEL_{i}') for i in range(num_labels)}
  common.update(id2label=labels, label2id={v: int(i) for i, v in labels.items()})
  if name == 'timesformer':
    if k[0] != 1 or k[1] != k[2] or h != w:
      raise ValueError('HF TimeSformer needs square 2D patches (1, p, p) and square frames; got '
                       f'kernel {tuple(k)} on {h}x{w}.')
    inv = {v: k for k, v in TIMESFORMER_ATTENTION.items()}
    attention = m.attention
    if attention not in inv or m.posemb != 'learned_space_time':
      raise ValueError(f"config.model.attention = {attention!r}: HF TimeSformer has "
                       f"{tuple(inv)} with posemb='learned_space_time'.")
    return dict(model_type='timesformer', architectures=['TimesformerForVideoClassification'],
                image_size=int(h), patch_size=int(k[1]), attention_type=inv[attention], **common)
  if name == 'vivit':
    if m.attention != 'joint' or m.encoder != 'single' or m.posemb != 'learned':
      raise ValueError('HF ViViT is Model 1 only: attention joint, a single encoder, posemb '
                       "'learned'.")
    if h != w:
      raise ValueError(f'HF ViViT needs square frames; got {h}x{w}.')
    return dict(model_type='vivit', architectures=['VivitForVideoClassification'],
                image_size=int(h), tubelet_size=[int(x) for x in k], **common)
  raise ValueError(f'config.model.name = {name!r}: HF export covers timesformer and vivit.')


# ------------------------------------------------------------------------- tensor mappings
# One table of (kind, [HF names], our path) for both directions, so export inverts import exactly.

def _entries(hf: dict, model: dict):
  """(kind, HF key prefix or names, our path) in the bare base-model namespace (no prefix)."""
  ts = hf['model_type'] == 'timesformer'
  e = [('cls_token', 'embeddings.cls_token', 'cls_token'),
       ('conv', 'embeddings.patch_embeddings.projection', 'tokenizer/convs/0'),
       ('posemb', 'embeddings.position_embeddings', 'posemb'),
       ('ln', 'layernorm', 'encoder/norm')]
  if ts and model['attention'] != 'space':
    e.append(('time', 'embeddings.time_embeddings', 'posemb/time'))
  for i in range(int(model['num_layers'])):
    b = f'encoder/blocks/{i}'
    if ts:
      L = f'encoder.layer.{i}.'
      e += [('ln', L + 'layernorm_before', f'{b}/norm1'),
            ('qkv', L + 'attention.attention.qkv', f'{b}/attention'),
            ('out', L + 'attention.output.dense', f'{b}/attention'),
            ('ln', L + 'layernorm_after', f'{b}/norm2'),
            ('linear', L + 'intermediate.dense', f'{b}/mlp/fc1'),
            ('linear', L + 'output.dense', f'{b}/mlp/fc2')]
      if model['attention'] == 'divided':
        e += [('ln', L + 'temporal_layernorm', f'{b}/temporal_norm'),
              ('qkv', L + 'temporal_attention.attention.qkv', f'{b}/temporal_attention'),
              ('out', L + 'temporal_attention.output.dense', f'{b}/temporal_attention'),
              ('linear', L + 'temporal_dense', f'{b}/temporal_fc')]
    else:
      L = f'layers.{i}.'
      e += [('ln', L + 'layernorm_before', f'{b}/norm1'),
            ('q', L + 'attention.q_proj', f'{b}/attention'),
            ('k', L + 'attention.k_proj', f'{b}/attention'),
            ('v', L + 'attention.v_proj', f'{b}/attention'),
            ('out', L + 'attention.o_proj', f'{b}/attention'),
            ('ln', L + 'layernorm_after', f'{b}/norm2'),
            ('linear', L + 'mlp.fc1', f'{b}/mlp/fc1'),
            ('linear', L + 'mlp.fc2', f'{b}/mlp/fc2')]
  return e


def _grid(model):
  (k, _, _), = model['tubes']
  t, h, w, _ = model['input_shape']
  return t // k[0], h // k[1], w // k[2]


def _import_entry(kind, name, path, get, model, out):
  d, heads = int(model['hidden_size']), int(model['num_heads'])
  hd = d // heads
  if kind == 'cls_token':
    out[path] = get(name).reshape(1, 1, d)
  elif kind == 'conv':
    w = get(name + '.weight')  # (D, C, kh, kw) for Conv2d, (D, C, kt, kh, kw) for Conv3d
    out[path + '/kernel'] = (w.transpose(2, 3, 1, 0)[None] if w.ndim == 4
                             else w.transpose(2, 3, 4, 1, 0))
    out[path + '/bias'] = get(name + '.bias')
  elif kind == 'posemb':
    p = get(name)[0]  # (1 + N, D): the class token's position first
    nt, nh, nw = _grid(model)
    out[path + '/cls'] = p[0]
    if model['name'] == 'timesformer':
      out[path + '/space'] = p[1:].reshape(nh, nw, d)
    else:
      out[path + '/tables/0'] = p[1:].reshape(nt, nh, nw, d)
  elif kind == 'time':
    out[path] = get(name)[0]
  elif kind == 'ln':
    out[path + '/scale'], out[path + '/bias'] = get(name + '.weight'), get(name + '.bias')
  elif kind == 'linear':
    out[path + '/kernel'], out[path + '/bias'] = get(name + '.weight').T, get(name + '.bias')
  elif kind == 'qkv':
    w = get(name + '.weight')
    bias = get(name + '.bias', np.zeros(3 * d, w.dtype))  # qkv_bias=False: zero biases
    for j, part in enumerate(('query', 'key', 'value')):
      out[f'{path}/{part}'] = w[j * d:(j + 1) * d].T.reshape(d, heads, hd)
      out[f'{path}/{part}_bias'] = bias[j * d:(j + 1) * d].reshape(heads, hd)
  elif kind in ('q', 'k', 'v'):
    part = {'q': 'query', 'k': 'key', 'v': 'value'}[kind]
    w = get(name + '.weight')
    out[f'{path}/{part}'] = w.T.reshape(d, heads, hd)
    out[f'{path}/{part}_bias'] = get(name + '.bias', np.zeros(d, w.dtype)).reshape(heads, hd)
  elif kind == 'out':
    out[path + '/out'] = get(name + '.weight').T.reshape(heads, hd, d)
    out[path + '/out_bias'] = get(name + '.bias')
  else:
    raise AssertionError(kind)


def _export_entry(kind, name, path, p, model, out):
  d = int(model['hidden_size'])
  if kind == 'cls_token':
    out[name] = p[path].reshape(1, 1, d)
  elif kind == 'conv':
    k = p[path + '/kernel']
    out[name + '.weight'] = (k[0].transpose(3, 2, 0, 1) if model['name'] == 'timesformer'
                             else k.transpose(4, 3, 0, 1, 2))
    out[name + '.bias'] = p[path + '/bias']
  elif kind == 'posemb':
    table = (p[path + '/space'] if model['name'] == 'timesformer' else p[path + '/tables/0'])
    out[name] = np.concatenate([p[path + '/cls'][None], table.reshape(-1, d)])[None]
  elif kind == 'time':
    out[name] = p[path][None]
  elif kind == 'ln':
    out[name + '.weight'], out[name + '.bias'] = p[path + '/scale'], p[path + '/bias']
  elif kind == 'linear':
    out[name + '.weight'], out[name + '.bias'] = p[path + '/kernel'].T, p[path + '/bias']
  elif kind == 'qkv':
    parts = ('query', 'key', 'value')
    out[name + '.weight'] = np.concatenate([p[f'{path}/{x}'].reshape(d, d).T for x in parts])
    out[name + '.bias'] = np.concatenate([p[f'{path}/{x}_bias'].reshape(d) for x in parts])
  elif kind in ('q', 'k', 'v'):
    part = {'q': 'query', 'k': 'key', 'v': 'value'}[kind]
    out[name + '.weight'] = p[f'{path}/{part}'].reshape(d, d).T
    out[name + '.bias'] = p[f'{path}/{part}_bias'].reshape(d)
  elif kind == 'out':
    out[name + '.weight'] = p[path + '/out'].reshape(d, d).T
    out[name + '.bias'] = p[path + '/out_bias']
  else:
    raise AssertionError(kind)


# ------------------------------------------------------------------------------- key layouts

def normalize_keys(sd: dict, model_type: str) -> tuple[dict, dict]:
  """(base-model state dict in the current layout, {'classifier.weight', ...}) from any accepted
  layout: prefixes stripped, LayerNorm gamma/beta renamed, ViViT 4.x names renamed to 5.x."""
  base, extra = {}, {}
  prefix = model_type + '.'
  for key, v in sd.items():
    k = key[len('module.'):] if key.startswith('module.') else key
    k = re.sub(r'\.gamma$', '.weight', re.sub(r'\.beta$', '.bias', k))
    if k.startswith('classifier.'):
      extra[k] = v
      continue
    if k.startswith(prefix):
      k = k[len(prefix):]
    if model_type == 'vivit':
      for pat, rep in VIVIT_V4_TO_V5:
        k = re.sub(pat, rep, k)
    base[k] = v
  return base, extra


# The pixel pre-processing each source was trained with, as dataset config keys (defaults.dataset()):
# evaluating or fine-tuning a converted checkpoint must feed exactly that.
#   TimeSformer (official .pyth and HF facebook/timesformer-*): PySlowFast's Kinetics statistics,
#     mean 0.45 and std 0.225 on pixels in [0, 1] (the HF preprocessor_config.json says the same).
#   ViViT (HF google/vivit-*, trained in Scenic with dataset_configs.zero_centering=True): [-1, 1].
#     HF's VivitImageProcessor rescales to [-1, 1] (offset=True) and then, by default, also
#     normalizes with mean = std = 0.5, which feeds [-3, 1]; we feed what Scenic trained on.
#   big_vision / vision_transformer image ViTs (.npz): value_range(-1, 1).
PREPROCESSING = {
    'timesformer': dict(normalization='kinetics'),
    'vivit': dict(normalization='minus_one_to_one'),
    'vit_npz': dict(normalization='minus_one_to_one'),
}
NAMED_MEAN_STD = {'kinetics': ((0.45,) * 3, (0.225,) * 3),
                  'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  'minus_one_to_one': ((0.5,) * 3, (0.5,) * 3)}


def preprocessing(model_type: str, path: str = '') -> dict:
  """Dataset config keys of the normalization a checkpoint of `model_type` expects: the
  source's (PREPROCESSING), or for TimeSformer the image_mean/image_std of a
  preprocessor_config.json beside the weights (a HF image processor rescales to [0, 1] first)."""
  out = dict(PREPROCESSING[model_type])
  cfg_path = os.path.join(path, 'preprocessor_config.json') if path and os.path.isdir(path) else ''
  if model_type == 'timesformer' and cfg_path and os.path.exists(cfg_path):
    with open(cfg_path) as f:
      proc = json.load(f)
    mean, std = proc.get('image_mean'), proc.get('image_std')
    if proc.get('do_normalize', True) and mean and std:
      mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
      named = [n for n, (m, s) in NAMED_MEAN_STD.items()
               if np.allclose(m, mean, atol=1e-4) and np.allclose(s, std, atol=1e-4)]
      out = (dict(normalization=named[0]) if named else
             dict(normalization='custom', norm_mean=mean, norm_std=std))
  return out


@dataclasses.dataclass
class Imported:
  """A checkpoint converted to our layout, before it is fitted to a config's heads."""
  model: dict                  # config.model keys
  params: dict                 # flat 'a/b/c' -> np.ndarray, without heads
  head: tuple | None           # (kernel (D, n), bias (n,)) of the classifier, or None
  labels: tuple | None         # class names by index, or None
  num_frames: int
  image_size: tuple            # (H, W)
  ignored: list                # checkpoint keys not used (e.g. ViViT's pooler)
  source: str
  preprocessing: dict = dataclasses.field(default_factory=dict)  # dataset keys (PREPROCESSING)


def convert_state_dict(sd: dict, hf: dict, *, source: str = '') -> Imported:
  """HF TimeSformer/ViViT state dict (any accepted layout) -> our flat params."""
  model = model_config(hf)
  base, extra = normalize_keys(sd, hf['model_type'])
  used, missing, flat = set(), set(), {}
  sentinel = object()

  def get(name, default=sentinel):
    if name in base:
      used.add(name)
      return np.asarray(base[name], np.float32)
    if default is sentinel:
      missing.add(name)
      return None
    return default

  source = source or 'checkpoint'
  for kind, name, path in _entries(hf, model):
    used.update(k for k in base if k == name or k.startswith(name + '.'))  # claimed by this entry
    try:
      _import_entry(kind, name, path, get, model, flat)
    except (AttributeError, ValueError, TypeError) as e:
      if not missing:
        shape = {k: v.shape for k, v in base.items() if k.startswith(name)}
        raise weights.CheckpointMismatch(
            f'{source}: {name} (checkpoint shapes {shape}; {e}) and the architecture of '
            'config.json') from None
  ignored = sorted(k for k in base if k not in used and k.startswith('pooler.'))
  unexpected = sorted(k for k in base if k not in used and not k.startswith('pooler.'))
  if missing or unexpected:
    raise weights.CheckpointMismatch(f'{source}: the weights and the {hf["model_type"]} '
                                     'architecture of its config.json', missing, unexpected)
  head = None
  if 'classifier.weight' in extra:
    w = np.asarray(extra['classifier.weight'], np.float32)
    b = np.asarray(extra.get('classifier.bias', np.zeros(w.shape[0])), np.float32)
    head = (w.T, b)
  labels = None
  if head is not None and hf.get('id2label'):
    id2label = {int(k): v for k, v in hf['id2label'].items()}
    labels = tuple(id2label.get(i, f'LABEL_{i}') for i in range(head[1].shape[0]))
  return Imported(model=model, params=flat, head=head, labels=labels,
                  num_frames=int(model['input_shape'][0]),
                  image_size=tuple(model['input_shape'][1:3]), ignored=ignored, source=source,
                  preprocessing=preprocessing(hf['model_type'], source))


def load(path: str) -> Imported:
  """A HF TimeSformer/ViViT directory -> `Imported` (our config.model and flat params)."""
  return convert_state_dict(read_state_dict(path), read_config(path), source=path)


# ------------------------------------------------------------------------------------ export

def to_state_dict(params_flat: dict, model: dict, *, head: tuple | None = None,
                  layout: str = 'v5', prefix: bool = True) -> dict:
  """Our flat params -> a HF state dict (ForVideoClassification keys when prefix=True).

  layout: 'v5' (transformers >= 5 names) or 'v4' (ViViT's transformers 4.x names; TimeSformer's
  names are the same in both)."""
  if layout not in ('v4', 'v5'):
    raise ValueError(f"layout {layout!r}: use 'v5' or 'v4'.")
  hf = hf_config(model, num_labels=0 if head is None else head[1].shape[0])
  p = {k: np.asarray(v, np.float32) for k, v in params_flat.items()}
  out = {}
  for kind, name, path in _entries(hf, model):
    _export_entry(kind, name, path, p, model, out)
  if hf['model_type'] == 'vivit' and layout == 'v4':
    renamed = {}
    for k, v in out.items():
      for pat, rep in VIVIT_V5_TO_V4:
        k = re.sub(pat, rep, k)
      renamed[k] = v
    out = renamed
  if prefix:
    out = {f"{hf['model_type']}.{k}": v for k, v in out.items()}
  if head is not None:
    out['classifier.weight'] = np.asarray(head[0], np.float32).T
    out['classifier.bias'] = np.asarray(head[1], np.float32)
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def export(params_flat: dict, model: dict, out_dir: str, *, head: tuple,
           labels=None, layout: str = 'v5') -> str:
  """Writes config.json + model.safetensors for `*ForVideoClassification.from_pretrained`."""
  save_file = optional('safetensors.numpy', 'writing a HuggingFace checkpoint').save_file
  num_labels = int(np.asarray(head[1]).shape[0])
  id2label = {i: str(n) for i, n in enumerate(labels)} if labels else None
  cfg = hf_config(model, num_labels=num_labels, id2label=id2label)
  sd = to_state_dict(params_flat, model, head=head, layout=layout)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(cfg, f, indent=2)
  save_file(sd, os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})
  return out_dir
