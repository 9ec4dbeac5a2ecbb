"""Issue 3: TimeSformer (divided, joint, space-only) and ViViT Model 1 loaded from HF `transformers`
PyTorch models (random weights, tiny configs) give the PyTorch logits to 1e-5 in float32."""
import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

from sparse_tubes.pretrained import hf  # noqa: E402
from tests.pretrained import hf_helpers as H  # noqa: E402

CASES = [('timesformer', 'divided_space_time'), ('timesformer', 'joint_space_time'),
         ('timesformer', 'space_only'), ('vivit', None)]


@pytest.mark.parametrize('kind,attention', CASES, ids=['divided', 'joint', 'space', 'vivit_m1'])
def test_logits_match_transformers(tmp_path, kind, attention):
  torch_model = H.hf_model(kind, attention or 'divided_space_time')
  torch_model.save_pretrained(tmp_path)
  imported = hf.load(str(tmp_path))
  x = H.clips()
  want = H.hf_logits(torch_model, x)
  got = H.our_logits(H.ours(imported), x)
  diff = float(np.abs(got - want).max())
  print(f'{kind} {attention}: max |logit diff| = {diff:.2e}')
  assert diff < 1e-5
  assert np.abs(want).max() > 0.1  # not a trivially small comparison
  expected = {'divided_space_time': 'divided', 'joint_space_time': 'joint', 'space_only': 'space',
              None: 'joint'}[attention]
  assert imported.model['attention'] == expected
  assert imported.model['gelu_approximate'] == (kind == 'vivit')  # ViViT's 'gelu_fast'
  assert imported.labels == tuple(f'class_{chr(97 + i)}' for i in range(H.CLASSES))


def test_space_only_average_follows_the_paper_code_by_default(tmp_path):
  """Official TimeSformer averages the class tokens before the final norm; HF returns per-frame
  logits. Imports from HF set space_cls_average='after_norm'; the default differs from HF."""
  torch_model = H.hf_model('timesformer', 'space_only')
  torch_model.save_pretrained(tmp_path)
  imported = hf.load(str(tmp_path))
  assert imported.model['space_cls_average'] == 'after_norm'
  x = H.clips()
  paper = H.our_logits(H.ours(imported, space_cls_average='before_norm'), x)
  assert np.abs(paper - H.hf_logits(torch_model, x)).max() > 1e-4
