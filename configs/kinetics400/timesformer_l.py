"""TimeSformer-L on kinetics400 (Bertasius et al., ICML 2021, arXiv 2102.05095).

Divided space-time attention on 96x224x224, frames 1 in 4 (§4.1, Table 3). Paper: 80.7% top-1, 1x3 views, 7.14 TFLOPs (Table 5).
Recipe: SGD lr 0.005, momentum 0.9, weight decay 1e-4, 15 epochs, lr x0.1 at epochs 11 and 14.
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.base(arg)
  c.datasets.kinetics400 = zoo.timesformer_kinetics('kinetics400', 'l')
  zoo.timesformer(c)
  zoo.timesformer_recipe(c, 'kinetics400')
  return c
