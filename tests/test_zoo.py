"""The zoo's building blocks for configs/: config arguments, epochs to steps, dataset presets, the
TPU sizing of a config, and each paper's model keys (whole configs against the papers:
test_paper_configs.py)."""
import ml_collections
import pytest

from sparse_tubes import defaults
from sparse_tubes import zoo


def test_parse_arg_and_arg_choice():
  assert zoo.parse_arg('size=L, cotrain,variant=fe') == {'size': 'L', 'cotrain': True,
                                                         'variant': 'fe'}
  assert zoo.parse_arg(None) == {} and zoo.parse_arg('') == {}
  assert zoo.arg_choice('size=L', 'size', ('B', 'L'), 'B', 'x.py') == 'L'
  assert zoo.arg_choice(None, 'size', ('B', 'L'), 'B', 'x.py') == 'B'
  with pytest.raises(ValueError, match=r"x.py:size=XL: use one of \('B', 'L'\)"):
    zoo.arg_choice('size=XL', 'size', ('B', 'L'), 'B', 'x.py')


def test_epochs_to_steps_rounds_over_the_train_split():
  n = zoo.TRAIN_EXAMPLES['kinetics400']
  assert zoo.epochs_to_steps(1, 'kinetics400', 64) == round(n / 64)
  assert zoo.epochs_to_steps(2.5, 'kinetics400', 64) == round(2.5 * n / 64)


def test_video_dataset_sizes_follow_the_crop():
  ds = zoo.video_dataset('kinetics400', num_frames=32, crop_size=224, batch_size=64)
  assert (ds.min_resize, ds.max_resize) == (256, 320)
  assert (ds.eval_temporal_views, ds.eval_spatial_views, ds.eval_batch_size) == (4, 3, 48)
  ssv2 = zoo.ssv2_dataset(num_frames=16, crop_size=112, batch_size=8, views=(1, 3))
  assert (ssv2.tfds_name, ssv2.sampling, ssv2.flip, ssv2.frame_stride) == ('ssv2', 'segment',
                                                                           False, 1)
  assert (ssv2.min_resize, ssv2.max_resize, ssv2.eval_batch_size) == (128, 160, 12)


def config_with(batch_size=64, eval_batch_size=12):
  c = defaults.base()
  c.datasets.k = zoo.video_dataset('kinetics400', num_frames=8, batch_size=batch_size,
                                   eval_batch_size=eval_batch_size)
  return c


def test_tpu_sizes_batches_to_the_slice():
  c = config_with()
  zoo.tpu(c, 'v5e:4x4', fsdp=True, microbatches=2)
  assert c.topology == 'v5e:4x4' and c.datasets.k.eval_batch_size == 48  # lcm(12, 16)
  assert (c.model.dtype, c.model.scan_layers, c.model.remat, c.microbatches) == (
      'bfloat16', True, True, 2)
  assert (c.mesh.data, c.mesh.fsdp) == (1, -1)
  with pytest.raises(ValueError, match='batch_size=24 does not split over the 16 chips of v5e:4x4'):
    zoo.tpu(config_with(batch_size=24), 'v5e:4x4')


def test_tubevit_model_and_recipe():
  c = config_with(batch_size=256)
  zoo.tubevit(c, 'B')
  assert c.model.tubes == zoo.TUBEVIT_TUBES and c.model.image_tube == 3
  assert (c.model.head, c.model.head_mlp_dim, c.model.posemb) == ('map', 0, 'sincos3d')
  assert c.model.hidden_size == zoo.VIT['B']['hidden_size']
  zoo.tubevit_recipe(c, 'B', ssv2=True)
  assert (c.optimizer.learning_rate, c.optimizer.weight_decay, c.total_steps) == (5e-5, 1e-3,
                                                                                  300_000)
  assert (c.model.dropout, c.label_smoothing, c.mixup.mixup_alpha) == (0.3, 0.3, 0.3)
  assert (c.datasets.k.randaugment_layers, c.datasets.k.randaugment_magnitude) == (2, 10)
  assert c.topology == 'v5e:4x4' and c.model.remat is False


@pytest.mark.parametrize('variant', sorted(zoo.VIVIT_VARIANTS))
def test_vivit_variants(variant):
  c = config_with()
  zoo.vivit(c, 'B', variant)
  assert c.model.tubes == (((2, 16, 16), (2, 16, 16), (0, 0, 0)),)
  assert c.model.input_shape == (8, 224, 224, 3) and c.model.image_tube is None
  for key, value in zoo.VIVIT_VARIANTS[variant][0].items():
    assert c.model[key] == value, key


def test_timesformer_recipe_steps_at_epochs_11_and_14():
  c = defaults.base()
  c.datasets.k = zoo.timesformer_kinetics('kinetics400', 'hr')
  assert (c.datasets.k.num_frames, c.datasets.k.frame_stride, c.datasets.k.crop_size) == (16, 16,
                                                                                          448)
  zoo.timesformer(c, 'axial')
  assert (c.model.attention, c.model.head, c.model.input_shape) == ('axial', 'token',
                                                                    (16, 448, 448, 3))
  zoo.timesformer_recipe(c, 'kinetics400')
  assert c.total_steps == zoo.epochs_to_steps(15, 'kinetics400', 8)
  assert c.optimizer.step_boundaries == (11 / 15, 14 / 15) and c.optimizer.schedule == 'step'


def test_cotrain_adds_imagenet_with_its_own_head():
  c = config_with()
  zoo.maybe_cotrain(c, 'size=B')
  assert 'imagenet2012' not in c.datasets
  zoo.maybe_cotrain(c, 'size=B,cotrain')
  assert c.datasets.imagenet2012.kind == 'image' and c.datasets.imagenet2012.batch_size == 256


def test_synthetic_with_and_without_images():
  assert sorted(zoo.synthetic().datasets) == ['shapes_image', 'shapes_video']
  assert sorted(zoo.synthetic(images=False).datasets) == ['shapes_video']
  assert isinstance(zoo.synthetic(), ml_collections.ConfigDict)
