"""A Kinetics-400 paper config on the built-in data at the papers' clip size: its model, batch,
clip sampling and augmentation, reading moving_shapes/video_paper (64 frames of 256x256 JPEG in
ArrayRecord, as Kinetics is stored) instead of Kinetics. For measuring whether the input pipeline
keeps an accelerator fed without downloading Kinetics:

  python -m sparse_tubes bench step --config=configs/synthetic/paper_res.py:vivit_b16x2_m1 \
      --with_data --batch_size=8 --dtype=bfloat16

The argument names a file of configs/kinetics400/ (default timesformer_divst).
"""
import os

from sparse_tubes import config as config_lib


def get_config(arg=None):
  name = arg or 'timesformer_divst'
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'kinetics400',
                      f'{name}.py')
  c = config_lib.load(path)
  with c.unlocked():
    for ds in c.datasets.values():
      if ds.kind == 'video':
        ds.tfds_name = 'moving_shapes/video_paper'
        ds.eval_split = 'test'
  return c
