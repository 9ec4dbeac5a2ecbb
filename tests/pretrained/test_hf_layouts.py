"""Issue 4: HF TimeSformer/ViViT checkpoints in both key layouts (transformers 4.x and 5.x names, with
and without the base-model prefix, safetensors and pytorch_model.bin), the official TimeSformer
.pyth, clear key errors, and the export round trip (ours -> HF -> ours identical; HF logits ==
ours)."""
import json
import re

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from sparse_tubes.pretrained import hf, timesformer_official, weights  # noqa: E402
from tests.pretrained import hf_helpers as H  # noqa: E402


def _state_dict(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope='module')
def vivit(tmp_path_factory):
  model = H.hf_model('vivit')
  d = tmp_path_factory.mktemp('vivit')
  model.save_pretrained(d)
  return model, str(d), hf.load(str(d))


@pytest.fixture(scope='module')
def divided(tmp_path_factory):
  model = H.hf_model('timesformer', 'divided_space_time')
  d = tmp_path_factory.mktemp('divided')
  model.save_pretrained(d)
  return model, str(d), hf.load(str(d))


def test_vivit_v4_names_bin_and_bare_model(vivit, tmp_path):
  model, d, ref = vivit
  cfg = json.load(open(f'{d}/config.json'))
  sd = _state_dict(model)
  # transformers 4.x names ('vivit.encoder.layer.{i}.attention.attention.query', ...), as a
  # pytorch_model.bin, with LayerNorm gamma/beta as in old pickles.
  v4 = {}
  for k, v in sd.items():
    for pat, rep in hf.VIVIT_V5_TO_V4:
      k = re.sub(pat, rep, k) if not k.startswith('vivit.') else \
          'vivit.' + re.sub(pat, rep, k[len('vivit.'):])
    k = re.sub(r'(layernorm_before|layernorm_after)\.weight$', r'\1.gamma', k)
    v4[k] = torch.from_numpy(v)
  assert 'vivit.encoder.layer.0.attention.attention.query.weight' in v4
  assert 'vivit.encoder.layer.1.intermediate.dense.weight' in v4
  assert 'vivit.encoder.layer.0.layernorm_before.gamma' in v4
  (tmp_path / 'v4').mkdir()
  torch.save(v4, tmp_path / 'v4' / 'pytorch_model.bin')
  json.dump(cfg, open(tmp_path / 'v4' / 'config.json', 'w'))
  got = hf.load(str(tmp_path / 'v4'))
  _same(got.params, ref.params)
  np.testing.assert_array_equal(got.head[0], ref.head[0])

  # A bare VivitModel (no 'vivit.' prefix, a pooler, no classifier): pooler ignored, no head.
  bare = {k[len('vivit.'):]: v for k, v in sd.items() if k.startswith('vivit.')}
  bare['pooler.dense.weight'] = np.zeros((32, 32), np.float32)
  bare['pooler.dense.bias'] = np.zeros((32,), np.float32)
  got = hf.convert_state_dict(bare, cfg)
  _same(got.params, ref.params)
  assert got.head is None and got.ignored == ['pooler.dense.bias', 'pooler.dense.weight']


def test_timesformer_without_prefix_and_key_errors(divided):
  model, d, ref = divided
  cfg = json.load(open(f'{d}/config.json'))
  sd = _state_dict(model)
  bare = {k.replace('timesformer.', '', 1): v for k, v in sd.items()}
  _same(hf.convert_state_dict(bare, cfg).params, ref.params)

  broken = dict(sd)
  del broken['timesformer.encoder.layer.1.temporal_dense.weight']
  broken['timesformer.encoder.layer.9.extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(weights.CheckpointMismatch) as e:
    hf.convert_state_dict(broken, cfg)
  msg = str(e.value)
  assert 'missing keys (1): encoder.layer.1.temporal_dense.weight' in msg
  assert 'unexpected keys (1): encoder.layer.9.extra.weight' in msg
  wrong = dict(cfg, num_hidden_layers=3)
  with pytest.raises(weights.CheckpointMismatch, match='encoder.layer.2'):
    hf.convert_state_dict(sd, wrong)


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
  official = _official_keys(_state_dict(model))
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
  _same(got.params, ref.params)
  for key in ('name', 'hidden_size', 'num_layers', 'mlp_dim', 'tubes', 'input_shape', 'attention'):
    assert got.model[key] == ref.model[key], key
  assert 'space_cls_average' not in got.model  # the official code's average (our default)
  if attention != 'space_only':  # same forward as HF's
    x = H.clips()
    np.testing.assert_allclose(H.our_logits(H.ours(got), x), H.hf_logits(model, x), atol=1e-5)


@pytest.mark.parametrize('kind,attention,layout', [
    ('timesformer', 'divided_space_time', 'v5'), ('timesformer', 'joint_space_time', 'v5'),
    ('timesformer', 'space_only', 'v5'), ('vivit', None, 'v5'), ('vivit', None, 'v4')])
def test_export_round_trip(tmp_path, kind, attention, layout):
  """ours -> HF directory -> ours is the identity; transformers' from_pretrained of the export gives
  our logits."""
  from transformers import AutoModelForVideoClassification
  src = H.hf_model(kind, attention or 'divided_space_time', seed=1)
  src.save_pretrained(tmp_path / 'src')
  imported = hf.load(str(tmp_path / 'src'))
  hf.export(imported.params, imported.model, str(tmp_path / 'out'), head=imported.head,
            labels=imported.labels, layout=layout)
  back = hf.load(str(tmp_path / 'out'))
  _same(back.params, imported.params)
  np.testing.assert_array_equal(back.head[0], imported.head[0])
  assert back.labels == imported.labels
  assert {k: v for k, v in back.model.items()} == imported.model

  reloaded = AutoModelForVideoClassification.from_pretrained(str(tmp_path / 'out')).eval()
  x = H.clips(seed=3)
  ours = H.our_logits(H.ours(imported), x)
  np.testing.assert_allclose(H.hf_logits(reloaded, x), ours, atol=1e-5)
  np.testing.assert_allclose(H.hf_logits(src, x), ours, atol=1e-5)
