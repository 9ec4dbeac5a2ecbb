"""TubeViT image-to-video scaling (paper §3.6) on the built-in dataset, in four stages; the arg
picks one: `tubevit_scaling_small.py:STAGE[,root=DIR]` (DIR default /tmp/tubevit_scaling).

  small     a tiny TubeViT (hidden 32, 2 layers) trained on moving_shapes/video -> DIR/small
  image     a larger image ViT (hidden 64, 4 layers, 8x8 patches, class token) trained on
            moving_shapes/image -> DIR/image, then saved as DIR/image_vit.npz (the
            vision_transformer layout) by scripts/tubevit_scaling.py
  scaled    the larger TubeViT: transformer, class token and 2D-patch tube from DIR/image_vit.npz,
            video tubes from the small TubeViT (projected 32 -> 64), blocks before layer 2
            frozen, gated connection tanh(alpha) * z0 on layers 2-3, fine-tuned on video
  baseline  the same larger TubeViT from its image init alone (tubes inflated from the image
            patch, central frame), everything trained, no gates

  python scripts/tubevit_scaling.py          # runs all four and prints the comparison
"""
import os

from sparse_tubes import defaults

TUBES = (   # the tiny TubeViT's four tubes (configs/synthetic/tubevit_tiny.py)
    ((8, 4, 4), (8, 8, 8), (0, 2, 2)),
    ((4, 8, 8), (4, 8, 8), (0, 0, 0)),
    ((2, 12, 12), (4, 8, 8), (0, 4, 4)),
    ((1, 8, 8), (8, 8, 8), (0, 0, 0)),
)
STAGES = ('small', 'image', 'scaled', 'baseline')
FREEZE_BEFORE = 2


def _parse(arg):
  parts = [p for p in (arg or 'scaled').split(',') if p]
  stage, opts = parts[0], dict(p.split('=', 1) for p in parts[1:])
  if stage not in STAGES:
    raise ValueError(f'tubevit_scaling_small.py:{stage}: the stage is one of {STAGES}.')
  return stage, opts.get('root', os.environ.get('SCALING_ROOT', '/tmp/tubevit_scaling'))


def _video(c, **kw):
  c.datasets.shapes_video = defaults.dataset(
      tfds_name='moving_shapes/video', kind='video', batch_size=32, eval_batch_size=128,
      num_frames=8, frame_stride=1, crop_size=32, min_resize=36, max_resize=40, flip=False,
      eval_temporal_views=1, eval_spatial_views=1, **kw)


def get_config(arg=None):
  stage, root = _parse(arg)
  c = defaults.base()
  m = c.model
  m.dropout, m.stochastic_depth = 0.0, 0.0
  c.label_smoothing = 0.1
  c.optimizer.weight_decay = 1e-4
  c.async_checkpoints = False
  if stage == 'small':
    _video(c)
    m.name, m.tubes, m.image_tube, m.posemb, m.head = 'tubevit', TUBES, 3, 'sincos3d', 'map'
    m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim = 32, 2, 2, 64
    c.total_steps, c.optimizer.learning_rate, c.optimizer.warmup_steps = 300, 3e-3, 30
  elif stage == 'image':
    c.datasets.shapes_image = defaults.dataset(
        tfds_name='moving_shapes/image', kind='image', batch_size=32, eval_batch_size=128,
        crop_size=32, min_resize=36, max_resize=40, flip=True)
    m.name, m.image_tube, m.posemb, m.head, m.attention = 'vivit', 0, 'learned', 'token', 'joint'
    m.tubes = (((1, 8, 8), (1, 8, 8), (0, 0, 0)),)
    m.input_shape = (1, 32, 32, 3)
    m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim = 64, 4, 4, 128
    c.total_steps, c.optimizer.learning_rate, c.optimizer.warmup_steps = 200, 2e-3, 20
  else:
    _video(c)
    m.name, m.tubes, m.image_tube, m.posemb, m.head = 'tubevit', TUBES, 3, 'learned', 'token'
    m.input_shape = (8, 32, 32, 3)
    m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim = 64, 4, 4, 128
    c.total_steps, c.optimizer.learning_rate, c.optimizer.warmup_steps = 150, 1e-3, 15
    c.init_from.kind = 'vit_npz'
    c.init_from.path = os.path.join(root, 'image_vit.npz')
    if stage == 'scaled':
      c.init_from.tubes_from = os.path.join(root, 'small')
      c.freeze.layers_before = FREEZE_BEFORE
      m.scaling_gate_layers = FREEZE_BEFORE
  c.log_every_steps = 50
  c.checkpoint_every_steps = c.total_steps
  return c
