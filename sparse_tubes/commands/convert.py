"""`python -m sparse_tubes convert`: published checkpoints -> a workdir that `train` (as
`config.init_from=dict(kind='checkpoint', path=DIR)`), `evaluate` and `predict` use; and back.

  convert --from=hf          --input=HF_DIR  [--config=CONFIG.py] --workdir=DIR
  convert --from=timesformer --input=X.pyth  [--config=CONFIG.py] --workdir=DIR
  convert --from=vit_npz     --input=X.npz    --config=CONFIG.py  --workdir=DIR
  convert --to=hf --workdir=DIR --output=HF_DIR [--dataset=NAME] [--step=N]
  convert --to=onnx --workdir=DIR --output=model.onnx [--dataset=NAME] [--step=N]

The workdir gets a model-only checkpoint at step 0 (`ckpt_lib.write_params`), config.json (+ a
config.py that loads it) and converted.json (source, which dataset's head holds the checkpoint's
classifier, its class names). For HF and the official TimeSformer files the architecture comes
from the checkpoint whatever its sizes; `--config` then only supplies the datasets and the recipe
(its run-time model keys dtype, remat, scan_layers, attention_impl, dropout and stochastic_depth
are kept). Without `--config`, one video dataset is set up at the checkpoint's clip size, named
after the class count (400: kinetics400, 600: kinetics600, 700: kinetics700, 174: ssv2, else
'video').

Every dataset of the config written gets the normalization the checkpoint was trained with
(`hf.PREPROCESSING`: Kinetics mean/std for TimeSformer, [-1, 1] for ViViT and big_vision ViTs;
a HF TimeSformer's preprocessor_config.json when present), so that `evaluate`, `predict` and
fine-tuning feed what it expects.
"""
import os

import jax
import ml_collections
import numpy as np
import optax

from sparse_tubes import config as config_lib
from sparse_tubes import export_onnx
from sparse_tubes import validation
from sparse_tubes import checkpoints as ckpt_lib
from sparse_tubes.train import sharding
from sparse_tubes.data import sources
from sparse_tubes import workdir as workdir_lib
from sparse_tubes import defaults, zoo
from sparse_tubes.pretrained import hf, timesformer_official, weights
from sparse_tubes.pretrained import init as init_lib
from sparse_tubes.train import state as state_lib

SOURCES = ('hf', 'timesformer', 'vit_npz')
RUNTIME_KEYS = ('dtype', 'remat', 'scan_layers', 'attention_impl', 'dropout', 'stochastic_depth')
DATASET_BY_CLASSES = {400: 'kinetics400', 600: 'kinetics600', 700: 'kinetics700', 174: 'ssv2'}


def load_source(source: str, path: str, *, num_heads: int | None = None,
                num_frames: int | None = None) -> hf.Imported:
  if source == 'hf':
    return hf.load(path)
  if source == 'timesformer':
    return timesformer_official.load(path, num_heads=num_heads, num_frames=num_frames)
  raise ValueError(f'--from={source!r}: use one of {SOURCES}.')


def _default_dataset(imported: hf.Imported) -> tuple[str, ml_collections.ConfigDict]:
  n = 0 if imported.head is None else int(imported.head[1].shape[0])
  tfds_name = DATASET_BY_CLASSES.get(n, 'video')
  t, (h, _) = imported.num_frames, imported.image_size
  if imported.model['name'] == 'timesformer':  # 1x3 views, frames 1 in 32 (TimeSformer §4)
    ds = zoo.video_dataset(tfds_name, num_frames=t, frame_stride=32 if t <= 8 else 4,
                           crop_size=h, min_resize=h, batch_size=8, views=(1, 3))
  else:  # ViViT: stride 2, 4x3 views
    ds = zoo.video_dataset(tfds_name, num_frames=t, frame_stride=2, crop_size=h, batch_size=8,
                           views=(4, 3))
  if tfds_name == 'ssv2':
    ds.update(sampling='segment', flip=False, frame_stride=1)
  return tfds_name.replace('/', '_'), ds


def build_config(imported: hf.Imported, base=None) -> tuple[ml_collections.ConfigDict, dict, str]:
  """(config, {dataset: num_classes}, the dataset whose head takes the checkpoint's classifier or
  '' when none fits)."""
  n = None if imported.head is None else int(imported.head[1].shape[0])
  if base is None:
    c = defaults.base()
    name, ds = _default_dataset(imported)
    c.datasets[name] = ds
    num_classes = {name: n or 1}
  else:
    c = ml_collections.ConfigDict(base.to_dict())
    num_classes = sources.num_classes(c)
  runtime = {k: base.model[k] for k in RUNTIME_KEYS if base is not None and k in base.model}
  model = {'dtype': 'float32', 'remat': False, **imported.model, **runtime}
  if imported.model['name'] == 'timesformer' and any(
      ds.kind == 'image' for ds in c.datasets.values()):
    model['image_tube'] = 0  # images through the 2D-patch tube
  c.model = ml_collections.ConfigDict(model)
  t, h, w, _ = imported.model['input_shape']
  for name, ds in c.datasets.items():
    big = ds.crop_size > min(h, w) or (ds.kind == 'video' and ds.num_frames > t)
    if big:
      raise ValueError(
          f'config.datasets.{name} feeds {ds.num_frames}x{ds.crop_size}x{ds.crop_size} clips but '
          f'the checkpoint was trained at {t}x{h}x{w} (its learned position tables): set '
          f'num_frames <= {t} and crop_size <= {min(h, w)}, or use config.init_from, which resizes '
          'them.')
  set_preprocessing(c, imported.preprocessing)
  matches = [k for k in sorted(num_classes) if num_classes[k] == n and c.datasets[k].kind == 'video']
  head = matches[0] if matches else ''
  return c, num_classes, head


