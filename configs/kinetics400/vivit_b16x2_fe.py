"""ViViT-B/16x2 FE on Kinetics-400 (Arnab et al., ICCV 2021, arXiv 2103.15691).

ViViT Model 2 (factorised encoder, L_t = 4). Paper Table 2: 78.8% top-1, 284.4 GFLOPs per view, 115.1M parameters
(32 frames, stride 2, 224 px; 4x3 eval views). Recipe: SGD momentum 0.9, cosine, batch 64, lr 0.1,
30 epochs.
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.base(arg)
  c.datasets.kinetics400 = zoo.vivit_kinetics('kinetics400')
  zoo.vivit(c, 'B', 'fe')
  zoo.vivit_recipe(c, 'kinetics400')
  return c
