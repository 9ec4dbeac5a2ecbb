"""A tiny TimeSformer with axial attention (T, then W, then H) on the built-in moving-shapes
videos.

  python -m sparse_tubes train --config=configs/synthetic/timesformer_axial_tiny.py --workdir=/tmp/timesformer_axial_tiny
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.synthetic(images=True)
  c.model.name = 'timesformer'
  # 2D 8x8 patches on every frame (TimeSformer §3) -> an 8x4x4 token grid; images use the same tube.
  c.model.tubes = (((1, 8, 8), (1, 8, 8), (0, 0, 0)),)
  c.model.image_tube = 0
  c.model.posemb = 'learned_space_time'   # learned space + learned time embeddings
  c.model.head = 'token'
  c.model.attention = 'axial'
  return c
