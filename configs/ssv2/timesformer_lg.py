"""TimeSformer Sparse Local Global (L+G) on ssv2 (Bertasius et al., ICML 2021, arXiv 2102.05095).

Paper Table 1: 121.4M parameters, 56.3% top-1 (ImageNet-21k). 8x224x224 clips, frames
sampled 1 in 32 (one per segment), eval 1 temporal x 3 spatial views. Recipe: SGD lr 0.005, momentum
0.9, weight decay 1e-4, 15 epochs, lr x0.1 at epochs 11 and 14.
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.base(arg)
  c.datasets.ssv2 = zoo.timesformer_ssv2()
  zoo.timesformer(c, 'local_global')
  zoo.timesformer_recipe(c, 'ssv2')
  return c
