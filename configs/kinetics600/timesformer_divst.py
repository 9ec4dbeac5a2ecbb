"""TimeSformer (divided space-time) on kinetics600 (Bertasius et al., ICML 2021, arXiv 2102.05095).

Paper Table 6: 79.1% top-1. 8x224x224 clips, frames 1 in 32, eval 1x3 views. Recipe: SGD lr 0.005,
momentum 0.9, weight decay 1e-4, 15 epochs, lr x0.1 at epochs 11 and 14.
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.base(arg)
  c.datasets.kinetics600 = zoo.timesformer_kinetics('kinetics600')
  zoo.timesformer(c)
  zoo.timesformer_recipe(c, 'kinetics600')
  return c
