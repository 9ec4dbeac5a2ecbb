"""The base install has no torch, transformers or safetensors (they are the [torch] extra)."""
import subprocess
import sys

import numpy as np
import pytest

from sparse_tubes.pretrained import hf, vit

REPO = __file__.rsplit('/tests/', 1)[0]


def test_train_evaluate_predict_info_never_import_torch():
  # A meta-path finder that refuses the [torch] extra, as in a venv where it is not installed.
  script = f"""
import sys
sys.path.insert(0, {REPO!r})
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('torch', 'transformers', 'safetensors'):
      raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import sparse_tubes.main, sparse_tubes.commands.train, sparse_tubes.commands.evaluate, sparse_tubes.commands.predict
import sparse_tubes.commands.info, sparse_tubes.commands.convert, sparse_tubes.pretrained.init
print('OK', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))
"""
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'OK []' in out.stdout


@pytest.mark.parametrize('reader, path, module', [
    (vit.read_torch, 'vit.pth', 'torch'),
    (vit.read_torch, 'vit.safetensors', 'safetensors'),
    (hf.read_state_dict, 'pytorch_model.bin', 'torch'),
    (hf.read_state_dict, 'model.safetensors', 'safetensors'),
])
def test_missing_torch_extra_says_how_to_install(monkeypatch, tmp_path, reader, path, module):
  for name in ('torch', 'safetensors', 'safetensors.numpy'):
    monkeypatch.setitem(sys.modules, name, None)   # `import name` now raises ImportError
  (tmp_path / path).write_bytes(b'')
  with pytest.raises(ImportError, match=rf"needs {module}.*pip install 'sparse_tubes\[torch\]'"):
    reader(str(tmp_path / path))


def test_export_without_safetensors_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'safetensors.numpy', None)
  with pytest.raises(ImportError, match=r"sparse_tubes\[torch\]"):
    hf.export({}, {}, str(tmp_path), head=(np.zeros((2, 3)), np.zeros(3)))
