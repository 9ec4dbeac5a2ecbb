"""What every checkpoint reader here shares: reading PyTorch / safetensors files into numpy, the
flat '/'-joined view of our parameter trees, and the one error for weights that do not fit.

torch is imported only inside `read_torch`, when a PyTorch pickle is actually read.
"""
import re

import jax
import numpy as np

from sparse_tubes.pretrained import optional

LISTED = 20  # keys listed per kind in a mismatch message; the count says how many there are


class CheckpointMismatch(ValueError):
  """Keys or shapes of a checkpoint that do not fit: all kinds listed at once."""

  def __init__(self, what: str, missing=(), unexpected=(), shapes=()):
    lines = [f'{what} does not fit:']
    for name, keys in (('missing', missing), ('unexpected', unexpected)):
      if keys:
        keys = sorted(keys)
        lines.append(f'  {name} keys ({len(keys)}): ' + ', '.join(keys[:LISTED])
                     + (' ...' if len(keys) > LISTED else ''))
    for key, have, want in shapes:
      lines.append(f'  shape mismatch: {key} is {tuple(have)}, expected {tuple(want)}')
    super().__init__('\n'.join(lines))
    self.missing, self.unexpected, self.shapes = list(missing), list(unexpected), list(shapes)


# ------------------------------------------------------------------------------------ files

def to_numpy(sd: dict) -> dict:
  """{name: np.ndarray} of a state dict of torch tensors (bfloat16 read as float32) or arrays."""
  out = {}
  for k, v in sd.items():
    if hasattr(v, 'detach'):  # torch.Tensor
      v = v.detach().cpu()
      if str(v.dtype) == 'torch.bfloat16':
        v = v.float()
      v = v.numpy()
    out[k] = np.asarray(v)
  return out


def torch_load(path: str):
  """The object of a `torch.save` file (tensors on the CPU); torch is imported here only."""
  torch = optional('torch', f'{path} is a PyTorch checkpoint: reading it')
  return torch.load(path, map_location='cpu', weights_only=True)


def read_torch(path: str) -> dict:
  """A state dict file (.safetensors, or a PyTorch pickle: .pth/.pt/.bin) as numpy arrays.
  Training checkpoints that wrap the state dict ('model', 'state_dict', 'model_state') are
  unwrapped."""
  if path.endswith('.safetensors'):
    load_file = optional('safetensors.numpy', f'reading {path}').load_file
    return {k: np.asarray(v) for k, v in load_file(path).items()}
  sd = read_torch_pickle(path)
  for key in ('model', 'state_dict', 'model_state'):
    if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
      sd = sd[key]
  return to_numpy({k: v for k, v in sd.items() if hasattr(v, 'shape')})


def read_torch_pickle(path: str):
  """`torch_load`, with one line when the file is not a checkpoint of tensors at all (torch's own
  message advises weights_only=False, which would run the file's code: wrong for a random file)."""
  try:
    return torch_load(path)
  except ImportError:
    raise
  except Exception as e:  # noqa: BLE001 - every unpickling failure means the same here
    raise ValueError(f'{path} is not a PyTorch checkpoint of tensors ({type(e).__name__} on '
                     'reading it; it is not opened unsafely). Give the .pth/.pyth file of the '
                     'published weights (or a .safetensors file).') from None


# ------------------------------------------------------------------- our param trees <-> flat

def _key_str(k) -> str:
  return str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))


def flatten(tree) -> dict:
  """{'a/b/0/c': leaf} of a nested params tree (our pure-dict params; list indices as digits)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(_key_str(k) for k in path): v for path, v in leaves}


def unflatten_like(like, flat: dict, *, what: str = 'checkpoint'):
  """The params tree shaped as `like` (arrays or ShapeDtypeStructs), values from flat 'a/b/c'
  arrays cast to `like`'s dtypes. Every key must be there with its shape (else CheckpointMismatch).

  Scanned encoders (config.model.scan_layers=True) keep 'encoder/blocks/<name>' with a leading
  layer axis: per-layer 'encoder/blocks/<i>/<name>' arrays are stacked into it."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(like)
  used, missing, shapes, leaves = set(), [], [], []
  for path, ref in paths:
    key = '/'.join(_key_str(k) for k in path)
    value = flat.get(key)
    if value is None:
      m = re.match(r'^(.*/blocks)/(.+)$', key)
      if m and f'{m.group(1)}/0/{m.group(2)}' in flat:  # scan: stack the per-layer arrays
        names = [f'{m.group(1)}/{i}/{m.group(2)}' for i in range(ref.shape[0])]
        if all(x in flat for x in names):
          value = np.stack([flat[x] for x in names])
          used.update(names)
    else:
      used.add(key)
    if value is None:
      missing.append(key)
      leaves.append(None)
      continue
    if tuple(np.shape(value)) != tuple(ref.shape):
      shapes.append((key, np.shape(value), ref.shape))
    leaves.append(np.asarray(value, ref.dtype))
  unexpected = sorted(set(flat) - used)
  if missing or unexpected or shapes:
    raise CheckpointMismatch(f'the {what}', missing, unexpected, shapes)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def unstack_scanned(flat: dict, num_layers: int) -> dict:
  """Inverse of the scan stacking in `unflatten_like`: 'encoder/blocks/<name>' (L, ...) ->
  'encoder/blocks/<i>/<name>'."""
  out = {}
  for k, v in flat.items():
    m = re.match(r'^(.*/blocks)/([^0-9].*)$', k)
    if m and np.shape(v)[0] == num_layers:
      for i in range(num_layers):
        out[f'{m.group(1)}/{i}/{m.group(2)}'] = np.asarray(v)[i]
    else:
      out[k] = v
  return out


def summarise(keys, limit: int = 12) -> str:
  """Compact list of parameter names for reports: block-level keys collapsed over the layer."""
  seen = []
  for k in keys:
    k = re.sub(r'/blocks/\d+/', '/blocks/*/', k)
    if k not in seen:
      seen.append(k)
  more = f' ... (+{len(seen) - limit})' if len(seen) > limit else ''
  return ', '.join(seen[:limit]) + more
