"""Static checks of a whole config against the code that runs it: batch sizes against the mesh,
micro-batches, tubes against clips, dataset names, sharding rules and the training loop's settings,
each failing with the key and the fix."""
import pytest

from sparse_tubes import config as config_lib
from sparse_tubes import validation

TINY = 'configs/synthetic/tubevit_tiny.py'


def load(**kw):
  return config_lib.load(TINY, **kw)


def test_tiny_config_is_valid():
  validation.validate(load(), num_devices=1, process_count=1)
  validation.validate(load(), num_devices=8, process_count=1)


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
    validation.validate(load(**overrides), num_devices=devices, process_count=1)


def test_tube_that_does_not_fit_the_clip_names_the_tube():
  # Tube 0 spans 8 frames; a 4-frame clip cannot hold it.
  with pytest.raises(ValueError, match=r'shapes_video.*config\.model\.tubes\[0\]'):
    validation.validate(load(datasets__shapes_video__num_frames=4), num_devices=1, process_count=1)


@pytest.mark.parametrize('overrides,match', [
    (dict(datasets__shapes_video__loss_weight=-1.0), r'shapes_video\.loss_weight=-1\.0 must be >= 0'),
    (dict(microbatches=3), r'microbatches=3: .*batch_size=16 must split into 3 micro-batches'),
    (dict(microbatches=0), r'microbatches=0'),
    (dict(log_every_steps=0), r'config\.log_every_steps=0 must be >= 1'),
    (dict(keep_checkpoints=0), r'config\.keep_checkpoints=0 must be >= 1'),
    (dict(eval_every_steps=-1), r'eval_every_steps=-1 must be >= 0'),
    (dict(ema_decay=1.0), r'ema_decay=1\.0 must be in \[0, 1\)'),
    (dict(on_nonfinite='ignore'), r"on_nonfinite='ignore': use 'stop' or 'skip'"),
    (dict(total_steps=0), r'set a positive total_steps, or num_epochs > 0'),
])
def test_loop_settings(overrides, match):
  with pytest.raises(ValueError, match=match):
    validation.validate(load(**overrides), num_devices=1, process_count=1)


def test_batches_divide_over_processes_and_datasets_exist():
  with pytest.raises(ValueError, match=r'batch_size=16 is not divisible by the 3 processes'):
    validation.validate(load(), num_devices=1, process_count=3)
  c = load()
  with c.unlocked():
    c.datasets = {}
  with pytest.raises(ValueError, match='config.datasets is empty'):
    validation.validate(c, num_devices=1, process_count=1)
