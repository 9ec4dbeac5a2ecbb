"""The official TimeSformer checkpoint (facebookresearch/TimeSformer .pyth): its key names for every
attention scheme, the same parameters as the HF import of the same weights, and the same logits."""
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from sparse_tubes.pretrained import hf, timesformer_official  # noqa: E402
from tests.pretrained import hf_helpers as H  # noqa: E402


def _official_keys(sd: dict) -> dict:
  """HF TimeSformer names -> facebookresearch/TimeSformer names (the inverse of the importer)."""
  inverse = [
      ('timesformer.embeddings.cls_token', 'cls_token'),
      ('timesformer.embeddings.position_embeddings', 'pos_embed'),
      ('timesformer.embeddings.time_embeddings', 'time_embed'),
      ('timesformer.embeddings.patch_embeddings.projection.', 'patch_embed.proj.'),
      ('timesformer.layernorm.', 'norm.'), ('classifier.', 'head.'),
      ('timesformer.encoder.layer.', 'blocks.'),
      ('.layernorm_before.', '.norm1.'), ('.layernorm_after.', '.norm2.'),
      ('.temporal_layernorm.', '.temporal_norm1.'),
      ('.temporal_attention.attention.qkv.', '.temporal_attn.qkv.'),
      ('.temporal_attention.output.dense.', '.temporal_attn.proj.'),
      ('.temporal_dense.', '.temporal_fc.'),
      ('.attention.attention.qkv.', '.attn.qkv.'), ('.attention.output.dense.', '.attn.proj.'),
      ('.intermediate.dense.', '.mlp.fc1.'), ('.output.dense.', '.mlp.fc2.')]
  out = {}
  for k, v in sd.items():
    for a, b in inverse:
      k = k.replace(a, b)
    out['model.' + k] = torch.from_numpy(v)
  return out


@pytest.mark.parametrize('attention', ['divided_space_time', 'joint_space_time', 'space_only'])
def test_official_pyth(tmp_path, attention):
  model = H.hf_model('timesformer', attention)
  model.save_pretrained(tmp_path / 'hf')
  ref = hf.load(str(tmp_path / 'hf'))
  official = _official_keys(H.state_dict(model))
  for key in ('model.cls_token', 'model.pos_embed', 'model.patch_embed.proj.weight',
              'model.blocks.0.norm1.weight', 'model.blocks.0.attn.qkv.weight',
              'model.blocks.1.attn.proj.bias', 'model.blocks.0.norm2.weight',
              'model.blocks.0.mlp.fc1.weight', 'model.blocks.1.mlp.fc2.bias', 'model.norm.weight',
              'model.head.weight'):
    assert key in official, key
  if attention == 'divided_space_time':
    for key in ('model.time_embed', 'model.blocks.0.temporal_norm1.weight',
                'model.blocks.0.temporal_attn.qkv.weight', 'model.blocks.0.temporal_attn.proj.weight',
                'model.blocks.1.temporal_fc.weight'):
      assert key in official, key
  path = tmp_path / 'TimeSformer_tiny.pyth'
  torch.save({'epoch': 15, 'model_state': official, 'optimizer_state': {},
              'cfg': 'TIMESFORMER:\n  ATTENTION_TYPE: x\n'}, path)
  got = timesformer_official.load(str(path), num_heads=4, num_frames=H.T)
  H.assert_same(got.params, ref.params)
  for key in ('name', 'hidden_size', 'num_layers', 'mlp_dim', 'tubes', 'input_shape', 'attention'):
    assert got.model[key] == ref.model[key], key
  assert 'space_cls_average' not in got.model  # the official code's average (our default)
  if attention != 'space_only':  # same forward as HF's
    x = H.clips()
    np.testing.assert_allclose(H.our_logits(H.ours(got), x), H.hf_logits(model, x), atol=1e-5)