def set_preprocessing(config, keys: dict) -> None:
  """Every dataset of `config` feeds the checkpoint the normalization it was trained with
  (`keys`: normalization, and norm_mean/norm_std for 'custom'); a change is printed."""
  keys = {'norm_mean': (), 'norm_std': (), **keys}
  for name, ds in config.datasets.items():
    if ds.normalization != keys['normalization'] or (
        keys['normalization'] == 'custom' and (tuple(ds.norm_mean), tuple(ds.norm_std)) !=
        (keys['norm_mean'], keys['norm_std'])):
      print(f"config.datasets.{name}.normalization: {ds.normalization!r} -> "
            f"{keys['normalization']!r}, what the checkpoint was trained with"
            + (f" (mean {keys['norm_mean']}, std {keys['norm_std']})"
               if keys['normalization'] == 'custom' else ''), flush=True)
    ds.update(keys)


def _mesh_and_spec(config, num_classes):
  mesh, rules = sharding.mesh_and_rules(config)
  return mesh, rules, state_lib.model_spec(config.model, num_classes, mesh, rules)


def convert(source: str, input_path: str, workdir: str, config=None, *,
            num_heads: int | None = None) -> dict:
  """Converts `input_path` into a checkpoint + config in `workdir`; returns what converted.json
  holds."""
  if source == 'vit_npz':
    return _convert_vit(input_path, workdir, config)
  num_frames = None
  if config is not None and config.datasets:
    num_frames = max(ds.num_frames for ds in config.datasets.values() if ds.kind == 'video')
  imported = load_source(source, input_path, num_heads=num_heads, num_frames=num_frames)
  cfg, num_classes, head = build_config(imported, config)
  if config is not None:
    validation.validate(cfg)
  mesh, rules, spec = _mesh_and_spec(cfg, num_classes)
  flat = dict(imported.params)
  for name, n in num_classes.items():
    d = int(cfg.model.hidden_size)
    if name == head:
      flat[f'heads/{name}/kernel'], flat[f'heads/{name}/bias'] = imported.head
    else:  # heads start at zero (big_vision's head_zeroinit), as a fresh model's
      flat[f'heads/{name}/kernel'] = np.zeros((d, n), np.float32)
      flat[f'heads/{name}/bias'] = np.zeros((n,), np.float32)
  params = weights.unflatten_like(spec.abstract_params, flat)
  params = jax.device_put(params, spec.param_shardings)
  directory = ckpt_lib.write_params(workdir, params)
  workdir_lib.save_workdir(cfg, workdir, command='convert')
  info = {'from': source, 'input': os.path.abspath(input_path), 'step': 0,
          'checkpoint_dir': directory, 'model': cfg.model.name,
          'attention': cfg.model.attention, 'head': head,
          'num_classes': num_classes, 'labels': {head: list(imported.labels)}
          if head and imported.labels else {}, 'ignored_keys': imported.ignored,
          'params': int(state_lib.param_count(spec.abstract_params)),
          'preprocessing': imported.preprocessing}
  if imported.head is not None and not head:
    info['dropped_head'] = (f'the checkpoint classifies {imported.head[1].shape[0]} classes; no '
                            f'video dataset of the config has that many: its heads start at zero')
  workdir_lib.write_converted(workdir, info)
  return info


def _convert_vit(input_path, workdir, config):
  """Image-ViT .npz: the image-ViT loader and inflation of `config.init_from` (pretrained/init.py,
  vit.py, inflate.py) into the model of --config (required: the video model to inflate into)."""
  if config is None:
    raise ValueError('--from=vit_npz needs --config: the video model the image ViT is inflated into.')
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.init_from.update(kind='vit_npz', path=os.path.abspath(input_path))
  set_preprocessing(cfg, hf.PREPROCESSING['vit_npz'])
  validation.validate(cfg)
  init_lib.validate(cfg)
  num_classes = sources.num_classes(cfg)
  mesh, rules, spec = _mesh_and_spec(cfg, num_classes)
  params = state_lib.init_state(cfg.model, num_classes, spec, optax.identity(), mesh,
                                cfg.seed)['params']
  params, report = init_lib.apply(cfg, params, spec.param_shardings)
  directory = ckpt_lib.write_params(workdir, params)
  cfg.init_from.update(kind='', path='')  # the checkpoint holds the inflated weights
  workdir_lib.save_workdir(cfg, workdir, command='convert')
  info = {'from': 'vit_npz', 'input': os.path.abspath(input_path), 'step': 0,
          'checkpoint_dir': directory, 'model': cfg.model.name, 'head': '',
          'num_classes': num_classes, 'labels': {}, 'report': report,
          'params': int(state_lib.param_count(spec.abstract_params)),
          'preprocessing': hf.PREPROCESSING['vit_npz']}
  workdir_lib.write_converted(workdir, info)
  return info


