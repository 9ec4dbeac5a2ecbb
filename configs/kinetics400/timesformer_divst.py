"""TimeSformer Divided Space-Time (T+S) on kinetics400 (Bertasius et al., ICML 2021, arXiv 2102.05095).

Paper Table 1: 121.4M parameters, 78.0% top-1 (ImageNet-21k). Table 2 and Table 5: 0.59 TFLOPs for 1x3 views. 8x224x224 clips, frames
sampled 1 in 32 (stride 32), eval 1 temporal x 3 spatial views. Recipe: SGD lr 0.005, momentum
0.9, weight decay 1e-4, 15 epochs, lr x0.1 at epochs 11 and 14.
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.base(arg)
  c.datasets.kinetics400 = zoo.timesformer_kinetics('kinetics400')
  zoo.timesformer(c)
  zoo.timesformer_recipe(c, 'kinetics400')
  return c
