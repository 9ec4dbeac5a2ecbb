"""A tiny ViViT Model 4 (factorised dot-product attention: half the heads over space, half over
time) on the built-in moving-shapes videos.

  python -m sparse_tubes train --config=configs/synthetic/vivit_m4_tiny.py --workdir=/tmp/vivit_m4_tiny
"""
from sparse_tubes import defaults


def get_config(arg=None):
  c = defaults.base()
  c.datasets.shapes_video = defaults.dataset(
      tfds_name='moving_shapes/video', kind='video', batch_size=32, eval_batch_size=48,
      num_frames=8, frame_stride=1, crop_size=32, min_resize=36, max_resize=40, flip=False,
      eval_temporal_views=2, eval_spatial_views=3)

  c.model.name = 'vivit'
  # Tubelet embedding (ViViT §3.2): 2x8x8 tubelets, stride = kernel -> a 4x4x4 token grid. Tubelets
  # span 2 frames, so there is no image path.
  c.model.tubes = (((2, 8, 8), (2, 8, 8), (0, 0, 0)),)
  c.model.image_tube = None
  c.model.posemb = 'learned'              # ViViT's joint learned embedding
  c.model.head = 'gap'
  c.model.attention = 'factorised_dot_product'

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
