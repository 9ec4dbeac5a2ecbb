"""A checkpoint as an ONNX model (`convert --to=onnx`), for onnxruntime, TensorRT or a browser.

The model of one head is traced by jax2onnx (its `to_onnx`, opset OPSET) with the parameters as
constants: input `video` float32 (batch, T, H, W, C), normalized as the head's dataset is (the batch
dimension is dynamic), outputs `logits` (batch, classes) and `features` (batch, hidden_size), the
pooled representation the head sees. The export then runs onnxruntime on random clips and compares
its logits with the JAX model's (`verify`): a model is written only if they agree to TOLERANCE.

What exports (tested: configs/synthetic/*_tiny.py, float32, <= 1e-6 apart): TubeViT sparse tubes
(conv and space_to_depth tubes), sincos3d and learned positions, class-token, GAP and MAP heads;
ViViT models 1-4; TimeSformer joint, divided, space-only, local-global and axial attention; scanned
layers. What does not, refused before anything is traced (`check`):

  tube_variant='interpolated'  the kernels are resized from one learned kernel by 3-D trilinear
                               resizing of a 5-D array, which the exporter writes as an ONNX
                               Resize that onnxruntime rejects ('linear' mode takes 2-D or 4-D
                               scales only).

Run-time settings are exported as plain float32 math whatever the config says: attention 'einsum'
(splash and cuDNN are accelerator kernels), compute float32 (a bfloat16 model's parameters are
float32 already; onnxruntime's CPU Einsum has no bfloat16 kernel), no remat.
"""
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sparse_tubes import config as config_lib
from sparse_tubes.models import video_vit

OPSET = 21            # onnxruntime >= 1.16 runs it
TOLERANCE = 1e-4      # float32 logits, max abs difference
INSTALL = "pip install 'sparse_tubes[onnx]'"


def check(model_cfg) -> None:
  """Raises ValueError, naming the config key, for a model the ONNX export cannot serve."""
  cfg = config_lib.model_config(model_cfg)
  if cfg.tube_variant == 'interpolated':
    raise ValueError(
        "config.model.tube_variant='interpolated' does not export to ONNX: its tube kernels are "
        'resized from one learned kernel by trilinear resizing of a 5-D array, an ONNX Resize '
        "onnxruntime rejects. Export a model trained with tube_variant='conv' or "
        "'space_to_depth'.")


def export_config(model_cfg) -> ml_collections.ConfigDict:
  """The model config as exported: plain float32 math (see the module doc)."""
  cfg = ml_collections.ConfigDict(dict(model_cfg.to_dict()))
  cfg.update(attention_impl='einsum', dtype='float32', remat=False)
  return cfg


def _import():
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'convert --to=onnx needs jax2onnx and onnxruntime ({e}): {INSTALL}, then '
                      "pip install --no-deps 'jax2onnx==0.17.1' (docs/features_and_deployment.md "
                      'says why --no-deps).') from None
  # Its plugin registry logs a warning for every optional library (equinox, dm_pix) it skips.
  logging.getLogger('jax2onnx').setLevel(logging.ERROR)
  logging.getLogger('onnx_ir').setLevel(logging.ERROR)  # shapes of constants it does not type
  return jax2onnx, onnxruntime


def model_fn(model_cfg, params, num_classes: dict, dataset: str):
  """x -> (logits, features) of the head `dataset`, parameters as host constants."""
  cfg = export_config(model_cfg)
  graphdef, state = video_vit.abstract_model(cfg, num_classes)
  # Host arrays, outside any mesh: constants of the ONNX graph, no sharding annotations.
  state.replace_by_pure_dict(jax.tree.map(np.asarray, jax.device_get(params)))
  model = nnx.merge(graphdef, state)

  def fn(x):
    h = model.representation(x, train=False).astype(jnp.float32)
    return model.heads[dataset](h), h
  return fn


def export(model_cfg, params, num_classes: dict, dataset: str, input_shape: tuple, output: str,
           *, seed: int = 0) -> dict:
  """Writes the ONNX model of head `dataset` to `output` once onnxruntime's logits match ours on
  two random clips of `input_shape` (T, H, W, C) (or (H, W, C)); returns what was checked."""
  check(model_cfg)
  jax2onnx, _ = _import()
  fn = model_fn(model_cfg, params, num_classes, dataset)
  proto = jax2onnx.to_onnx(fn, [('batch', *input_shape)], model_name=f'sparse_tubes_{dataset}',
                           opset=OPSET, input_names=['video'], output_names=['logits', 'features'],
                           return_mode='proto')
  x = np.random.default_rng(seed).uniform(-1, 1, (2, *input_shape)).astype(np.float32)
  ours = [np.asarray(a) for a in jax.jit(fn)(x)]
  theirs = run(proto.SerializeToString(), x)
  diffs = [float(np.abs(a - b).max()) for a, b in zip(ours, theirs)]
  diff = max(diffs)
  if not diff <= TOLERANCE:
    raise RuntimeError(f'onnxruntime disagrees with the JAX model on {input_shape} clips: logits by '
                       f'{diffs[0]:.3g}, features by {diffs[1]:.3g} (tolerance {TOLERANCE}); '
                       'nothing written. (Features that agree and logits that do not: a head with '
                       'very large weights magnifies float32 rounding.)')
  os.makedirs(os.path.dirname(os.path.abspath(output)) or '.', exist_ok=True)
  tmp = output + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(proto.SerializeToString())
  os.replace(tmp, output)
  return {'output': os.path.abspath(output), 'opset': OPSET, 'max_abs_diff': diff,
          'input_shape': ['batch', *input_shape], 'classes': int(num_classes[dataset]),
          'bytes': os.path.getsize(output), 'nodes': len(proto.graph.node)}


def run(model, x: np.ndarray) -> list[np.ndarray]:
  """onnxruntime (CPU) on an ONNX model (bytes or path): [logits, features]."""
  _, ort = _import()
  session = ort.InferenceSession(model, providers=['CPUExecutionProvider'])
  return session.run(['logits', 'features'], {'video': x})
