"""A run's workdir: its config written and read back (tuples, keys added since, the config.py
snapshot), the resume contract (which changes break a checkpoint), and the choice of head and
class names."""
import json
import os

import pytest

from sparse_tubes import config as config_lib
from sparse_tubes import workdir as workdir_lib

TINY = 'configs/synthetic/tubevit_tiny.py'


def load(**kw):
  return config_lib.load(TINY, **kw)


def test_config_round_trips_through_the_workdir(tmp_path):
  config = load(model__hidden_size=40)
  workdir_lib.save_workdir(config, str(tmp_path), command='train')
  back = workdir_lib.load_workdir(str(tmp_path), total_steps=7)
  assert back.model.hidden_size == 40 and back.total_steps == 7
  assert back.model.tubes == config.model.tubes and isinstance(back.model.tubes[0], tuple)
  assert back.to_dict() == config_lib.override(config, total_steps=7).to_dict()
  with pytest.raises(AttributeError):
    back.new_key = 1  # locked, like a loaded config file
  snapshot = config_lib.load(str(tmp_path / 'config.py'), model__num_layers=1)
  assert snapshot.model.hidden_size == 40 and snapshot.model.num_layers == 1
  assert f'--config={tmp_path}/config.py' in (tmp_path / 'config.py').read_text()


def test_keys_added_since_the_config_was_written_get_their_default(tmp_path):
  saved = json.loads(workdir_lib.config_to_json(load()))
  del saved['ema_decay'], saved['datasets']['shapes_video']['loss_weight']
  config = workdir_lib.config_from_json(json.dumps(saved))
  assert config.ema_decay == load().ema_decay
  assert config.datasets.shapes_video.loss_weight == load().datasets.shapes_video.loss_weight


def test_resolve_config(tmp_path):
  given = load()
  assert workdir_lib.resolve_config(given, str(tmp_path), total_steps=3).total_steps == 3
  with pytest.raises(FileNotFoundError, match='--config is required here'):
    workdir_lib.resolve_config(None, str(tmp_path))
  with pytest.raises(FileNotFoundError, match='config.json not found'):
    workdir_lib.load_workdir(str(tmp_path))
  workdir_lib.save_workdir(given, str(tmp_path))
  assert workdir_lib.resolve_config(None, str(tmp_path)).to_dict() == given.to_dict()


def test_config_changes_breaking_and_safe():
  old = load()
  breaking, safe = workdir_lib.config_changes(
      json.loads(workdir_lib.config_to_json(old)),
      load(model__hidden_size=32, model__dropout=0.1, optimizer__learning_rate=1.0,
           datasets__shapes_video__tfds_name='other', optimizer__grad_clip_norm=2.0))
  assert [k for k, _, _ in breaking] == ['datasets.shapes_video.tfds_name', 'model.hidden_size']
  assert ('model.hidden_size', old.model.hidden_size, 32) in breaking
  assert {k for k, _, _ in safe} == {'model.dropout', 'optimizer.learning_rate',
                                      'optimizer.grad_clip_norm'}  # clipping stays on: same chain
  c = load()
  with c.unlocked():
    del c.datasets['shapes_image']
  breaking, _ = workdir_lib.config_changes(json.loads(workdir_lib.config_to_json(old)), c)
  assert breaking == [('datasets.shapes_image', 'present', None)]


def test_check_resume_refuses_or_records(tmp_path):
  workdir_lib.save_workdir(load(), str(tmp_path))
  assert workdir_lib.check_resume(load(model__num_layers=9), str(tmp_path), steps=[]) == []
  with pytest.raises(workdir_lib.ConfigMismatch, match=r'steps \[3\].*config.model.num_layers: '
                     r'\d+ -> 9.*--config.init_from.kind=checkpoint'):
    workdir_lib.check_resume(load(model__num_layers=9), str(tmp_path), steps=[3])
  lines = []
  bs = load().datasets.shapes_video.batch_size
  safe = workdir_lib.check_resume(load(datasets__shapes_video__batch_size=2 * bs), str(tmp_path),
                                  steps=[3], log=lines.append)
  assert safe == [('datasets.shapes_video.batch_size', bs, 2 * bs)]
  assert lines[0].startswith('Resuming') and '2x the planned examples' in lines[1]
  workdir_lib.record_changes(str(tmp_path), 3, safe)
  row = json.loads((tmp_path / workdir_lib.CHANGES).read_text())
  assert row['resumed_step'] == 3
  assert row['changes'] == {'datasets.shapes_video.batch_size': {'old': bs, 'new': 2 * bs}}


def test_choose_head():
  config = load()
  classes = {'shapes_video': 8, 'shapes_image': 8}
  assert workdir_lib.choose_head(config, classes) == 'shapes_video'  # a video head first
  assert workdir_lib.choose_head(config, {'shapes_image': 8}) == 'shapes_image'
  assert workdir_lib.choose_head(config, classes, 'shapes_image') == 'shapes_image'
  with pytest.raises(ValueError, match=r"--dataset='k400': the checkpoint has heads"):
    workdir_lib.choose_head(config, classes, 'k400')


def test_class_names_from_converted_json_or_indices(tmp_path):
  config = load(data_dir=str(tmp_path / 'no_data'))
  workdir_lib.write_converted(str(tmp_path), {'step': 0, 'labels': {'hf': ['cat', 'dog']}})
  assert workdir_lib.read_converted(str(tmp_path))['labels'] == {'hf': ['cat', 'dog']}
  assert workdir_lib.class_names(config, str(tmp_path), 'hf', 2) == ['cat', 'dog']
  assert workdir_lib.class_names(config, str(tmp_path), 'hf', 3) == ['class_0', 'class_1', 'class_2']
  assert workdir_lib.read_converted(str(tmp_path / 'none')) is None


def test_train_target_of_a_converted_workdir(tmp_path):
  config = load()
  assert workdir_lib.train_target(config, str(tmp_path)) == (config, str(tmp_path))
  workdir_lib.write_converted(str(tmp_path), {'step': 5})
  cfg, workdir = workdir_lib.train_target(config, str(tmp_path))
  assert workdir == os.path.join(str(tmp_path), 'finetune')
  assert (cfg.init_from.kind, cfg.init_from.path, cfg.init_from.step, cfg.init_from.keep_heads) == (
      'checkpoint', os.path.abspath(tmp_path), 5, True)
