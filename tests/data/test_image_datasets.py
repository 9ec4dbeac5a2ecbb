"""Image datasets for co-training read by TFDS name: any TFDS image dataset with 'image' and 'label'."""
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sparse_tubes import defaults
from sparse_tubes.data import builtin
from sparse_tubes.data import pipeline


class TinyGreyShapes(builtin.Builder, skip_registration=True):
  """A catalogue-style dataset unlike the built-in one: PNG, one channel, images of varied sizes,
  no 'id' feature, and 'validation' as the eval split."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
        'label': tfds.features.ClassLabel(names=['dark', 'light']),
        'file_name': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(12), 'validation': self._generate_examples(4)}

  def _generate_examples(self, n):
    import cv2  # pylint: disable=g-import-not-at-top
    for i in range(n):
      h, w = 30 + 3 * i, 50 - 2 * i
      image = np.full((h, w, 1), 40 if i % 2 == 0 else 210, np.uint8)
      yield i, {'image': cv2.imencode('.png', image)[1].tobytes(), 'label': i % 2,
                'file_name': f'img{i}.png'}


@pytest.fixture(scope='module')
def grey_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('grey'))
  TinyGreyShapes(data_dir=data_dir).download_and_prepare(file_format='array_record')
  return data_dir


def test_any_tfds_image_dataset_by_name(grey_dir, monkeypatch):
  # In a user's run the name resolves from the files on disk, without the builder code.
  monkeypatch.setattr(builtin, 'ensure_built', lambda name, data_dir: tfds.builder_from_directory(
      f'{data_dir}/tiny_grey_shapes/1.0.0'))
  cfg = defaults.dataset(tfds_name='tiny_grey_shapes', kind='image', batch_size=4,
                         eval_batch_size=4, crop_size=24, min_resize=28, max_resize=32,
                         eval_split='validation', train_crop='random_resized',
                         randaugment_layers=1, normalization='imagenet')
  grain_cfg = defaults.base().grain
  grain_cfg.read_threads = 2
  batch = next(pipeline.train_iterator(cfg, data_dir=grey_dir, seed=0, process_index=0,
                                       process_count=1, grain_cfg=grain_cfg))
  assert batch['inputs'].shape == (4, 24, 24, 3) and batch['label'].max() <= 1
  batches = list(pipeline.eval_batches(cfg, data_dir=grey_dir, process_index=0, process_count=1))
  assert len(batches) == 1 and batches[0]['mask'].all()
  # Greyscale decodes to three equal channels; label 1 images are light.
  x = batches[0]['inputs']
  np.testing.assert_allclose(x[..., 0] * 0.229 + 0.485, x[..., 2] * 0.225 + 0.406, atol=1e-5)
  assert pipeline.dataset_info(cfg, grey_dir).class_names == ('dark', 'light')
  assert 'tensorflow' not in sys.modules


def test_imagenet2012_not_prepared_says_how(tmp_path):
  cfg = defaults.dataset(tfds_name='imagenet2012', kind='image', eval_split='validation')
  with pytest.raises(ValueError, match='tfds build NAME --file_format=array_record'):
    pipeline.data_source(cfg, str(tmp_path), 'train')
  assert 'tensorflow' not in sys.modules
