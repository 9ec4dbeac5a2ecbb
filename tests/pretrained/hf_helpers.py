"""Tiny HF TimeSformer / ViViT models (random weights, CPU, no download) and our model loaded from
them; shared by tests/pretrained/test_hf_*.py, tests/test_convert.py and tests/test_predict.py."""
import jax
import ml_collections
import numpy as np
from flax import nnx

from sparse_tubes.models import video_vit
from sparse_tubes.pretrained import hf, weights

T, SIZE, CLASSES = 4, 32, 5


def hf_model(kind: str, attention: str = 'divided_space_time', *, seed: int = 0, num_labels=CLASSES,
             frames: int = T, size: int = SIZE):
  """A random-initialised HF video classifier in eval mode; every tensor perturbed (LayerNorm
  scales, zero-initialised embeddings and temporal_dense included) so each mapping is exercised."""
  import torch
  from transformers import (TimesformerConfig, TimesformerForVideoClassification, VivitConfig,
                            VivitForVideoClassification)
  torch.manual_seed(seed)
  labels = {i: f'class_{chr(97 + i)}' for i in range(num_labels)}
  common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                num_frames=frames, image_size=size, num_labels=num_labels, id2label=labels,
                label2id={v: k for k, v in labels.items()})
  if kind == 'timesformer':
    model = TimesformerForVideoClassification(
        TimesformerConfig(patch_size=8, attention_type=attention, **common))
  else:
    model = VivitForVideoClassification(VivitConfig(tubelet_size=[2, 8, 8], **common))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


def hf_logits(model, x: np.ndarray) -> np.ndarray:
  """HF logits of clips x (B, T, H, W, C); space-only TimeSformer's per-frame rows averaged."""
  import torch
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(x.transpose(0, 1, 4, 2, 3).copy())).logits.numpy()
  b = x.shape[0]
  return out.reshape(b, -1, out.shape[-1]).mean(axis=1)


def ours(imported: hf.Imported, dataset: str = 'hf', **model_overrides):
  """Our model (einsum attention) holding the imported weights and head."""
  cfg = ml_collections.ConfigDict({**imported.model, 'attention_impl': 'einsum',
                                   **model_overrides})
  n = imported.head[1].shape[0]
  model = video_vit.build_model(cfg, {dataset: n}, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  flat = dict(imported.params)
  flat[f'heads/{dataset}/kernel'], flat[f'heads/{dataset}/bias'] = imported.head
  params = weights.unflatten_like(nnx.to_pure_dict(state), flat)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model


def our_logits(model, x: np.ndarray, dataset: str = 'hf') -> np.ndarray:
  with jax.default_matmul_precision('highest'):
    return np.asarray(model(jax.numpy.asarray(x), dataset=dataset))


def clips(batch: int = 2, frames: int = T, size: int = SIZE, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, frames, size, size, 3)).astype(np.float32)


def state_dict(model) -> dict:
  """A torch module's state dict as NumPy arrays."""
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict):
  """Two state dicts: the same keys, bit-identical arrays."""
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
