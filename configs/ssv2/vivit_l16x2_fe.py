"""ViViT-L/16x2 FE (factorised encoder) on ssv2 (Arnab et al., ICCV 2021, arXiv 2103.15691).

Paper: Table 6e, ViViT-L/16x2 FE, 65.4% top-1 (Kinetics-400 initialised).
32 frames: 995.3 GFLOPs per view (§4.2), 4x3 views. `:frames=128` is the state-of-the-art setting of
Table 6 (128 frames, 3980.4 GFLOPs per view, 1x3 views).
SSv2 recipe (App. B): lr 0.5, 35 epochs, stochastic depth 0.3, label smoothing 0.3, mixup 0.3 and
RandAugment.
"""
from sparse_tubes import zoo


def get_config(arg=None):
  frames = int(zoo.parse_arg(arg).get('frames', 32))
  views = (4, 3) if frames <= 32 else (1, 3)
  c = zoo.base(arg)
  c.datasets.ssv2 = zoo.ssv2_dataset(num_frames=frames, batch_size=64, views=views)
  zoo.vivit(c, 'L', 'fe')
  zoo.vivit_recipe(c, 'ssv2', epochs=35, learning_rate=0.5)
  c.model.stochastic_depth = 0.3
  c.label_smoothing = 0.3
  # App. B names RandAugment without N, M in our notes: TubeViT's (2, 10) (Table 10).
  zoo.ssv2_regularisation(c, randaugment=(2, 10))
  return c
