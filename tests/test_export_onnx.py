"""The ONNX export's front: models it refuses before tracing, the plain float32 config it exports,
the function it traces (our logits and features), and the install hint (the whole export against
onnxruntime: tests/commands/test_convert.py)."""
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from sparse_tubes import export_onnx
from sparse_tubes.models import video_vit

CLASSES = {'shapes_video': 5}


def cfg(**kw):
  c = ml_collections.ConfigDict(dict(
      name='timesformer', hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
      tubes=(((1, 8, 8), (1, 8, 8), (0, 0, 0)),), image_tube=0, input_shape=(2, 16, 16, 3)))
  c.update(kw)
  return c


def test_interpolated_tubes_are_refused_naming_the_key():
  export_onnx.check(cfg())
  tubes = (((2, 8, 8), (2, 8, 8), (0, 0, 0)),)
  with pytest.raises(ValueError, match="config.model.tube_variant='interpolated' does not export"):
    export_onnx.check(cfg(name='tubevit', tubes=tubes, tube_variant='interpolated'))


def test_export_config_is_plain_float32_and_leaves_the_config_alone():
  c = cfg(dtype='bfloat16', remat=True, attention_impl='splash')
  out = export_onnx.export_config(c)
  assert (out.dtype, out.remat, out.attention_impl) == ('float32', False, 'einsum')
  assert (c.dtype, c.remat, c.attention_impl) == ('bfloat16', True, 'splash')
  assert out.hidden_size == 16


def test_model_fn_gives_our_logits_and_features():
  model = video_vit.build_model(cfg(), CLASSES, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  x = np.random.default_rng(0).uniform(-1, 1, (2, 2, 16, 16, 3)).astype(np.float32)
  # One compile each (op-by-op dispatch of the model costs seconds on CPU).
  fn = export_onnx.model_fn(cfg(dtype='bfloat16'), params, CLASSES, 'shapes_video')
  logits, features = jax.jit(fn)(x)
  assert logits.shape == (2, 5) and features.shape == (2, 16)
  ours = nnx.jit(lambda m, x: m(x, dataset='shapes_video', train=False))(model, x)
  np.testing.assert_allclose(logits, ours, atol=1e-5)
  head = params['heads']['shapes_video']
  np.testing.assert_allclose(logits, features @ head['kernel'] + head['bias'], atol=1e-5)


def test_a_missing_exporter_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'jax2onnx', None)  # import jax2onnx raises ImportError
  with pytest.raises(ImportError, match=r"sparse_tubes\[onnx\].*--no-deps 'jax2onnx"):
    export_onnx._import()
  with pytest.raises(ImportError, match='convert --to=onnx needs'):
    export_onnx.run(b'', np.zeros((1, 2, 16, 16, 3), np.float32))