def export_hf(config, workdir: str, output: str, *, dataset: str | None = None,
              step: int | None = None, layout: str = 'v5') -> dict:
  """A checkpoint of `workdir` -> HF config.json + model.safetensors in `output` (TimeSformer
  divided/joint/space-only, ViViT Model 1)."""
  restored = ckpt_lib.restore_params(config, workdir, step)
  params, num_classes, step = restored.params, restored.num_classes, restored.step
  dataset = workdir_lib.choose_head(config, num_classes, dataset)
  flat = {k: np.asarray(v) for k, v in weights.flatten(jax.device_get(params)).items()}
  if config.model.scan_layers:
    flat = weights.unstack_scanned(flat, int(config.model.num_layers))
  head = (flat.pop(f'heads/{dataset}/kernel'), flat.pop(f'heads/{dataset}/bias'))
  flat = {k: v for k, v in flat.items() if not k.startswith('heads/')}
  model = config.model.to_dict()
  if model['name'] == 'timesformer' and model['attention'] == 'space' and \
      model['space_cls_average'] != 'after_norm':
    print('note: HF space-only TimeSformer returns per-frame logits (LayerNorm per frame); this '
          'model averages class tokens before the LayerNorm, so the mean of HF logits differs '
          'slightly from ours.', flush=True)
  labels = workdir_lib.class_names(config, workdir, dataset, head[1].shape[0])
  hf.export(flat, model, output, head=head, labels=labels, layout=layout)
  return {'output': os.path.abspath(output), 'step': step, 'dataset': dataset,
          'num_labels': int(head[1].shape[0])}


def export_to_onnx(config, workdir: str, output: str, *, dataset: str | None = None,
                   step: int | None = None) -> dict:
  """A checkpoint of `workdir` -> an ONNX model of one head (export_onnx.py), its input the clips
  of that head's dataset; written only once onnxruntime's logits match ours."""
  export_onnx.check(config.model)  # a model that cannot export: one line, before any restore
  restored = ckpt_lib.restore_params(config, workdir, step)
  dataset = workdir_lib.choose_head(config, restored.num_classes, dataset)
  if dataset not in config.datasets:
    raise ValueError(f'head {dataset!r} has no dataset in the config to take the clip shape from.')
  shape = tuple(config_lib.input_shape(config.datasets[dataset]))
  result = export_onnx.export(config.model, restored.params, restored.num_classes, dataset, shape,
                              output)
  return {**result, 'step': restored.step, 'dataset': dataset}


def main(flags, args):
  from sparse_tubes.commands import config_and_workdir, need
  if flags['to'].value is None:
    result = convert(need(flags['from'].value, 'from', 'hf'),
                     need(flags.input, 'input', '/models/timesformer-base'),
                     need(flags.workdir, 'workdir', '/tmp/converted'), flags.config,
                     num_heads=flags.num_heads)
    print(f"Converted {result['input']} ({result['from']}, {result['model']}, "
          f"{result.get('params', 0):,} parameters) into {result['checkpoint_dir']}"
          + (f"; classifier -> head '{result['head']}'" if result.get('head') else '')
          + (f"; {result['dropped_head']}" if result.get('dropped_head') else ''), flush=True)
    return
  config, workdir = config_and_workdir(flags)
  if flags['to'].value == 'onnx':
    try:
      result = export_to_onnx(config, workdir, need(flags.output, 'output', '/tmp/model.onnx'),
                              dataset=flags.dataset, step=flags.step)
    except (ValueError, ImportError, ckpt_lib.CheckpointError) as e:
      raise SystemExit(f'Error: {e}') from None
    print(f"Exported step {result['step']} (head '{result['dataset']}', {result['classes']} "
          f"classes) to {result['output']}: ONNX opset {result['opset']}, input 'video' "
          f"{result['input_shape']}, outputs 'logits' and 'features'; onnxruntime's logits within "
          f"{result['max_abs_diff']:.1e} of ours", flush=True)
    return
  result = export_hf(config, workdir, need(flags.output, 'output', '/tmp/hf_model'),
                     dataset=flags.dataset, step=flags.step)
  print(f"Exported step {result['step']} (head '{result['dataset']}', {result['num_labels']} "
        f"labels) to {result['output']}", flush=True)
