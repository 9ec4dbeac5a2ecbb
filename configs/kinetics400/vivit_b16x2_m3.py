"""ViViT-B/16x2 M3 on Kinetics-400 (Arnab et al., ICCV 2021, arXiv 2103.15691).

ViViT Model 3 (factorised self-attention). Paper Table 2: 77.4% top-1, 372.3 GFLOPs per view, 117.3M parameters
(32 frames, stride 2, 224 px; 4x3 eval views). Recipe: SGD momentum 0.9, cosine, batch 64, lr 0.1,
30 epochs.
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.base(arg)
  c.datasets.kinetics400 = zoo.vivit_kinetics('kinetics400')
  zoo.vivit(c, 'B', 'm3')
  zoo.vivit_recipe(c, 'kinetics400')
  return c
