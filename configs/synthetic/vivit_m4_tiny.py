"""A tiny ViViT Model 4 (factorised dot-product attention: half the heads over space, half over
time) on the built-in moving-shapes videos.

  python -m sparse_tubes train --config=configs/synthetic/vivit_m4_tiny.py --workdir=/tmp/vivit_m4_tiny
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.synthetic(images=False)
  c.model.name = 'vivit'
  # Tubelet embedding (ViViT §3.2): 2x8x8 tubelets, stride = kernel -> a 4x4x4 token grid. Tubelets
  # span 2 frames, so there is no image path.
  c.model.tubes = (((2, 8, 8), (2, 8, 8), (0, 0, 0)),)
  c.model.image_tube = None
  c.model.posemb = 'learned'              # ViViT's joint learned embedding
  c.model.head = 'gap'
  c.model.attention = 'factorised_dot_product'
  return c
