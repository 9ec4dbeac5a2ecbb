"""`python -m sparse_tubes convert`: published checkpoints -> a workdir that `train` (as
`config.init_from=dict(kind='checkpoint', path=DIR)`), `evaluate` and `predict` use; and back.

  convert --from=hf          --input=HF_DIR  [--config=CONFIG.py] --workdir=DIR
  convert --from=timesformer --input=X.pyth  [--config=CONFIG.py] --workdir=DIR
  convert --from=vit_npz     --input=X.npz    --config=CONFIG.py  --workdir=DIR
  convert --to=hf --workdir=DIR --output=HF_DIR [--dataset=NAME] [--step=N]

The workdir gets a model-only checkpoint at step 0 (`Checkpointer.save_params`), config.json (+ a
config.py that loads it) and converted.json (source, which dataset's head holds the checkpoint's
classifier, its class names). For HF and the official TimeSformer files the architecture comes
from the checkpoint whatever its sizes; `--config` then only supplies the datasets and the recipe
(its run-time model keys dtype, remat, scan_layers, attention_impl, dropout and stochastic_depth
are kept). Without `--config`, one video dataset is set up at the checkpoint's clip size, named
after the class count (400: kinetics400, 600: kinetics600, 700: kinetics700, 174: ssv2, else
'video').
"""
import json
import os

import jax
import ml_collections
import numpy as np

from sparse_tubes import config as config_lib
from sparse_tubes import defaults, zoo
from sparse_tubes.pretrained import hf

SOURCES = ('hf', 'timesformer', 'vit_npz')
RUNTIME_KEYS = ('dtype', 'remat', 'scan_layers', 'attention_impl', 'dropout', 'stochastic_depth')
DATASET_BY_CLASSES = {400: 'kinetics400', 600: 'kinetics600', 700: 'kinetics700', 174: 'ssv2'}
CONVERTED = 'converted.json'


def load_source(source: str, path: str, *, num_heads: int | None = None,
                num_frames: int | None = None) -> hf.Imported:
  if source == 'hf':
    return hf.load(path)
  if source == 'timesformer':
    from sparse_tubes.pretrained import timesformer_official
    return timesformer_official.load(path, num_heads=num_heads, num_frames=num_frames)
  raise ValueError(f'--from={source!r}: use one of {SOURCES}.')


def _default_dataset(imported: hf.Imported) -> tuple[str, ml_collections.ConfigDict]:
  n = 0 if imported.head is None else int(imported.head[1].shape[0])
  tfds_name = DATASET_BY_CLASSES.get(n, 'video')
  t, (h, _) = imported.num_frames, imported.image_size
  if imported.model['name'] == 'timesformer':  # 1x3 views, frames 1 in 32 (TimeSformer §4)
    ds = zoo.video_dataset(tfds_name, num_frames=t, frame_stride=32 if t <= 8 else 4,
                           crop_size=h, min_resize=h, batch_size=8, views=(1, 3),
                           normalization='imagenet')
  else:  # ViViT: stride 2, 4x3 views
    ds = zoo.video_dataset(tfds_name, num_frames=t, frame_stride=2, crop_size=h, batch_size=8,
                           views=(4, 3))
  if tfds_name == 'ssv2':
    ds.update(sampling='segment', flip=False, frame_stride=1)
  return tfds_name.replace('/', '_'), ds


def num_classes_of(config, name: str) -> int:
  """Classes of config.datasets[name] without reading the data when the name is known."""
  ds = config.datasets[name]
  if ds.tfds_name in zoo.NUM_CLASSES:
    return zoo.NUM_CLASSES[ds.tfds_name]
  from sparse_tubes.data import pipeline
  return pipeline.dataset_info(ds, config_lib_data_dir(config)).num_classes


def config_lib_data_dir(config) -> str:
  from sparse_tubes.data import builtin
  return builtin.resolve_data_dir(config.data_dir)


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
    num_classes = {name: num_classes_of(c, name) for name in c.datasets}
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
  matches = [k for k in sorted(num_classes) if num_classes[k] == n and c.datasets[k].kind == 'video']
  head = matches[0] if matches else ''
  return c, num_classes, head


def _mesh_and_spec(config, num_classes):
  from sparse_tubes.train import sharding, state as state_lib
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_tuple(config.sharding_rules)
  return mesh, rules, state_lib.model_spec(config.model, num_classes, mesh, rules)


