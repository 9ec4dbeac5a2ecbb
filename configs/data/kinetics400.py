"""Kinetics-400 input settings of TubeViT-B (32 frames at stride 2 from 25 fps clips, 224 crops from
a short side jittered in [256, 320], RandAugment 2/9, 4 x 3 eval views) plus ImageNet-1k for
co-training, and TubeViT-B as the model they are for (`bench data` sizes the host from it).

  python -m sparse_tubes prepare kinetics400 --manual_dir=/data/k400 --data_dir=/data/tfds
  python -m sparse_tubes bench data --config=configs/data/kinetics400.py
"""
from sparse_tubes import defaults
from sparse_tubes import zoo


def get_config(arg=None):
  del arg
  c = defaults.base()
  c.datasets.k400 = defaults.dataset(
      tfds_name='kinetics400', kind='video', train_split='train', eval_split='validation',
      batch_size=256, eval_batch_size=96, num_frames=32, frame_stride=2, sampling='stride',
      crop_size=224, min_resize=256, max_resize=320, flip=True, normalization='minus_one_to_one',
      randaugment_layers=2, randaugment_magnitude=9, eval_temporal_views=4, eval_spatial_views=3)
  c.datasets.imagenet = defaults.dataset(
      tfds_name='imagenet2012', kind='image', train_split='train', eval_split='validation',
      batch_size=256, eval_batch_size=256, crop_size=224, min_resize=256, max_resize=256,
      train_crop='random_resized', randaugment_layers=2, randaugment_magnitude=9, flip=True,
      loss_weight=0.5)
  c.grain.worker_count = 8
  # The model these settings are for; `bench data` sizes what a TPU host needs from it.
  zoo.tubevit(c, 'B')
  return c
