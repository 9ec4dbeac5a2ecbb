"""`convert` from a HF checkpoint, then `evaluate` and `predict` with the workdir alone (CLI, as a
user runs it); `convert --to=hf`; configs written into a workdir read back exactly."""
import json
import os

import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

from sparse_tubes import config as config_lib
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes import workdir as workdir_lib
from tests.pretrained import hf_helpers as H  # noqa: E402
from tests.test_main import cli  # noqa: E402

VIVIT_TINY = 'configs/synthetic/vivit_tiny.py:model=m1'


@pytest.fixture(scope='module')
def converted(tiny_data_dir, tmp_path_factory):
  """A HF ViViT (8 labels, 8x32x32 clips: the tiny moving-shapes videos) converted with the
  synthetic ViViT config supplying the dataset."""
  root = tmp_path_factory.mktemp('convert')
  model = H.hf_model('vivit', num_labels=8, frames=8, size=32, seed=2)
  model.save_pretrained(root / 'hf')
  workdir = root / 'work'
  proc = cli('convert', '--from=hf', f'--input={root / "hf"}', f'--config={VIVIT_TINY}',
             f'--config.data_dir={tiny_data_dir}',
             '--config.datasets.shapes_video.tfds_name=moving_shapes/video_tiny',
             f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "classifier -> head 'shapes_video'" in proc.stdout
  return model, root, workdir


def test_convert_writes_checkpoint_and_config(converted):
  _, _, workdir = converted
  info = json.load(open(workdir / 'converted.json'))
  assert info['from'] == 'hf' and info['head'] == 'shapes_video' and info['step'] == 0
  assert info['labels']['shapes_video'][:2] == ['class_a', 'class_b']
  assert os.path.isdir(workdir / 'checkpoints' / '0' / 'params')
  config = workdir_lib.load_workdir(str(workdir))
  # Architecture from the HF config.json (hidden 32, 2 layers), datasets from --config.
  assert config.model.hidden_size == 32 and config.model.num_layers == 2
  assert config.model.tubes == (((2, 8, 8), (2, 8, 8), (0, 0, 0)),)
  assert config.model.gelu_approximate and config.model.head == 'token'
  assert config.datasets.shapes_video.tfds_name == 'moving_shapes/video_tiny'
  assert config.total_steps == 600  # the recipe of --config


def test_evaluate_and_predict_with_workdir_alone(converted, tmp_path):
  model, _, workdir = converted
  ev = cli('evaluate', f'--workdir={workdir}')
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert 'shapes_video' in ev.stdout and '2x3' in ev.stdout
  results = json.load(open(workdir / 'eval_results.json'))
  assert results['step'] == 0 and results['datasets']['shapes_video']['num_videos'] == 16

  x = H.clips(batch=3, frames=8, size=32, seed=5)
  np.save(tmp_path / 'clips.npy', x)
  pr = cli('predict', f'--workdir={workdir}', f'--input={tmp_path / "clips.npy"}', '--top_k=3',
           f'--save_logits={tmp_path / "logits.npy"}')
  assert pr.returncode == 0, pr.stderr[-3000:]
  logits = np.load(tmp_path / 'logits.npy')
  want = H.hf_logits(model, x)
  np.testing.assert_allclose(logits, want, atol=1e-4)  # default matmul precision on CPU
  top = H.CLASSES and [f'class_{chr(97 + i)}' for i in np.argsort(-want[0])[:3]]
  assert 'clip 0:' in pr.stdout and f'1. {top[0]}' in pr.stdout and top[2] in pr.stdout


def test_export_to_hf_from_workdir(converted, tmp_path):
  from transformers import VivitForVideoClassification
  model, root, workdir = converted
  proc = cli('convert', '--to=hf', f'--workdir={workdir}', f'--output={tmp_path / "hf"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  back = VivitForVideoClassification.from_pretrained(str(tmp_path / 'hf')).eval()
  x = H.clips(batch=1, frames=8, size=32)
  np.testing.assert_allclose(H.hf_logits(back, x), H.hf_logits(model, x), atol=1e-6)
  assert back.config.id2label[1] == 'class_b'


def test_convert_without_config_names_the_dataset_by_classes(tmp_path):
  from sparse_tubes.commands import convert
  model = H.hf_model('timesformer', 'joint_space_time', num_labels=174)
  model.save_pretrained(tmp_path / 'hf')
  info = convert.convert('hf', str(tmp_path / 'hf'), str(tmp_path / 'work'))
  assert info['head'] == 'ssv2' and info['num_classes'] == {'ssv2': 174}
  config = workdir_lib.load_workdir(str(tmp_path / 'work'))
  ds = config.datasets.ssv2
  assert (ds.num_frames, ds.crop_size, ds.sampling, ds.flip) == (H.T, H.SIZE, 'segment', False)
  assert config.model.attention == 'joint' and config.model.input_shape == (H.T, H.SIZE, H.SIZE, 3)
  with pytest.raises(FileExistsError, match='new --workdir'):
    convert.convert('hf', str(tmp_path / 'hf'), str(tmp_path / 'work'))


@pytest.mark.parametrize('path', ['configs/synthetic/tubevit_tiny.py',
                                  'configs/kinetics400/timesformer_divst.py',
                                  'configs/kinetics400/vivit_b16x2_fe.py'])
def test_workdir_config_round_trips(tmp_path, path):
  """config.json (as train and convert write it) reads back with tuples and None intact."""
  config = config_lib.load(path)
  workdir_lib.save_workdir(config, str(tmp_path), command='train')
  back = workdir_lib.load_workdir(str(tmp_path))
  assert back.to_dict() == config.to_dict()
  assert isinstance(back.model.tubes[0][0], tuple) and isinstance(back.sharding_rules, tuple)
  workdir_lib.save_workdir(config, str(tmp_path / 'w'))
  snap = config_lib.load(str(tmp_path / 'w' / 'config.py'), total_steps=7)
  assert snap.total_steps == 7 and snap.model.to_dict() == config.model.to_dict()


def test_train_on_a_converted_workdir_starts_from_it(tmp_path):
  """`train --workdir=DIR` on a convert workdir: nothing to resume, so it trains from the converted
  checkpoint (init_from, heads kept) into DIR/finetune."""
  from sparse_tubes.commands import convert
  model = H.hf_model('vivit', num_labels=3)
  model.save_pretrained(tmp_path / 'hf')
  convert.convert('hf', str(tmp_path / 'hf'), str(tmp_path / 'w'))
  config = workdir_lib.load_workdir(str(tmp_path / 'w'))
  cfg, target = workdir_lib.train_target(config, str(tmp_path / 'w'))
  assert target == str(tmp_path / 'w' / 'finetune')
  assert (cfg.init_from.kind, cfg.init_from.path, cfg.init_from.step, cfg.init_from.keep_heads) == (
      'checkpoint', str(tmp_path / 'w'), 0, True)
  assert workdir_lib.train_target(config, str(tmp_path / 'other')) == (config, str(tmp_path / 'other'))


def test_convert_vit_npz_inflates_into_the_config_model(tmp_path):
  """--from=vit_npz: the image ViT is inflated (pretrained/inflate.py) into --config's model."""
  from sparse_tubes.commands import convert
  from sparse_tubes.pretrained import vit
  from tests.pretrained import vit_helpers as V
  image = V.build(V.image_model_cfg())
  image_params = V.perturbed(V.params_of(image))
  npz = vit.save_npz(vit.from_model_params(image_params), str(tmp_path / 'vit.npz'),
                     num_heads=V.HEADS)
  config = config_lib.load(VIVIT_TINY)
  config.unlock()
  config.model.update(hidden_size=V.D, num_layers=V.LAYERS, num_heads=V.HEADS, mlp_dim=V.MLP)
  info = convert.convert('vit_npz', npz, str(tmp_path / 'w'), config)
  assert info['from'] == 'vit_npz' and info['num_classes'] == {'shapes_video': 8}
  back = workdir_lib.load_workdir(str(tmp_path / 'w'))
  assert back.init_from.kind == '' and back.model.hidden_size == V.D
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / 'w'), read_only=True)
  import orbax.checkpoint as ocp
  restored = ckpt.manager.restore(0, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
  ckpt.close()
  got = restored['params']['encoder']['blocks']['0']['attention']['query']
  np.testing.assert_allclose(got, image_params['encoder']['blocks'][0]['attention']['query'],
                             rtol=1e-6)


def test_preprocessing_of_each_source(tmp_path):
  """Each source's normalization: TimeSformer Kinetics mean/std (or its preprocessor_config.json),
  ViViT and big_vision ViTs [-1, 1]."""
  from sparse_tubes.pretrained import hf
  assert hf.preprocessing('timesformer', 'x.pyth') == {'normalization': 'kinetics'}
  assert hf.preprocessing('vivit', str(tmp_path)) == {'normalization': 'minus_one_to_one'}
  (tmp_path / 'preprocessor_config.json').write_text(json.dumps(
      {'image_mean': [0.45, 0.45, 0.45], 'image_std': [0.225, 0.225, 0.225]}))
  assert hf.preprocessing('timesformer', str(tmp_path)) == {'normalization': 'kinetics'}
  (tmp_path / 'preprocessor_config.json').write_text(json.dumps(
      {'image_mean': [0.4, 0.5, 0.6], 'image_std': [0.2, 0.25, 0.3]}))
  assert hf.preprocessing('timesformer', str(tmp_path)) == {
      'normalization': 'custom', 'norm_mean': (0.4, 0.5, 0.6), 'norm_std': (0.2, 0.25, 0.3)}


def test_custom_normalization():
  from sparse_tubes import defaults
  from sparse_tubes.data import pipeline, transforms
  ds = defaults.dataset(tfds_name='x', normalization='custom', norm_mean=(0.4, 0.5, 0.6),
                        norm_std=(0.2, 0.25, 0.3))
  pipeline.validate(ds)
  x = np.full((2, 3, 3), 255, np.uint8)
  out = transforms.normalize(x, pipeline.normalization(ds))
  np.testing.assert_allclose(out[0, 0], [(1 - 0.4) / 0.2, (1 - 0.5) / 0.25, (1 - 0.6) / 0.3],
                             rtol=1e-5)
  ds.norm_std = ()
  with pytest.raises(ValueError, match='norm_mean and norm_std'):
    pipeline.validate(ds)


# ---------------------------------------------------------------------------------- --to=onnx

ONNX_CONFIGS = ['configs/synthetic/tubevit_tiny.py', 'configs/synthetic/vivit_tiny.py',
                'configs/synthetic/timesformer_tiny.py']


def _random_workdir(spec: str, data_dir: str, workdir: str):
  """A tiny model of `spec` on the tiny built-in data, every parameter (heads and zero-initialised
  branches too) drawn at random, saved as a model-only checkpoint."""
  import jax
  from flax import nnx
  from sparse_tubes.data import sources
  from sparse_tubes.models import video_vit
  config = config_lib.load(spec)
  config.data_dir = data_dir
  config.model.update(hidden_size=24, num_layers=2, num_heads=2, mlp_dim=48)
  for ds in config.datasets.values():
    ds.tfds_name += '_tiny'
  model = video_vit.build_model(config.model, sources.num_classes(config), rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(0)
  params = jax.tree.unflatten(tree, [np.asarray(p) + rng.normal(0, 0.1, p.shape).astype(np.float32)
                                     for p in leaves])
  ckpt_lib.write_params(workdir, params)
  workdir_lib.save_workdir(config, workdir, command='train')
  return config


@pytest.mark.parametrize('spec', ONNX_CONFIGS)
def test_export_to_onnx_matches_our_logits(spec, tiny_data_dir, tmp_path):
  pytest.importorskip('jax2onnx')
  ort = pytest.importorskip('onnxruntime')
  from sparse_tubes import inference
  from sparse_tubes.commands import convert
  workdir = str(tmp_path / 'work')
  config = _random_workdir(spec, tiny_data_dir, workdir)
  result = convert.export_to_onnx(config, workdir, str(tmp_path / 'model.onnx'))
  assert result['dataset'] == 'shapes_video' and result['classes'] == 8
  assert result['opset'] == 21 and result['max_abs_diff'] <= 1e-4
  # Another batch size than the export's own check: the batch dimension is dynamic.
  x = np.random.default_rng(1).normal(0, 0.5, (3, 8, 32, 32, 3)).astype(np.float32)
  session = ort.InferenceSession(str(tmp_path / 'model.onnx'), providers=['CPUExecutionProvider'])
  assert [i.name for i in session.get_inputs()] == ['video']
  logits, feats = session.run(['logits', 'features'], {'video': x})
  model = inference.Model(config, workdir)
  np.testing.assert_allclose(logits, model.logits(x), atol=1e-4, rtol=0)
  np.testing.assert_allclose(feats, model.features(x), atol=1e-4, rtol=0)
  assert np.abs(logits).max() > 0.1  # not a degenerate all-zero model


def test_export_to_onnx_refuses_interpolated_tubes(tmp_path):
  proc = cli('convert', '--to=onnx', '--config=configs/synthetic/tubevit_tiny.py',
             "--config.model.tube_variant=interpolated", f'--workdir={tmp_path / "none"}',
             f'--output={tmp_path / "m.onnx"}')
  assert proc.returncode != 0
  assert "tube_variant='interpolated' does not export to ONNX" in proc.stderr
  assert not os.path.exists(tmp_path / 'm.onnx')