def write_checkpoint(workdir: str, params, *, step: int = 0) -> str:
  from sparse_tubes.train import checkpoint
  ckpt = checkpoint.Checkpointer(workdir, use_async=False)
  if ckpt.latest_step() is not None:
    ckpt.close()
    raise FileExistsError(f'{ckpt.directory} already holds checkpoints: convert into a new '
                          '--workdir.')
  ckpt.save_params(step, params)
  ckpt.close()
  return ckpt.directory


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
    config_lib.validate(cfg)
  mesh, rules, spec = _mesh_and_spec(cfg, num_classes)
  from sparse_tubes.train import state as state_lib
  flat = dict(imported.params)
  for name, n in num_classes.items():
    d = int(cfg.model.hidden_size)
    if name == head:
      flat[f'heads/{name}/kernel'], flat[f'heads/{name}/bias'] = imported.head
    else:  # heads start at zero (big_vision's head_zeroinit), as a fresh model's
      flat[f'heads/{name}/kernel'] = np.zeros((d, n), np.float32)
      flat[f'heads/{name}/bias'] = np.zeros((n,), np.float32)
  params = hf.unflatten_like(spec.abstract_params, flat)
  params = jax.device_put(params, spec.param_shardings)
  directory = write_checkpoint(workdir, params)
  config_lib.save_workdir(cfg, workdir, command='convert')
  info = {'from': source, 'input': os.path.abspath(input_path), 'step': 0,
          'checkpoint_dir': directory, 'model': cfg.model.name,
          'attention': cfg.model.attention, 'head': head,
          'num_classes': num_classes, 'labels': {head: list(imported.labels)}
          if head and imported.labels else {}, 'ignored_keys': imported.ignored,
          'params': int(state_lib.param_count(spec.abstract_params))}
  if imported.head is not None and not head:
    info['dropped_head'] = (f'the checkpoint classifies {imported.head[1].shape[0]} classes; no '
                            f'video dataset of the config has that many: its heads start at zero')
  with open(os.path.join(workdir, CONVERTED), 'w') as f:
    json.dump(info, f, indent=2)
  return info


def _convert_vit(input_path, workdir, config):
  """Image-ViT .npz: the image-ViT loader and inflation of `config.init_from` (pretrained/init.py,
  vit.py, inflate.py) into the model of --config (required: the video model to inflate into)."""
  if config is None:
    raise ValueError('--from=vit_npz needs --config: the video model the image ViT is inflated into.')
  from sparse_tubes.pretrained import init as init_lib
  from sparse_tubes.train import state as state_lib
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.init_from.update(kind='vit_npz', path=os.path.abspath(input_path))
  config_lib.validate(cfg)
  init_lib.validate(cfg)
  num_classes = {name: num_classes_of(cfg, name) for name in cfg.datasets}
  mesh, rules, spec = _mesh_and_spec(cfg, num_classes)
  import optax
  params = state_lib.init_state(cfg.model, num_classes, spec, optax.identity(), mesh,
                                cfg.seed)['params']
  params, report = init_lib.apply(cfg, params, spec.param_shardings)
  directory = write_checkpoint(workdir, params)
  cfg.init_from.update(kind='', path='')  # the checkpoint holds the inflated weights
  config_lib.save_workdir(cfg, workdir, command='convert')
  info = {'from': 'vit_npz', 'input': os.path.abspath(input_path), 'step': 0,
          'checkpoint_dir': directory, 'model': cfg.model.name, 'head': '',
          'num_classes': num_classes, 'labels': {}, 'report': report,
          'params': int(state_lib.param_count(spec.abstract_params))}
  with open(os.path.join(workdir, CONVERTED), 'w') as f:
    json.dump(info, f, indent=2)
  return info


