"""Issue 4: HF TimeSformer/ViViT checkpoints in both key layouts (transformers 4.x and 5.x names, with
and without the base-model prefix, safetensors and pytorch_model.bin), clear key errors, and the
export round trip (ours -> HF -> ours identical; HF logits == ours). The official TimeSformer .pyth:
test_timesformer_official.py."""
import json
import re

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from sparse_tubes.pretrained import hf, weights  # noqa: E402
from tests.pretrained import hf_helpers as H  # noqa: E402


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
  sd = H.state_dict(model)
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
  H.assert_same(got.params, ref.params)
  np.testing.assert_array_equal(got.head[0], ref.head[0])

  # A bare VivitModel (no 'vivit.' prefix, a pooler, no classifier): pooler ignored, no head.
  bare = {k[len('vivit.'):]: v for k, v in sd.items() if k.startswith('vivit.')}
  bare['pooler.dense.weight'] = np.zeros((32, 32), np.float32)
  bare['pooler.dense.bias'] = np.zeros((32,), np.float32)
  got = hf.convert_state_dict(bare, cfg)
  H.assert_same(got.params, ref.params)
  assert got.head is None and got.ignored == ['pooler.dense.bias', 'pooler.dense.weight']


def test_timesformer_without_prefix_and_key_errors(divided):
  model, d, ref = divided
  cfg = json.load(open(f'{d}/config.json'))
  sd = H.state_dict(model)
  bare = {k.replace('timesformer.', '', 1): v for k, v in sd.items()}
  H.assert_same(hf.convert_state_dict(bare, cfg).params, ref.params)

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
  H.assert_same(back.params, imported.params)
  np.testing.assert_array_equal(back.head[0], imported.head[0])
  assert back.labels == imported.labels
  assert {k: v for k, v in back.model.items()} == imported.model

  reloaded = AutoModelForVideoClassification.from_pretrained(str(tmp_path / 'out')).eval()
  x = H.clips(seed=3)
  ours = H.our_logits(H.ours(imported), x)
  np.testing.assert_allclose(H.hf_logits(reloaded, x), ours, atol=1e-5)
  np.testing.assert_allclose(H.hf_logits(src, x), ours, atol=1e-5)
