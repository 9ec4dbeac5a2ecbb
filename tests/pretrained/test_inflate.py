"""Inflation of an image ViT into every family of the zoo, and the property that makes it the
papers' init: with central-frame tubes (or filter inflation) and the zero-init choices, a video of
identical frames gives the image model's features for that frame.

Where it holds exactly (float tolerance), and why:
  TimeSformer divided  temporal branch = copied attention -> temporal fc at zero adds nothing;
                       time embedding zero; spatial attention per frame = the image attention, and
                       the class token's update averaged over identical frames is the image one.
  TimeSformer space    per-frame class tokens, each frame the image; the average is the image one.
  ViViT M3             spatial step = image attention per frame, temporal output projection zero.
  ViViT M1 (gap)       joint attention over n_t identical copies of the image tokens: each key is
                       repeated n_t times, its softmax weight divided by n_t, so the output is the
                       image one. With a class token (one copy only) it does NOT hold: the class key
                       then weighs n_t times less than in the image model (checked below).
  ViViT M2             the spatial encoder gives each frame index the image model's class feature
                       (the temporal encoder is new, at its random init, as in the paper).
  TubeViT              its 2D-patch tube: an image through the inflated TubeViT (learned posemb) is
                       the image model; on a video the 2D tube's tokens are the image tokens.
Not exact by construction: M4 (half the heads attend over time), axial and local-global (the
image attention only sees a row/column or a window), and joint attention with a class token.
"""
import numpy as np
import pytest

from sparse_tubes.models import tokenizers
from sparse_tubes.pretrained import inflate
from sparse_tubes.pretrained.weights import CheckpointMismatch
import vit_helpers as H

T = 4
TUBELET = (((2, 8, 8), (2, 8, 8), (0, 0, 0)),)
PATCH = (((1, 8, 8), (1, 8, 8), (0, 0, 0)),)
TUBEVIT = (((4, 4, 4), (4, 8, 8), (0, 2, 2)), ((2, 8, 8), (2, 8, 8), (0, 0, 0)),
           ((2, 12, 12), (2, 8, 8), (0, 4, 4)), ((1, 8, 8), (4, 8, 8), (0, 0, 0)))


@pytest.fixture(scope='module')
def source():
  canon, _ = H.random_image_vit(seed=7)
  frame = np.random.default_rng(0).uniform(-1, 1, (2, H.SIZE, H.SIZE, 3)).astype(np.float32)
  video = np.repeat(frame[:, None], T, axis=1)
  return canon, frame, video


def video_cfg(**kw):
  return H.image_model_cfg(**{'input_shape': (T, H.SIZE, H.SIZE, 3), **kw})


def image_ref(canon, **kw):
  """The image model the video model must reproduce (same pooling, no time)."""
  return H.model_from(canon, H.image_model_cfg(**kw))[0]


def close(a, b, atol=2e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-4)


@pytest.mark.parametrize('attention', ['divided', 'space'])
def test_timesformer_identical_frames_give_image_features(source, attention):
  canon, frame, video = source
  cfg = video_cfg(name='timesformer', tubes=PATCH, posemb='learned_space_time', head='token',
                  attention=attention)
  m, report = H.model_from(canon, cfg)
  if attention == 'divided':
    assert any('temporal_init=copy' in r for r in report)
    p = H.params_of(m)['encoder']['blocks'][0]
    np.testing.assert_array_equal(p['temporal_fc']['kernel'], 0)
    np.testing.assert_array_equal(p['temporal_attention']['query'], p['attention']['query'])
  close(m.representation(video), image_ref(canon).representation(frame))


@pytest.mark.parametrize('tube_init', ['central_frame', 'average'])
def test_vivit_m3_identical_frames_give_image_features(source, tube_init):
  canon, frame, video = source
  cfg = video_cfg(tubes=TUBELET, image_tube=None, head='gap',
                  attention='factorised_self_attention')
  m, _ = H.model_from(canon, cfg, opts=dict(tube_init=tube_init))
  k = H.params_of(m)['tokenizer']['convs'][0]['kernel']
  if tube_init == 'central_frame':
    np.testing.assert_array_equal(k[0], 0)       # kt = 2: all weight on frame kt // 2 = 1
  else:
    np.testing.assert_allclose(k[0], k[1])
  close(m.representation(video), image_ref(canon, head='gap').representation(frame))


def test_vivit_m1_joint_attention_over_copies(source):
  canon, frame, video = source
  m, _ = H.model_from(canon, video_cfg(tubes=TUBELET, image_tube=None, head='gap'))
  close(m.representation(video), image_ref(canon, head='gap').representation(frame))
  # With a class token the property does not hold (one class key against n_t copies).
  m, _ = H.model_from(canon, video_cfg(tubes=TUBELET, image_tube=None, head='token'))
  got, want = np.asarray(m.representation(video)), np.asarray(image_ref(canon).representation(frame))
  assert np.abs(got - want).max() > 1e-3


def test_vivit_m2_spatial_encoder_gives_image_features_per_frame(source):
  from sparse_tubes.models import attention_patterns as patterns
  canon, frame, video = source
  m, _ = H.model_from(canon, video_cfg(tubes=TUBELET, image_tube=None, encoder='factorised',
                                       temporal_layers=1))
  z, (nt, nh, nw) = m._embed(video)
  z = z.reshape(z.shape[0] * nt, nh * nw, -1)
  z = m._with_cls(z, m.spatial_cls_token, m.posemb.cls)
  per_frame = np.asarray(m.spatial_encoder(z, patterns.Layout(None, 1))[:, 0]).reshape(2, nt, -1)
  want = np.asarray(image_ref(canon).representation(frame))
  for t in range(nt):
    close(per_frame[:, t], want)
  np.testing.assert_array_equal(H.params_of(m)['cls_token'], 0)   # the temporal one: its init


