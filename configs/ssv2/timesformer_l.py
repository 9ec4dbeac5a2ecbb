"""TimeSformer-L on ssv2 (Bertasius et al., ICML 2021, arXiv 2102.05095).

Divided space-time attention on 64x224x224, one frame per segment (the official SSv2 config) (§4.1, Table 3). Paper: 62.3% top-1 (Table 7).
Recipe: SGD lr 0.005, momentum 0.9, weight decay 1e-4, 15 epochs, lr x0.1 at epochs 11 and 14.
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.base(arg)
  c.datasets.ssv2 = zoo.timesformer_ssv2('l')
  zoo.timesformer(c)
  zoo.timesformer_recipe(c, 'ssv2')
  return c
