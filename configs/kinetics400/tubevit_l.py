"""TubeViT-L on Kinetics-400 (Piergiovanni et al., CVPR 2023, arXiv 2212.03229).

Paper (Table 1): 90.2% top-1 (4x3 views, 9.53 TFLOPs); model size 311M (§4). The four sparse tubes of Table 12 on
32x224x224 clips, fixed 3D sin/cos position at tube centres, attention pooling; recipe of Table 10.

  python -m sparse_tubes info  --config=configs/kinetics400/tubevit_l.py
  python -m sparse_tubes train --config=configs/kinetics400/tubevit_l.py:cotrain --workdir=gs://...

`:cotrain` adds ImageNet-1k through the 2D-patch tube with its own head, as the paper's main results.
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.base(arg)
  c.datasets.kinetics400 = zoo.tubevit_kinetics('kinetics400')
  zoo.maybe_cotrain(c, arg)
  zoo.tubevit(c, 'L')
  zoo.tubevit_recipe(c, 'L')
  return c
