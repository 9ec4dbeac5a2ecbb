"""ViViT-L/16x2 FE (factorised encoder) on kinetics400 (Arnab et al., ICCV 2021, arXiv 2103.15691).

Paper: Table 6a, ViViT-L/16x2 FE, 80.6% top-1 (ImageNet-21k), 1x3 views, 11.94 TFLOPs.
32 frames: 995.3 GFLOPs per view (§4.2), 4x3 views. `:frames=128` is the state-of-the-art setting of
Table 6 (128 frames, 3980.4 GFLOPs per view, 1x3 views).
"""
from sparse_tubes import zoo


def get_config(arg=None):
  frames = int(zoo.parse_arg(arg).get('frames', 32))
  views = (4, 3) if frames <= 32 else (1, 3)
  c = zoo.base(arg)
  c.datasets.kinetics400 = zoo.vivit_kinetics('kinetics400', num_frames=frames, views=views)
  zoo.vivit(c, 'L', 'fe')
  zoo.vivit_recipe(c, 'kinetics400')
  return c