def train_target(config, workdir: str):
  """(config, workdir) for `train --workdir=DIR` on a workdir `convert` wrote: its checkpoint
  holds parameters only (nothing to resume), so training starts from it
  (config.init_from = that checkpoint, heads kept) in DIR/finetune. Other workdirs: unchanged."""
  path = os.path.join(workdir, CONVERTED)
  if not os.path.exists(path):
    return config, workdir
  with open(path) as f:
    info = json.load(f)
  from sparse_tubes.train import checkpoint
  step_dir = os.path.join(checkpoint.checkpoint_dir(workdir), str(info.get('step', 0)))
  if os.path.exists(os.path.join(step_dir, 'train_state')):
    return config, workdir
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.init_from.update(kind='checkpoint', path=os.path.abspath(workdir),
                       step=int(info.get('step', 0)), keep_heads=True)
  cfg.lock()
  return cfg, os.path.join(workdir, 'finetune')


# ------------------------------------------------------------------------------ checkpoints

def checkpoint_heads(workdir: str, step: int) -> dict:
  """{dataset: num_classes} of a checkpoint's heads, read from its metadata (no data needed)."""
  import orbax.checkpoint as ocp
  from sparse_tubes.train import checkpoint
  path = os.path.join(checkpoint.checkpoint_dir(workdir), str(step), 'params')
  tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  return {name: int(h['bias'].shape[0]) for name, h in tree['heads'].items()}


def restore(config, workdir: str, step: int | None = None):
  """(params, spec, num_classes, step) of the latest (or given) checkpoint of `workdir`."""
  from sparse_tubes.train import checkpoint, state as state_lib
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    ckpt.close()
    raise FileNotFoundError(f'No checkpoint in {ckpt.directory}: train or convert first.')
  num_classes = checkpoint_heads(workdir, step)
  mesh, rules, spec = _mesh_and_spec(config, num_classes)
  params = ckpt.restore_params(step, state_lib.abstract_params(spec))
  ckpt.close()
  return params, spec, num_classes, step


def class_names(config, workdir: str, dataset: str, n: int) -> list[str]:
  """Class names of a head: converted.json (the HF id2label), else the dataset's TFDS info when it
  is there, else 'class_<i>'."""
  path = os.path.join(workdir, CONVERTED)
  if os.path.exists(path):
    with open(path) as f:
      labels = json.load(f).get('labels', {}).get(dataset)
    if labels and len(labels) == n:
      return list(labels)
  if dataset in config.datasets:
    try:
      from sparse_tubes.data import pipeline
      names = pipeline.dataset_info(config.datasets[dataset], config_lib_data_dir(config)).class_names
      if len(names) == n:
        return list(names)
    except Exception:  # noqa: BLE001  data not prepared here: fall back to indices
      pass
  return [f'class_{i}' for i in range(n)]


def export_hf(config, workdir: str, output: str, *, dataset: str | None = None,
              step: int | None = None, layout: str = 'v5') -> dict:
  """A checkpoint of `workdir` -> HF config.json + model.safetensors in `output` (TimeSformer
  divided/joint/space-only, ViViT Model 1)."""
  params, spec, num_classes, step = restore(config, workdir, step)
  dataset = dataset or _default_head(config, num_classes)
  if dataset not in num_classes:
    raise ValueError(f'--dataset={dataset!r}: the checkpoint has heads {sorted(num_classes)}.')
  flat = {k: np.asarray(v) for k, v in hf.flatten(jax.device_get(params)).items()}
  if config.model.scan_layers:
    flat = hf.unstack_scanned(flat, int(config.model.num_layers))
  head = (flat.pop(f'heads/{dataset}/kernel'), flat.pop(f'heads/{dataset}/bias'))
  flat = {k: v for k, v in flat.items() if not k.startswith('heads/')}
  model = config.model.to_dict()
  if model['name'] == 'timesformer' and model['attention'] == 'space' and \
      model['space_cls_average'] != 'after_norm':
    print('note: HF space-only TimeSformer returns per-frame logits (LayerNorm per frame); this '
          'model averages class tokens before the LayerNorm, so the mean of HF logits differs '
          'slightly from ours.', flush=True)
  labels = class_names(config, workdir, dataset, head[1].shape[0])
  hf.export(flat, model, output, head=head, labels=labels, layout=layout)
  return {'output': os.path.abspath(output), 'step': step, 'dataset': dataset,
          'num_labels': int(head[1].shape[0])}


def _default_head(config, num_classes: dict) -> str:
  names = list(config.eval_datasets) or sorted(config.datasets)
  video = [n for n in names if n in num_classes and config.datasets[n].kind == 'video']
  if video:
    return video[0]
  return sorted(num_classes)[0]
