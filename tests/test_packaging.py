"""setup.py: one source of metadata, a base install without torch, extras that fit each use."""
import pathlib
import re
from unittest import mock

import setuptools

REPO = pathlib.Path(__file__).resolve().parents[1]


def metadata() -> dict:
  """The keyword arguments setup.py hands to setuptools.setup (nothing is built or installed)."""
  with mock.patch.object(setuptools, 'setup') as setup:
    code = compile((REPO / 'setup.py').read_text(), str(REPO / 'setup.py'), 'exec')
    exec(code, {'__name__': '__main__', '__file__': str(REPO / 'setup.py')})  # noqa: S102
  return setup.call_args.kwargs


def names(requirements) -> set:
  return {re.split(r'[<>=\[ ;]', r, maxsplit=1)[0].lower() for r in requirements}


def test_base_install_has_no_torch_and_extras_fit_each_use():
  m = metadata()
  base, extras = names(m['install_requires']), m['extras_require']
  assert not base & {'torch', 'transformers', 'safetensors', 'matplotlib', 'jupyter', 'pytest'}
  assert {'jax', 'flax', 'orbax-checkpoint', 'grain', 'tensorflow-datasets'} <= base
  assert set(extras) == {'torch', 'tpu', 'cuda', 'notebooks', 'beam', 'onnx', 'test'}
  assert {'onnx', 'onnxruntime'} <= names(extras['onnx']) <= names(extras['test'])
  # jax2onnx goes in with --no-deps (its metadata pins an old orbax-checkpoint): not an extra.
  assert 'jax2onnx' not in names(extras['onnx']) | names(extras['test'])
  assert {'torch', 'transformers', 'safetensors'} <= names(extras['torch'])
  assert extras['tpu'] == ['jax[tpu]'] and extras['cuda'][0].startswith('jax[cuda')
  assert {'jupyter', 'matplotlib'} <= names(extras['notebooks'])
  # The suite runs the notebooks and the PyTorch equivalence tests.
  assert names(extras['torch']) | {'matplotlib', 'nbclient', 'nbformat', 'ipykernel', 'pytest',
                                  'apache-beam'} <= \
      names(extras['test'])
  assert m['entry_points'] == {'console_scripts': ['sparse_tubes = sparse_tubes.main:run']}


def test_pyproject_declares_only_the_build_system():
  text = (REPO / 'pyproject.toml').read_text()
  assert '[build-system]' in text and '[project]' not in text   # metadata lives in setup.py alone
