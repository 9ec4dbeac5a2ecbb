"""A tiny TimeSformer with axial attention (T, then W, then H) on the built-in moving-shapes
videos.

  python -m sparse_tubes train --config=configs/synthetic/timesformer_axial_tiny.py --workdir=/tmp/timesformer_axial_tiny
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

  c.model.name = 'timesformer'
  # 2D 8x8 patches on every frame (TimeSformer §3) -> an 8x4x4 token grid; images use the same tube.
  c.model.tubes = (((1, 8, 8), (1, 8, 8), (0, 0, 0)),)
  c.model.image_tube = 0
  c.model.posemb = 'learned_space_time'   # learned space + learned time embeddings
  c.model.head = 'token'
  c.model.attention = 'axial'

  c.model.hidden_size = 64
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 256
  c.model.dropout = 0.0
  c.model.stochastic_depth = 0.0
  c.model.input_shape = (8, 32, 32, 3)    # sizes the learned position tables

  c.total_steps = 600
  c.label_smoothing = 0.1
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 1e-4
  c.log_every_steps = 25
  c.checkpoint_every_steps = 200
  return c
