"""Bad configs fail before anything is built, with the key and the fix in the message."""
import pytest

from sparse_tubes import config as config_lib

TINY = 'configs/synthetic/tubevit_tiny.py'


def load(**kw):
  return config_lib.load(TINY, **kw)


def test_tiny_config_is_valid():
  config_lib.validate(load(), num_devices=1, process_count=1)
  config_lib.validate(load(), num_devices=8, process_count=1)


def test_load_rejects_unknown_override():
  with pytest.raises(KeyError, match='config.model.hiden_size'):
    load(model__hiden_size=3)


def test_unknown_top_level_key():
  c = load()
  c.unlock()
  c.optimzer = 1
  with pytest.raises(ValueError, match=r'config\.optimzer'):
    config_lib.validate(c, num_devices=1, process_count=1)


def test_unknown_dataset_key():
  c = load()
  c.unlock()
  c.datasets.shapes_video.num_frame = 8
  with pytest.raises(ValueError, match=r'config\.datasets\.shapes_video\.num_frame'):
    config_lib.validate(c, num_devices=1, process_count=1)


@pytest.mark.parametrize('overrides,devices,match', [
    (dict(datasets__shapes_video__batch_size=12), 8, r'shapes_video\.batch_size=12 .*multiple of the data-parallel size 8'),
    (dict(datasets__shapes_image__eval_batch_size=6, mesh__data=4, mesh__fsdp=2), 8, r'eval_batch_size=6'),
    (dict(mesh__data=3), 8, 'needs 3 devices'),
    (dict(datasets__shapes_video__tfds_name=''), 1, r'shapes_video\.tfds_name'),
    (dict(datasets__shapes_video__kind='audio'), 1, r'shapes_video\.kind'),
    (dict(datasets__shapes_video__crop_size=64), 1, r'shapes_video\.crop_size=64 is larger than min_resize'),
    (dict(model__dtype='float16'), 1, r'config\.model\.dtype'),
    (dict(total_steps=10, optimizer__warmup_steps=10), 1, r'warmup_steps'),
    (dict(eval_datasets=('kinetics',)), 1, r'eval_datasets names .kinetics.'),
    (dict(sharding_rules=(('batch', 'model'),)), 1, r"mesh axis 'model'"),
])
def test_inconsistent_settings(overrides, devices, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate(load(**overrides), num_devices=devices, process_count=1)


def test_tube_that_does_not_fit_the_clip_names_the_tube():
  # Tube 0 spans 8 frames; a 4-frame clip cannot hold it.
  with pytest.raises(ValueError, match=r'shapes_video.*config\.model\.tubes\[0\]'):
    config_lib.validate(load(datasets__shapes_video__num_frames=4), num_devices=1, process_count=1)


def test_epochs_count_over_the_first_dataset():
  c = load(num_epochs=2.0, optimizer__warmup_steps=10)
  config_lib.validate(c, num_devices=1, process_count=1)
  # shapes_image sorts first: 2 epochs of 2048 images at batch 16.
  assert config_lib.total_steps(c, {'shapes_image': 2048, 'shapes_video': 2048}) == 256
  assert config_lib.total_steps(load(), {'shapes_image': 2048, 'shapes_video': 2048}) == 600
  with pytest.raises(ValueError, match='warmup_steps'):
    config_lib.total_steps(load(num_epochs=0.01), {'shapes_image': 2048, 'shapes_video': 2048})
