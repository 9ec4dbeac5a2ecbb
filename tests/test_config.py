"""Bad configs fail before anything is built, with the key and the fix in the message."""
import pytest

from sparse_tubes import config as config_lib
from sparse_tubes import validation
from sparse_tubes import workdir as workdir_lib

TINY = 'configs/synthetic/tubevit_tiny.py'


def load(**kw):
  return config_lib.load(TINY, **kw)


def test_load_rejects_unknown_override():
  with pytest.raises(KeyError, match='config.model.hiden_size'):
    load(model__hiden_size=3)


def test_unknown_top_level_key():
  c = load()
  c.unlock()
  c.optimzer = 1
  with pytest.raises(ValueError, match=r'config\.optimzer'):
    validation.validate(c, num_devices=1, process_count=1)


def test_unknown_dataset_key():
  c = load()
  c.unlock()
  c.datasets.shapes_video.num_frame = 8
  with pytest.raises(ValueError, match=r'config\.datasets\.shapes_video\.num_frame'):
    validation.validate(c, num_devices=1, process_count=1)


def test_epochs_count_over_the_first_dataset():
  c = load(num_epochs=2.0, optimizer__warmup_steps=10)
  validation.validate(c, num_devices=1, process_count=1)
  # shapes_image sorts first: 2 epochs of 2048 images at batch 16.
  assert config_lib.total_steps(c, {'shapes_image': 2048, 'shapes_video': 2048}) == 256
  assert config_lib.total_steps(load(), {'shapes_image': 2048, 'shapes_video': 2048}) == 600
  with pytest.raises(ValueError, match='warmup_steps'):
    config_lib.total_steps(load(num_epochs=0.01), {'shapes_image': 2048, 'shapes_video': 2048})


# ------------------------------------------------------------------ the schema of config.model

TYPO_CONFIG = '''
from sparse_tubes import zoo


def get_config(arg=None):
  c = zoo.synthetic(images=False)
  c.model.update(name='timesformer', tubes=(((1, 8, 8), (1, 8, 8), (0, 0, 0)),), image_tube=0)
  c.model.atention = 'divided'
  return c
'''


def test_typo_in_a_config_file_fails_fast_naming_the_closest_key(tmp_path):
  import time
  path = tmp_path / 'typo.py'
  path.write_text(TYPO_CONFIG)
  start = time.time()
  with pytest.raises(ValueError, match=r'^Unknown config key config\.model\.atention; did you mean '
                                       r'config\.model\.attention\?$'):
    validation.validate(config_lib.load(str(path)), num_devices=1, process_count=1)
  assert time.time() - start < 5


def test_unknown_override_names_the_closest_key():
  with pytest.raises(KeyError, match=r'config\.model\.atention; did you mean config\.model\.attention'):
    load(model__atention='divided')
  with pytest.raises(KeyError, match=r'config\.optimizer\.learnig_rate; did you mean '
                                     r'config\.optimizer\.learning_rate'):
    load(optimizer__learnig_rate=0.1)


def test_workdir_config_json_with_an_unknown_key_is_rejected(tmp_path):
  import json
  workdir_lib.save_workdir(load(), str(tmp_path))
  validation.validate(workdir_lib.load_workdir(str(tmp_path)), num_devices=1, process_count=1)
  path = tmp_path / workdir_lib.WORKDIR_CONFIG
  saved = json.loads(path.read_text())
  saved['model']['atention'] = 'divided'
  path.write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r'config\.model\.atention; did you mean config\.model\.attention'):
    validation.validate(workdir_lib.load_workdir(str(tmp_path)), num_devices=1, process_count=1)


def test_nested_unknown_keys_outside_the_model():
  c = load()
  c.unlock()
  c.mixup.mixup_alpa = 0.2
  with pytest.raises(ValueError, match=r'config\.mixup\.mixup_alpa; did you mean config\.mixup\.mixup_alpha'):
    validation.validate(c, num_devices=1, process_count=1)


def test_every_model_key_has_a_default_in_base():
  """The schema is filled in once: base() holds every model key, and the configs keep them all."""
  from sparse_tubes import defaults
  assert set(defaults.base().model.keys()) == set(defaults.model().keys())
  assert set(load().model.keys()) == set(defaults.model().keys())
  assert set(defaults.TYPES) <= {f'model.{k}' for k in defaults.model().keys()}


@pytest.mark.parametrize('overrides,match', [
    (dict(model__hidden_size='64'), r"config\.model\.hidden_size = '64' \(str\): expected int"),
    (dict(model__dropout='0.1'), r"config\.model\.dropout = '0.1' \(str\): expected float"),
    (dict(model__scan_layers=1), r'config\.model\.scan_layers = 1 \(int\): expected bool'),
    (dict(model__image_tube='3'), r"config\.model\.image_tube = '3' \(str\): expected int or None"),
    (dict(model__tubes=((1, 8, 8),)), r'config\.model\.tubes\[0\] = \(1, 8, 8\): expected'),
    (dict(model__tubes=(((1, 8), (8, 8, 8), (0, 0, 0)),)), r'config\.model\.tubes\[0\]'),
    (dict(model__remat='sometimes'), r'config\.model\.remat'),
    (dict(model__attention_impl='flash'), r"config\.model\.attention_impl = 'flash'"),
    (dict(model__name='tubevitt'), r"config\.model\.name = 'tubevitt'"),
    (dict(model__num_heads=5), r'hidden_size = 64 must be a multiple of config\.model\.num_heads = 5'),
    (dict(model__stochastic_depth=1.5), r'stochastic_depth = 1\.5 must be in \[0, 1\)'),
])
def test_model_values_of_the_wrong_type_or_out_of_range(overrides, match):
  with pytest.raises(ValueError, match=match):
    validation.validate(load(**overrides), num_devices=1, process_count=1)


@pytest.mark.parametrize('overrides,match', [
    # TubeViT's four sparse tubes have no (t, h, w) grid to factorise.
    (dict(model__attention='divided'), r"attention = 'divided' needs .* single dense tube"),
    (dict(model__encoder='factorised'), r"encoder = 'factorised' needs .* single dense tube"),
    (dict(model__posemb='learned_space_time'), r"posemb = 'learned_space_time' needs"),
    (dict(model__posemb='learned', model__input_shape=None), r'input_shape = \(T, H, W, C\)'),
    (dict(model__head='gap', model__head_mlp_dim=128), r"head_mlp_dim = 128 is the MLP of the MAP head"),
    (dict(model__local_window=(2, 2, 2)), r"local_window .* only applies to .*'local_global'"),
    (dict(model__space_cls_average='after_norm'), r"space_cls_average only applies to .*'space'"),
])
def test_impossible_model_combinations(overrides, match):
  with pytest.raises(ValueError, match=match):
    validation.validate(load(**overrides), num_devices=1, process_count=1)


def test_model_config_fills_defaults_and_names():
  m = config_lib.model_config(dict(name='timesformer', hidden_size=16, num_layers=1, num_heads=2,
                                   mlp_dim=32, tubes=(((1, 8, 8), (1, 8, 8), (0, 0, 0)),),
                                   input_shape=(4, 16, 16, 3)))
  assert (m.attention, m.posemb, m.head, m.head_mlp_dim) == (
      'divided', 'learned_space_time', 'token', 0)
  assert config_lib.model_config(dict(m, name='tubevit', posemb='', head='', attention='')).head == 'map'
  with pytest.raises(ValueError, match=r'config\.model\.num_layer; did you mean config\.model\.num_layers'):
    config_lib.model_config(dict(m, num_layer=2))
