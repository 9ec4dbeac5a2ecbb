"""Random-resized crop and RandAugment: shapes, ranges, one draw per clip, determinism, pipeline keys."""
import numpy as np
import pytest

from sparse_tubes import defaults
from sparse_tubes.data import pipeline
from sparse_tubes.data import transforms


def _clip(t=4, h=40, w=56, seed=0):
  rng = np.random.default_rng(seed)
  frame = rng.integers(0, 256, (1, h, w, 3), np.uint8)
  return np.concatenate([np.roll(frame, 2 * i, axis=2) for i in range(t)])  # Panning frames.


def test_random_resized_crop_shape_range_and_fallback():
  clip = _clip()
  rng = np.random.default_rng(0)
  for _ in range(20):
    out = transforms.random_resized_crop(clip, 24, rng)
    assert out.shape == (4, 24, 24, 3) and out.dtype == np.uint8
  # scale=(1, 1) with a ratio the frame cannot have: the fallback centre crop of the widest box.
  flat = np.arange(40 * 56, dtype=np.float32).reshape(1, 40, 56, 1).repeat(3, -1)
  out = transforms.random_resized_crop(flat, 40, rng, scale=(1, 1), ratio=(1, 1))
  np.testing.assert_allclose(out[0, :, :, 0], flat[0, :, 8:48, 0])


@pytest.mark.parametrize('op', transforms.RANDAUGMENT_OPS)
def test_each_randaugment_op_is_the_same_on_every_frame(op):
  # Identical frames stay identical: parameters and statistics are drawn once per clip.
  frame = (_clip(t=1)[0] // 2 + 30).astype(np.uint8)  # Not full range: AutoContrast acts.
  clip = np.stack([frame] * 3)
  out = transforms.randaugment_op(clip, op, 0.9, -1)
  assert out.shape == clip.shape and out.dtype == np.uint8
  assert (out == out[:1]).all()
  if op != 'Identity':
    assert not np.array_equal(out, clip), op
  # Magnitude 0 is the identity for every op whose strength it sets.
  if op not in ('AutoContrast', 'Equalize', 'Solarize'):
    np.testing.assert_array_equal(transforms.randaugment_op(clip, op, 0.0, 1), clip)


def test_randaugment_ops_do_what_they_say():
  clip = _clip(t=2)
  np.testing.assert_array_equal(transforms.randaugment_op(clip, 'Solarize', 1.0, 1), 255 - clip)
  assert (transforms.randaugment_op(clip, 'Posterize', 1.0, 1) % 16 == 0).all()  # 4 bits kept.
  dark = (clip // 4 + 10).astype(np.uint8)
  stretched = transforms.randaugment_op(dark, 'AutoContrast', 1.0, 1)
  assert stretched.min() == 0 and stretched.max() == 255
  wide = _clip(t=2, w=60)
  shifted = transforms.randaugment_op(wide, 'TranslateX', 1.0, 1)  # 0.45 * 60 = 27 px right.
  assert (shifted[:, :, :27] == transforms.FILL).all()
  np.testing.assert_array_equal(shifted[:, :, 27:], wide[:, :, :33])


def test_randaugment_is_seeded_and_keeps_motion():
  clip = _clip(t=4)
  a = transforms.randaugment(clip, 2, 9, np.random.default_rng(1))
  b = transforms.randaugment(clip, 2, 9, np.random.default_rng(1))
  np.testing.assert_array_equal(a, b)
  outs = {transforms.randaugment(clip, 2, 9, np.random.default_rng(s)).tobytes() for s in range(8)}
  assert len(outs) > 4
  assert not np.array_equal(a[0], a[1])  # Frames still differ: the clip's motion is kept.


def test_pipeline_with_random_resized_crop_and_randaugment(tiny_data_dir):
  grain_cfg = defaults.base().grain
  grain_cfg.read_threads = 2
  cfg = defaults.dataset(tfds_name='moving_shapes/video_tiny', batch_size=4, num_frames=4,
                         crop_size=24, min_resize=36, max_resize=40, train_crop='random_resized',
                         randaugment_layers=2, randaugment_magnitude=9)
  it = pipeline.train_iterator(cfg, data_dir=tiny_data_dir, seed=0, process_index=0,
                               process_count=1, grain_cfg=grain_cfg)
  a = next(it)
  assert a['inputs'].shape == (4, 4, 24, 24, 3)
  again = next(pipeline.train_iterator(cfg, data_dir=tiny_data_dir, seed=0, process_index=0,
                                       process_count=1, grain_cfg=grain_cfg))
  np.testing.assert_array_equal(a['inputs'], again['inputs'])
  plain = next(pipeline.train_iterator(
      defaults.dataset(**{**cfg.to_dict(), 'train_crop': 'scale_jitter', 'randaugment_layers': 0}),
      data_dir=tiny_data_dir, seed=0, process_index=0, process_count=1, grain_cfg=grain_cfg))
  assert not np.array_equal(a['inputs'], plain['inputs'])
  for override, message in ((dict(train_crop='inception'), 'train_crop'),
                            (dict(randaugment_magnitude=12), 'randaugment_magnitude'),
                            (dict(rrc_scale=(0.5, 2.0)), 'rrc_scale')):
    with pytest.raises(ValueError, match=message):
      pipeline.validate(defaults.dataset(**{**cfg.to_dict(), **override}), name='v')


def test_normalizations():
  x = np.array([[[0, 127, 255]]], np.uint8)
  np.testing.assert_allclose(transforms.normalize(x, 'minus_one_to_one'), [[[-1, -0.00392, 1]]], atol=1e-4)
  k = transforms.normalize(np.full((1, 1, 3), 0.45 * 255, np.float32).astype(np.uint8), 'kinetics')
  np.testing.assert_allclose(k, 0.0, atol=0.02)           # the mean maps to ~0
  np.testing.assert_allclose(transforms.normalize(np.full((1, 1, 3), 255, np.uint8), 'kinetics'),
                             (1 - 0.45) / 0.225, rtol=1e-5)
  with pytest.raises(ValueError, match='normalization'):
    transforms.normalize(x, 'cifar')
