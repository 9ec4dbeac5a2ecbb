"""A tiny TubeViT jointly trained on the built-in moving-shapes videos (label: direction of motion)
and images (label: shape). The tubes keep the paper's four shapes (Table 12: a long-in-time tube,
a cube, a wide tube and the 2D patch shared with images) scaled to 8x32x32 clips.

  python -m sparse_tubes train --config=configs/synthetic/tubevit_tiny.py --workdir=/tmp/tv
"""
from sparse_tubes import defaults


def get_config(arg=None):
  c = defaults.base()
  c.datasets.shapes_video = defaults.dataset(
      tfds_name='moving_shapes/video', kind='video', batch_size=32, eval_batch_size=48,
      num_frames=8, frame_stride=1, crop_size=32, min_resize=36, max_resize=40, flip=False,
      eval_temporal_views=2, eval_spatial_views=3)
  c.datasets.shapes_image = defaults.dataset(
      tfds_name='moving_shapes/image', kind='image', batch_size=16, eval_batch_size=48,
      crop_size=32, min_resize=36, max_resize=40, flip=True, loss_weight=0.5,
      eval_spatial_views=1)

  c.model.name = 'tubevit'
  c.model.hidden_size = 64
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 256
  c.model.dropout = 0.0
  c.model.stochastic_depth = 0.0
  # (kernel (t,h,w), stride (t,h,w), offset (t,h,w)); the last is the 2D patch used for images.
  c.model.tubes = (
      ((8, 4, 4), (8, 8, 8), (0, 2, 2)),      # long in time, small in space (paper tube 2)
      ((4, 8, 8), (4, 8, 8), (0, 0, 0)),      # cube (paper tube 1)
      ((2, 12, 12), (4, 8, 8), (0, 4, 4)),    # wide in space (paper tube 3)
      ((1, 8, 8), (8, 8, 8), (0, 0, 0)),      # 2D patch, shared with images (paper tube 4)
  )
  c.model.image_tube = 3
  c.model.posemb = 'sincos3d'
  c.model.head = 'map'

  c.total_steps = 600
  c.label_smoothing = 0.1
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 1e-4
  c.log_every_steps = 25
  c.checkpoint_every_steps = 200
  return c
