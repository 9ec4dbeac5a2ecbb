"""TubeViT-L on Kinetics-600 (Piergiovanni et al., CVPR 2023, arXiv 2212.03229).

Paper (Table 2): 91.5% top-1; model size 311M (§4). The four sparse tubes of Table 12 on
32x224x224 clips, fixed 3D sin/cos position at tube centres, attention pooling; recipe of Table 10.

  python -m sparse_tubes info  --config=configs/kinetics600/tubevit_l.py
  python -m sparse_tubes train --config=configs/kinetics600/tubevit_l.py:cotrain --workdir=gs://...

`:cotrain` adds ImageNet-1k through the 2D-patch tube with its own head, as the paper's main results.
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.base(arg)
  c.datasets.kinetics600 = zoo.tubevit_kinetics('kinetics600')
  zoo.maybe_cotrain(c, arg)
  zoo.tubevit(c, 'L')
  zoo.tubevit_recipe(c, 'L')
  return c
