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


# PIL's ImageOps / ImageEnhance, which RandAugment's ops are defined by (timm, big_vision), as the
# reference for the uint8 lookup-table versions, one frame at a time; (m, sign) as randaugment_op.
def _pil_reference(img, op, m, sign):
  from PIL import Image, ImageEnhance, ImageOps
  pil, enhance = Image.fromarray(img), 1 + transforms.MAX_ENHANCE * m * sign
  out = {
      'AutoContrast': lambda: ImageOps.autocontrast(pil),
      'Equalize': lambda: ImageOps.equalize(pil),
      'Solarize': lambda: ImageOps.solarize(pil, 256 - 256 * m),
      'Posterize': lambda: ImageOps.posterize(pil, 8 - int(4 * m)),
      'Color': lambda: ImageEnhance.Color(pil).enhance(enhance),
      'Contrast': lambda: ImageEnhance.Contrast(pil).enhance(enhance),
      'Brightness': lambda: ImageEnhance.Brightness(pil).enhance(enhance),
      'Sharpness': lambda: ImageEnhance.Sharpness(pil).enhance(enhance),
      'Rotate': lambda: pil.rotate(transforms.MAX_ROTATE * m * sign, resample=Image.BILINEAR,
                                   fillcolor=(transforms.FILL,) * 3),
  }[op]()
  return np.asarray(out)


# (largest difference, largest mean difference): PIL truncates where we round (AutoContrast), rounds
# the grey mean to an integer (Contrast) and blends in integers (Color). Rotate: bilinear weights of
# different precision, which differ most where the fill meets the image, so a share is bounded.
_TOLERANCE = {'AutoContrast': (1, 0.5), 'Equalize': (0, 0), 'Solarize': (0, 0), 'Posterize': (0, 0),
              'Color': (2, 0.5), 'Contrast': (1, 0.7), 'Brightness': (1, 0.5), 'Sharpness': (1, 0.4),
              'Rotate': (255, 1.0)}


@pytest.mark.parametrize('op', sorted(_TOLERANCE))
@pytest.mark.parametrize('m,sign', [(0.9, 1), (0.5, -1)])
def test_randaugment_ops_match_pil(op, m, sign):
  smooth = np.asarray(__import__('cv2').resize(_clip(t=1, h=12, w=16)[0], (64, 48)))
  frame = (smooth * 0.7 + 20).astype(np.uint8)  # A narrower range, so AutoContrast acts.
  ours = transforms.randaugment_op(frame[None], op, m, sign)[0].astype(int)
  diff = np.abs(ours - _pil_reference(frame, op, m, sign))
  max_diff, mean_diff = _TOLERANCE[op]
  assert diff.max() <= max_diff and diff.mean() <= mean_diff, (op, diff.max(), diff.mean())
  assert (diff > 2).mean() < 0.04


def test_sharpness_and_translate_on_a_clip_equal_frame_by_frame():
  clip = _clip(t=3)
  for op in ('Sharpness', 'TranslateY', 'Color'):
    per_frame = np.concatenate([transforms.randaugment_op(f[None], op, 0.7, -1) for f in clip])
    np.testing.assert_array_equal(transforms.randaugment_op(clip, op, 0.7, -1), per_frame)
  # Shifts are whole pixels, the magnitude rounded: 0.45 * 0.5 * 40 = 9 rows up.
  up = transforms.randaugment_op(clip, 'TranslateY', 0.5, -1)
  np.testing.assert_array_equal(up[:, :31], clip[:, 9:])
  assert (up[:, 31:] == transforms.FILL).all()


def _smooth_frames(t, h, w, cell=16, seed=0):
  import cv2
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (h // cell, w // cell, 3), np.uint8)
  big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
  return np.stack([np.roll(big, 3 * i, axis=1) for i in range(t)])


def test_crop_before_resize_matches_resize_then_crop():
  # The scale-jitter box is resized alone; the old way resized the whole frame, then cropped.
  frames = _smooth_frames(3, 96, 128)
  for seed in range(4):
    kw = dict(min_resize=100, max_resize=140, crop_size=64, flip=False)
    ours = transforms.train_spatial(frames, rng=np.random.default_rng(seed), **kw)
    rng = np.random.default_rng(seed)
    resized = transforms.resize_short_side(frames, int(rng.integers(100, 141)))
    reference = transforms.random_crop(resized, 64, rng)
    diff = np.abs(ours.astype(int) - reference)
    assert ours.shape == (3, 64, 64, 3) and diff.mean() < 2.5, diff.mean()


def test_reduced_scale_decoding_rule_and_result():
  assert transforms.reduction((0, 0, 500, 460), 224) == 2
  assert transforms.reduction((0, 0, 447, 900), 224) == 1   # 447 / 2 < 224: full scale
  assert transforms.reduction((0, 0, 1800, 1800), 224) == 8
  image = _smooth_frames(1, 600, 800, cell=50)[0]  # Detail that a 112 crop still resolves.
  data = transforms.encode_jpeg(image, quality=95)
  assert transforms.jpeg_size(data) == (600, 800)
  assert transforms.jpeg_size(b'not a jpeg') is None
  # A PNG has no JPEG header to read the size from: decoded whole at full scale, same result.
  png = __import__('cv2').imencode('.png', image[..., ::-1])[1].tobytes()
  kw = dict(min_resize=600, max_resize=700, crop_size=112, flip=False)
  np.testing.assert_array_equal(
      transforms.train_spatial(transforms.EncodedClip(png), rng=np.random.default_rng(0), **kw),
      transforms.train_spatial(image[None], rng=np.random.default_rng(0), **kw))
  kw = dict(min_resize=256, max_resize=256, crop_size=112, flip=True, crop='random_resized',
            rrc_scale=(0.5, 1.0))
  for seed in range(3):  # Boxes of 400+ px for a 112 crop: decoded at 1/2 or 1/4 scale.
    box = transforms.rrc_box(600, 800, np.random.default_rng(seed), (0.5, 1.0))
    assert transforms.reduction(box, 112) >= 2
    reduced = transforms.train_spatial(transforms.EncodedClip(data), rng=np.random.default_rng(seed),
                                       **kw)
    full = transforms.train_spatial(transforms.decode_frames(data), rng=np.random.default_rng(seed),
                                    **kw)
    assert reduced.shape == full.shape == (1, 112, 112, 3)
    # The box is rounded to whole pixels of the reduced image (a shift under 0.5% of the crop) and
    # DCT-domain and area downscaling differ a little; another crop of the photo differs by far more.
    other = transforms.train_spatial(transforms.decode_frames(data),
                                     rng=np.random.default_rng(seed + 10), **kw)
    assert np.abs(reduced.astype(int) - full).mean() < 4
    assert np.abs(other.astype(int) - full).mean() > 15
