"""`prepare`'s front: picking the builder and its config from the dataset name, and the errors
that come before any video is read (the whole run on mini releases: test_prepare_datasets.py)."""
import pytest

from sparse_tubes.data import builtin, kinetics, prepare, ssv2


def test_unprepared_dataset_error_names_the_command(tmp_path):
  with pytest.raises(ValueError, match='python -m sparse_tubes prepare'):
    builtin.ensure_built('kinetics600', str(tmp_path))
  with pytest.raises(ValueError, match='Unknown dataset'):
    prepare.run('kinetics500', manual_dir=str(tmp_path), data_dir=str(tmp_path), workers=1)
  with pytest.raises(ValueError, match='NAMEfps_SIZEpx'):
    prepare.run('ssv2/fast', manual_dir=str(tmp_path), data_dir=str(tmp_path), workers=1)
  with pytest.raises(ValueError, match='train.csv'):
    prepare.run('kinetics700', manual_dir=str(tmp_path), data_dir=str(tmp_path), workers=1)


@pytest.mark.parametrize('name,kw,cls,config,fps,side', [
    ('kinetics400', {}, kinetics.Kinetics400, '25fps_256px', 25.0, 256),
    ('kinetics600/10fps_128px', {}, kinetics.Kinetics600, '10fps_128px', 10.0, 128),
    ('ssv2', {}, ssv2.Ssv2, 'native_256px', None, 256),
    ('ssv2/native_256px', {'short_side': 160}, ssv2.Ssv2, 'native_160px', None, 160),  # kw wins
])
def test_make_builder_resolves_the_config(tmp_path, name, kw, cls, config, fps, side):
  b = prepare.make_builder(name, str(tmp_path), **kw)
  assert type(b) is cls
  assert (b.builder_config.name, b.builder_config.fps, b.builder_config.short_side) == (
      config, fps, side)


def test_errors_before_any_work(tmp_path):
  with pytest.raises(ValueError, match='--beam_options needs --beam_runner'):
    prepare.run('ssv2', manual_dir=str(tmp_path), data_dir=str(tmp_path), workers=1,
                beam_options='--project=p')
  with pytest.raises(ValueError, match='is not a directory'):
    prepare.run('ssv2', manual_dir=str(tmp_path / 'nope'), data_dir=str(tmp_path), workers=1)