def test_tubevit_image_path_and_2d_tube(source):
  canon, frame, video = source
  cfg = video_cfg(name='tubevit', tubes=TUBEVIT, image_tube=3, posemb='learned', head='gap')
  m, report = H.model_from(canon, cfg)
  close(m.representation(frame), image_ref(canon, head='gap').representation(frame))
  tok = m.tokenizer(video)
  ref = image_ref(canon, head='gap').tokenizer(frame)
  n = ref.tokens.shape[1]
  close(tok.tokens[:, -n:], ref.tokens)              # the 2D tube (last) on frame 0
  # The other tubes are resized kernels (4x4, 12x12 from 8x8), central frame.
  k = H.params_of(m)['tokenizer']['convs']
  assert k[0]['kernel'].shape == (4, 4, 4, 3, H.D) and k[2]['kernel'].shape == (2, 12, 12, 3, H.D)
  # sincos3d TubeViT (the paper's) inflates too; its posemb is fixed.
  m, report = H.model_from(canon, video_cfg(name='tubevit', tubes=TUBEVIT, image_tube=3,
                                           posemb='sincos3d', head='map'))
  assert any('fixed sin/cos' in r for r in report)
  assert np.isfinite(np.asarray(m.representation(video))).all()


def test_pi_resize_keeps_tokens_of_resized_patches():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((8, 8, 3, 5)).astype(np.float32)
  x = rng.standard_normal((8, 8, 3)).astype(np.float32)
  w16 = inflate.resize_kernel(w, (16, 16), 'pi')
  x16 = inflate._resize(x, (16, 16, 3), antialias=True)
  np.testing.assert_allclose(np.einsum('hwc,hwcd->d', x16, w16), np.einsum('hwc,hwcd->d', x, w),
                             rtol=1e-3, atol=1e-3)
  # Bilinear resize, area-scaled: a flat kernel keeps its response to a flat patch.
  flat = np.ones((8, 8, 3, 5), np.float32)
  wb = inflate.resize_kernel(flat, (4, 4), 'bilinear')
  np.testing.assert_allclose(wb.sum((0, 1)), flat.sum((0, 1)), rtol=1e-5)


def test_space_to_depth_and_scan_variants_compute_the_same(source):
  canon, frame, video = source
  base = dict(name='tubevit', tubes=TUBEVIT, image_tube=3, posemb='learned', head='gap')
  conv, _ = H.model_from(canon, video_cfg(**base))
  s2d, _ = H.model_from(canon, video_cfg(**base, tube_variant='space_to_depth',
                                         space_to_depth=(1, 2, 2)))
  x = np.random.default_rng(2).uniform(-1, 1, (2, T, H.SIZE, H.SIZE, 3)).astype(np.float32)
  close(s2d.tokenizer(x).tokens, conv.tokenizer(x).tokens, atol=1e-4)
  scan, _ = H.model_from(canon, video_cfg(**base, scan_layers=True))
  close(scan.representation(x), conv.representation(x), atol=1e-4)
  interp, _ = H.model_from(canon, video_cfg(**base, tube_variant='interpolated',
                                            interpolated_kernel=(2, 8, 8)))
  assert np.isfinite(np.asarray(interp.representation(x))).all()


def test_heads_dropped_or_kept(source):
  canon, frame, _ = source
  dropped, _ = H.model_from(canon, H.image_model_cfg())
  np.testing.assert_array_equal(H.params_of(dropped)['heads']['x']['kernel'], 0)
  kept, _ = H.model_from(canon, H.image_model_cfg(), opts=dict(keep_heads=True))
  np.testing.assert_array_equal(H.params_of(kept)['heads']['x']['kernel'], canon.params['head/kernel'])
  with pytest.raises(CheckpointMismatch, match=r'heads/y/kernel is \(32, 5\), expected \(32, 3\)'):
    H.model_from(canon, H.image_model_cfg(), num_classes={'y': 3}, opts=dict(keep_heads=True))


def test_deeper_target_than_image_vit_is_an_error(source):
  canon, _, _ = source
  with pytest.raises(CheckpointMismatch, match='num_layers'):
    H.model_from(canon, H.image_model_cfg(num_layers=3))
  m, report = H.model_from(canon, H.image_model_cfg(num_layers=1))
  assert any('first 1 of' in r for r in report)


def test_token_grid_resize_of_position_embeddings(source):
  canon, _, _ = source
  cfg = video_cfg(tubes=TUBELET, image_tube=None, head='gap', input_shape=(T, 48, 48, 3))
  m, _ = H.model_from(canon, cfg)
  table = H.params_of(m)['posemb']['tables'][0]
  assert table.shape == (2, 6, 6, H.D)
  np.testing.assert_allclose(table[0], table[1])
  np.testing.assert_allclose(table[0], inflate.resize_posemb(canon.params['posemb'], (6, 6)))
  assert tokenizers.tube_grid(*TUBELET[0], (T, 48, 48)) == (2, 6, 6)
