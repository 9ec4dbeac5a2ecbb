"""`prepare DATASET`: one dataset name, --manual_dir required, the flags passed on to data/prepare.py
(which tests/data/test_data_prepare.py and test_prepare_datasets.py exercise)."""
import types

import pytest
from absl import app

from sparse_tubes.commands import prepare as prepare_cmd
from sparse_tubes.data import prepare


def flags(**kw):
  return types.SimpleNamespace(**{'manual_dir': '/data/k', 'data_dir': '/data/tfds', 'workers': 3,
                                  'beam_runner': None, 'beam_options': '', **kw})


def test_flags_go_to_prepare_run(monkeypatch):
  calls = []
  monkeypatch.setattr(prepare, 'run', lambda name, **kw: calls.append((name, kw)))
  prepare_cmd.main(flags(beam_runner='DirectRunner', beam_options='--x=1'), ['ssv2/native_128px'])
  assert calls == [('ssv2/native_128px', {
      'manual_dir': '/data/k', 'data_dir': '/data/tfds', 'workers': 3,
      'beam_runner': 'DirectRunner', 'beam_options': '--x=1'})]


@pytest.mark.parametrize('args', [[], ['kinetics400', 'ssv2']])
def test_one_dataset_name(monkeypatch, args):
  monkeypatch.setattr(prepare, 'run', lambda *a, **kw: pytest.fail('ran'))
  with pytest.raises(app.UsageError, match=r"one dataset name, one of \('kinetics400'"):
    prepare_cmd.main(flags(), args)


def test_manual_dir_is_required(monkeypatch):
  monkeypatch.setattr(prepare, 'run', lambda *a, **kw: pytest.fail('ran'))
  with pytest.raises(app.UsageError, match='--manual_dir is required here'):
    prepare_cmd.main(flags(manual_dir=''), ['kinetics400'])
