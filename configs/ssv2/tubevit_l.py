"""TubeViT-L on Something-Something v2 (Piergiovanni et al., CVPR 2023, arXiv 2212.03229).

Paper (Table 4): 76.1% top-1, initialised from the Kinetics-600 model. 32 frames, one per segment
(Table 10), no flips; SSv2 regularisation of Table 10: dropout 0.3, label smoothing 0.3, mixup 0.3
and RandAugment (2, 10).
"""
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.base(arg)
  c.datasets.ssv2 = zoo.ssv2_dataset(num_frames=32, batch_size=256, views=(4, 3))
  zoo.maybe_cotrain(c, arg)
  zoo.tubevit(c, 'L')
  zoo.tubevit_recipe(c, 'L', ssv2=True)
  return c
