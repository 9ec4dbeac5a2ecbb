"""Something-Something v2 input settings: 32 frames by segment sampling, no flips (they change the
labels), random-resized crops to 224, RandAugment 2/9, 2 x 3 eval views; TubeViT-B as the model.

  python -m sparse_tubes prepare ssv2 --manual_dir=/data/ssv2 --data_dir=/data/tfds
"""
from sparse_tubes import defaults
from sparse_tubes import zoo


def get_config(arg=None):
  del arg
  c = defaults.base()
  c.datasets.ssv2 = defaults.dataset(
      tfds_name='ssv2', kind='video', train_split='train', eval_split='validation',
      batch_size=256, eval_batch_size=96, num_frames=32, sampling='segment', crop_size=224,
      min_resize=256, max_resize=320, flip=False, train_crop='random_resized',
      rrc_scale=(0.25, 1.0), randaugment_layers=2, randaugment_magnitude=9,
      eval_temporal_views=2, eval_spatial_views=3)
  c.grain.worker_count = 8
  # The model these settings are for; `bench data` sizes what a TPU host needs from it.
  zoo.tubevit(c, 'B')
  return c
