"""The datasets of a config: their infos from the data, class counts from the data, the zoo's table,
or an error naming the fix."""
import os

import pytest

from sparse_tubes import config as config_lib
from sparse_tubes import zoo
from sparse_tubes.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, 'configs', 'synthetic', 'tubevit_tiny.py')


def test_infos_and_class_counts_from_the_data(make_config, tiny_data_dir):
  config = make_config()
  root, infos = sources.dataset_infos(config)
  assert root == tiny_data_dir and sorted(infos) == ['shapes_image', 'shapes_video']
  classes = sources.num_classes(config, infos)
  assert classes == {n: infos[n].num_classes for n in infos}
  assert classes == sources.num_classes(config)  # the zoo's table agrees with the data


def test_known_names_need_no_data(tmp_path):
  config = config_lib.load(TINY)
  config.data_dir = str(tmp_path / 'empty')
  config.datasets.shapes_video.tfds_name = 'kinetics400'
  assert sources.num_classes(config)['shapes_video'] == zoo.NUM_CLASSES['kinetics400'] == 400
  assert not os.path.exists(tmp_path / 'empty')  # nothing built or read


def test_unknown_dataset_names_the_fix():
  config = config_lib.load(TINY)
  config.datasets.shapes_video.tfds_name = 'no_such_dataset_xyz'
  with pytest.raises(ValueError, match='NUM_CLASSES'):
    sources.num_classes(config)
