"""Image-ViT checkpoints in every layout load into our image model and give the features of an
independent implementation (HuggingFace transformers' ViTModel); bad files fail with every
missing/unexpected key and shape listed."""
import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

from sparse_tubes.pretrained import vit, weights  # noqa: E402
import vit_helpers as H  # noqa: E402

LAYOUTS = ('hf_vit', 'timm', 'torchvision', 'vit_npz', 'big_vision_npz', 'safetensors')


@pytest.fixture(scope='module')
def hf():
  model = H.hf_vit(seed=0, num_labels=5)
  images = np.random.default_rng(0).uniform(-1, 1, (2, H.SIZE, H.SIZE, 3)).astype(np.float32)
  return model, H.hf_state(model), images, H.hf_features(model, images)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_every_layout_gives_the_reference_features(hf, layout, tmp_path):
  model, sd, images, want = hf
  path = H.write(layout, sd, tmp_path / 'vit')
  loaded = vit.load(path)
  assert loaded.layout == {'safetensors': 'timm'}.get(layout, layout)
  assert (loaded.num_layers, loaded.hidden_size, loaded.patch_size) == (H.LAYERS, H.D, (8, 8))
  ours, _ = H.model_from(loaded, H.image_model_cfg(), opts=dict(keep_heads=True))
  got = np.asarray(ours.representation(images))
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
  # The head too: our logits are HF's classifier on the same features.
  import torch
  with torch.no_grad():
    logits = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours(images, dataset='x')), logits, atol=2e-5, rtol=1e-4)


def test_old_hf_names_load(hf, tmp_path):
  _, sd, images, want = hf
  old = {}
  for k, v in sd.items():
    k = k.replace('vit.layers.', 'vit.encoder.layer.')
    for a, b in (('attention.q_proj', 'attention.attention.query'),
                 ('attention.k_proj', 'attention.attention.key'),
                 ('attention.v_proj', 'attention.attention.value'),
                 ('attention.o_proj', 'attention.output.dense'),
                 ('mlp.fc1', 'intermediate.dense'), ('mlp.fc2', 'output.dense')):
      k = k.replace(a, b)
    old[k] = v
  ours, _ = H.model_from(vit.from_torch(old), H.image_model_cfg())
  np.testing.assert_allclose(np.asarray(ours.representation(images)), want, atol=2e-5, rtol=1e-4)


def test_npz_round_trip_of_our_image_model(tmp_path):
  canon, model = H.random_image_vit(seed=3)
  for style in ('vit', 'big_vision'):
    path = vit.save_npz(canon, str(tmp_path / f'{style}.npz'), style=style)
    back = vit.load(path)
    assert back.num_heads == H.HEADS
    ours, _ = H.model_from(back, H.image_model_cfg(), opts=dict(keep_heads=True))
    x = np.random.default_rng(1).uniform(-1, 1, (2, H.SIZE, H.SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ours(x, dataset='x')), np.asarray(model(x, dataset='x')),
                               atol=1e-5)


def test_mismatch_lists_missing_unexpected_and_shapes(hf, tmp_path):
  _, sd, _, _ = hf
  t = H.hf_to_timm(sd)
  del t['blocks.1.norm1.weight']
  t['blocks.0.extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(weights.CheckpointMismatch) as e:
    vit.from_torch(t)
  msg = str(e.value)
  assert 'missing keys (1): blocks.1.norm1.weight' in msg and 'blocks.0.extra.weight' in msg
  t = H.hf_to_timm(sd)
  t['blocks.0.norm2.bias'] = np.zeros(7, np.float32)
  with pytest.raises(weights.CheckpointMismatch, match=r'blocks/0/norm2/bias is \(7,\), expected \(32,\)'):
    vit.from_torch(t)
  npz = H.timm_to_npz(H.hf_to_timm(sd))
  npz['Transformer/encoderblock_0/MlpBlock_3/Dense_9/kernel'] = np.zeros(2)
  del npz['Transformer/encoder_norm/scale']
  with pytest.raises(weights.CheckpointMismatch, match=r'(?s)missing keys.*encoder_norm/scale.*'
                                                   r'unexpected keys.*Dense_9'):
    vit.from_npz(npz)


def test_wrong_width_for_the_config_names_it(hf):
  _, sd, _, _ = hf
  loaded = vit.from_torch(sd)
  with pytest.raises(weights.CheckpointMismatch, match=r'hidden_size is \(32,\), expected \(64,\)'):
    H.model_from(loaded, H.image_model_cfg(hidden_size=64, mlp_dim=64))
  with pytest.raises(FileNotFoundError, match='init_from.path'):
    vit.load('/nonexistent/vit.npz')
