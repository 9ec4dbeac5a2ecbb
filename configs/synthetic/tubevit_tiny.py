"""A tiny TubeViT jointly trained on the built-in moving-shapes videos (label: direction of motion)
and images (label: shape). The tubes keep the paper's four shapes (Table 12: a long-in-time tube,
a cube, a wide tube and the 2D patch shared with images) scaled to 8x32x32 clips.

  python -m sparse_tubes train --config=configs/synthetic/tubevit_tiny.py --workdir=/tmp/tv
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.synthetic(images=True)
  c.model.name = 'tubevit'
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
  return c
