"""Building blocks of the paper configs under configs/{kinetics400,kinetics600,kinetics700,ssv2}/.

Config files stay a few lines long (big_vision's habit): they pick a backbone size, a dataset with the
paper's clip settings and the paper's recipe from here, and change what they need. Every figure
below names the paper table or section it comes from.

  TubeViT      Piergiovanni, Kuo, Angelova, CVPR 2023 (arXiv 2212.03229)
  ViViT        Arnab et al., ICCV 2021 (arXiv 2103.15691)
  TimeSformer  Bertasius, Wang, Torresani, ICML 2021 (arXiv 2102.05095)
"""
import math

import ml_collections

from sparse_tubes import defaults
from sparse_tubes import chips

# ViT backbones (ViT paper Table 1; TubeViT Table 11; ViViT §4.1: B 12x768x12, L 24x1024x16,
# H 32x1280x16).
VIT = {
    'Ti': dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
    'S': dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
    'B': dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    'L': dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    'H': dict(hidden_size=1280, num_layers=32, num_heads=16, mlp_dim=5120),
}

# Classes per dataset name (`tfds_name`), so that `info` can size the heads without the data.
# Names of the TFDS builders of `python -m sparse_tubes prepare` and of TFDS itself.
NUM_CLASSES = {
    'kinetics400': 400,
    'kinetics600': 600,
    'kinetics700': 700,
    'ssv2': 174,
    'imagenet2012': 1000,
    'moving_shapes/video': 8,
    'moving_shapes/video_tiny': 8,
    'moving_shapes/image': 3,
    'moving_shapes/image_tiny': 3,
}

# Training-split sizes used to turn the papers' epochs into steps. Kinetics shrinks as YouTube
# videos disappear; these are the usual CVDF-mirror figures, close enough for a schedule.
TRAIN_EXAMPLES = {
    'kinetics400': 240_000,
    'kinetics600': 392_000,
    'kinetics700': 545_000,
    'ssv2': 168_913,
    'imagenet2012': 1_281_167,
}

# TubeViT's main tube set, (t, h, w) order (paper §4.1 and Table 12). The last is the
# 2D patch shared with images. 539 tokens on 32x224x224 (the paper says 559: see tokenizers.py).
# The Kinetics-400 configs of the three papers' main results (configs/kinetics400/<name>.py): what
# `bench zoo` runs and the plan tests compile. The other files there are attention ablations.
KINETICS400_PAPER = tuple(f'kinetics400/{n}' for n in (
    'tubevit_b', 'tubevit_l', 'tubevit_h', 'vivit_b16x2_m1', 'vivit_b16x2_fe', 'vivit_b16x2_m3',
    'vivit_b16x2_m4', 'vivit_l16x2_fe', 'timesformer_divst', 'timesformer_hr', 'timesformer_l'))
# One tiny config per family (configs/synthetic/): the same code paths on a CPU in seconds.
SYNTHETIC_TINY = ('synthetic/tubevit_tiny', 'synthetic/vivit_tiny', 'synthetic/timesformer_tiny')

TUBEVIT_TUBES = (
    ((8, 8, 8), (16, 32, 32), (0, 0, 0)),
    ((16, 4, 4), (6, 32, 32), (4, 8, 8)),
    ((4, 12, 12), (16, 32, 32), (0, 16, 16)),
    ((1, 16, 16), (32, 16, 16), (0, 0, 0)),
)


def parse_arg(arg) -> dict:
  """`--config=file.py:key=value,flag` -> {'key': 'value', 'flag': True}."""
  out = {}
  for item in (arg or '').split(','):
    if not item:
      continue
    key, sep, value = item.partition('=')
    out[key.strip()] = value.strip() if sep else True
  return out


def arg_choice(arg, key: str, allowed, default: str, config_file: str) -> str:
  """The value of `key` in a config's arg (`file.py:key=value`), checked against `allowed`."""
  value = parse_arg(arg).get(key, default)
  if value not in allowed:
    raise ValueError(f'{config_file}:{key}={value}: use one of {tuple(allowed)}.')
  return value


def epochs_to_steps(epochs: float, tfds_name: str, batch_size: int) -> int:
  return int(round(epochs * TRAIN_EXAMPLES[tfds_name] / batch_size))


def video_dataset(tfds_name: str, *, num_frames: int, frame_stride: int = 2, crop_size: int = 224,
                  min_resize: int | None = None, max_resize: int | None = None,
                  batch_size: int, views: tuple[int, int] = (4, 3),
                  eval_batch_size: int | None = None, **kw) -> ml_collections.ConfigDict:
  """A Kinetics-style video dataset at a paper's clip size.

  Short side resized to 256/224 * crop (eval; train jitters up to 320/224 * crop), random crop,
  flips; `views` = (temporal, spatial) evaluation views (ViViT/TubeViT 4x3, TimeSformer 1x3).
  SSv2 sets sampling='segment' and flip=False (flips change its labels).
  """
  t, s = views
  min_resize = min_resize or crop_size * 256 // 224
  max_resize = max_resize or max(min_resize, crop_size * 320 // 224)
  eval_batch_size = eval_batch_size or 4 * t * s  # whole videos per eval batch
  return defaults.dataset(
      tfds_name=tfds_name, kind='video', batch_size=batch_size, eval_batch_size=eval_batch_size,
      num_frames=num_frames, frame_stride=frame_stride, crop_size=crop_size,
      min_resize=min_resize, max_resize=max_resize, eval_temporal_views=t, eval_spatial_views=s,
      train_split='train', eval_split='validation', **kw)


def ssv2_dataset(**kw) -> ml_collections.ConfigDict:
  """Something-Something v2: one frame per segment, no flips (they swap 'left' and 'right')."""
  return video_dataset('ssv2', sampling='segment', flip=False, frame_stride=1, **kw)


def imagenet_dataset(*, batch_size: int, crop_size: int = 224, loss_weight: float = 1.0):
  """ImageNet-1k for image+video co-training (TubeViT §3.5, App. A): its own head, same tubes."""
  return defaults.dataset(
      tfds_name='imagenet2012', kind='image', batch_size=batch_size, eval_batch_size=batch_size,
      crop_size=crop_size, min_resize=crop_size * 256 // 224, max_resize=crop_size * 320 // 224,
      train_split='train', eval_split='validation', normalization='imagenet',
      eval_spatial_views=1, loss_weight=loss_weight)


def base(arg=None) -> ml_collections.ConfigDict:
  """The run defaults for paper-size jobs: logging and checkpoints at pod cadence."""
  c = defaults.base()
  c.log_every_steps = 100
  c.eval_every_steps = 10_000
  c.checkpoint_every_steps = 2_000
  c.keep_checkpoints = 3
  return c


def vit(model: ml_collections.ConfigDict, size: str, **kw) -> None:
  model.update(VIT[size])
  model.update(kw)


# ---------------------------------------------------------------------------------------------
# TPU slices: what each paper config is sized for. `python -m sparse_tubes plan --config=...`
# compiles the train step for config.topology and reports memory per chip and speed; the README's
# "What each paper config needs" table is its output.

def tpu(c: ml_collections.ConfigDict, topology: str, *, remat=True, microbatches: int = 1,
        fsdp: bool = False) -> None:
  """Run-time settings for a TPU slice. They change memory and speed, not the recipe: bfloat16
  activations with float32 parameters and optimizer state (the papers trained on TPUs in bfloat16),
  scanned blocks (compile time independent of depth), remat (activations recomputed in the backward
  pass), micro-batches (gradient accumulation) and FSDP (parameters and optimizer state sharded
  over the chips instead of replicated)."""
  n_chips = chips.parse(topology).chips
  for name, ds in c.datasets.items():
    if ds.batch_size % n_chips:
      raise ValueError(f'zoo.tpu: {name} batch_size={ds.batch_size} does not split over the '
                       f'{n_chips} chips of {topology}; pick a slice whose chips divide it.')
    # Evaluation batches are whole videos' views, as many per chip (the averages are the same).
    ds.eval_batch_size = math.lcm(ds.eval_batch_size, n_chips)
  c.topology = topology
  c.model.dtype = 'bfloat16'
  c.model.scan_layers = True
  c.model.remat = remat
  c.microbatches = microbatches
  if fsdp:
    c.mesh.update(data=1, fsdp=-1)


# ---------------------------------------------------------------------------------------------
# TubeViT (Piergiovanni et al., CVPR 2023)

def tubevit(c: ml_collections.ConfigDict, size: str) -> None:
  """TubeViT-{B,L,H}: the four tubes of Table 12, fixed 3D sin/cos at tube centres, attention
  pooling into the FC layer without an MLP (head_mlp_dim = 0, §3.1)."""
  c.model.name = 'tubevit'
  vit(c.model, size)
  c.model.tubes = TUBEVIT_TUBES
  c.model.image_tube = 3
  c.model.posemb = 'sincos3d'
  c.model.head = 'map'
  c.model.head_mlp_dim = 0        # attention pooling straight into the FC layer (§3.1)
  c.model.dropout = 0.0
  c.model.stochastic_depth = 0.0


def tubevit_recipe(c: ml_collections.ConfigDict, size: str, *, ssv2: bool = False) -> None:
  """Table 10: Adam, batch 256, cosine with 10k warm-up steps, 300k steps, lr 5e-5 (B) and 1e-5
  (L, H), weight decay 1e-3 (B) and 1e-5 (L, H, lowered with the lr for stability, App. A).
  SSv2 adds dropout 0.3, label smoothing 0.3, mixup 0.3 and RandAugment (2, 10)."""
  c.total_steps = 300_000
  c.optimizer.update(name='adamw', learning_rate=5e-5 if size == 'B' else 1e-5,
                     warmup_steps=10_000, schedule='cosine', b1=0.9, b2=0.999,
                     weight_decay=1e-3 if size == 'B' else 1e-5)
  if ssv2:
    c.model.dropout = 0.3
    c.label_smoothing = 0.3
    ssv2_regularisation(c, randaugment=(2, 10))
  # TPU: batch 256 on a v5e-16 is 16 clips of 539 tokens per chip. B fits without remat (plan:
  # 12.5 of 16 GiB per chip); L recomputes activations (remat: 7.8 GiB); H's 657M parameters and
  # their Adam moments go to a v5p slice with FSDP (docs/pods.md: "What each paper config needs").
  if size == 'B':
    tpu(c, 'v5e:4x4', remat=False)
  elif size == 'L':
    tpu(c, 'v5e:4x4')
  else:
    tpu(c, 'v5p:2x4x4', fsdp=True)


def ssv2_regularisation(c: ml_collections.ConfigDict, *, randaugment=(2, 10), mixup: float = 0.3):
  """Mixup and RandAugment of the SSv2 recipes (TubeViT Table 10; ViViT App. B), on every video
  dataset of the mix."""
  c.mixup.mixup_alpha = mixup
  for ds in c.datasets.values():
    if ds.kind == 'video':
      ds.randaugment_layers, ds.randaugment_magnitude = randaugment


def tubevit_kinetics(tfds_name: str, **kw):
  """32x224x224 clips (TubeViT §4.1), stride 2, 4x3 eval views, batch 256 (Table 10)."""
  return video_dataset(tfds_name, num_frames=32, frame_stride=2, batch_size=256, views=(4, 3), **kw)


def maybe_cotrain(c: ml_collections.ConfigDict, arg) -> None:
  """`:cotrain` adds ImageNet-1k through the 2D-patch tube with its own head (TubeViT §3.5): the
  paper's main results are trained this way."""
  if parse_arg(arg).get('cotrain'):
    c.datasets.imagenet2012 = imagenet_dataset(batch_size=256)


# ---------------------------------------------------------------------------------------------
# ViViT (Arnab et al., ICCV 2021)

def vivit_kinetics(tfds_name: str, num_frames: int = 32, views=(4, 3), **kw):
  """32 frames with a stride of 2 (ViViT §4.1 'Inference'), 224 px, batch 64, 4x3 views."""
  return video_dataset(tfds_name, num_frames=num_frames, frame_stride=2, batch_size=64,
                       views=views, **kw)


def vivit_recipe(c: ml_collections.ConfigDict, tfds_name: str, *, epochs: float = 30,
                 learning_rate: float = 0.1) -> None:
  """SGD with momentum 0.9, cosine decay, batch 64, 2.5 warm-up epochs (ViViT §4.1 and App. B:
  Kinetics lr 0.1 for 30 epochs; SSv2 and Epic Kitchens lr 0.5 for 35 with stochastic depth,
  RandAugment, label smoothing and mixup)."""
  batch = c.datasets[next(iter(c.datasets))].batch_size
  c.total_steps = epochs_to_steps(epochs, tfds_name, batch)
  c.optimizer.update(name='sgd', learning_rate=learning_rate, momentum=0.9, schedule='cosine',
                     warmup_steps=epochs_to_steps(2.5, tfds_name, batch), weight_decay=0.0,
                     grad_clip_norm=1.0)
  # TPU: batch 64 on a v5e-16 is 4 clips per chip; remat keeps M1's joint attention over 3136
  # tokens at 5.0 GiB per chip (M2-M4 under 4.3); ViViT-L adds FSDP for its parameters.
  tpu(c, 'v5e:4x4', fsdp=c.model.hidden_size > 768)


# ---------------------------------------------------------------------------------------------
# TimeSformer (Bertasius et al., ICML 2021)

TIMESFORMER_CLIPS = {
    # setting: (frames, sampling stride, crop) -- §4 and Table 3: base 8x224 1-in-32,
    # HR 16x448, L 96x224 1-in-4 (the official configs' 8x32_224, 16x16_448, 96x4_224).
    'base': (8, 32, 224),
    'hr': (16, 16, 448),
    'l': (96, 4, 224),
}


def timesformer_kinetics(tfds_name: str, setting: str = 'base', **kw):
  """Batch 8 (the official configs), eval 1 temporal x 3 spatial crops of the short side."""
  frames, stride, crop = TIMESFORMER_CLIPS[setting]
  return video_dataset(tfds_name, num_frames=frames, frame_stride=stride, crop_size=crop,
                       min_resize=crop, max_resize=crop * 320 // 224, batch_size=8,
                       views=(1, 3), eval_batch_size=12, normalization='imagenet', **kw)


def timesformer_recipe(c: ml_collections.ConfigDict, tfds_name: str) -> None:
  """SGD lr 0.005, momentum 0.9, weight decay 1e-4, 15 epochs, lr x0.1 at epochs 11 and 14
  (TimeSformer §4 / official configs): the 'step' schedule with step_boundaries."""
  batch = c.datasets[next(iter(c.datasets))].batch_size
  c.total_steps = epochs_to_steps(15, tfds_name, batch)
  c.optimizer.update(name='sgd', learning_rate=0.005, momentum=0.9, weight_decay=1e-4,
                     schedule='step', warmup_steps=0, grad_clip_norm=0.0)
  c.optimizer.step_boundaries = (11 / 15, 14 / 15)
  # TPU: batch 8 is one clip per chip of a single-host v5e-8 (2x4); with remat HR (12544 tokens)
  # and L (18816) need 3.6 GiB per chip (plan).
  tpu(c, 'v5e:2x4')


# ---------------------------------------------------------------------------------------------
# Model configs of ViViT and TimeSformer (keys: sparse_tubes/models/video_vit.py)

VIVIT_VARIANTS = {
    # variant: (model keys, what the paper calls it). ViViT §3.3 and Table 2.
    'm1': (dict(attention='joint', head='token'), 'Model 1, spatio-temporal attention'),
    # M2's spatial encoder is an image ViT run per frame: a spatial position table shared by the
    # frames, then a temporal one before the temporal encoder (scenic's ViViT), not a table over
    # the whole tubelet grid.
    'fe': (dict(attention='joint', encoder='factorised', temporal_layers=4, spatial_pool='token',
                head='token', posemb='learned_space_time'), 'Model 2, factorised encoder (L_t = 4)'),
    'm3': (dict(attention='factorised_self_attention', factorised_order='space_time', head='gap'),
           'Model 3, factorised self-attention'),
    'm4': (dict(attention='factorised_dot_product', head='gap'),
           'Model 4, factorised dot-product attention'),
}


def vivit(c: ml_collections.ConfigDict, size: str, variant: str, *, tubelet=(2, 16, 16)) -> None:
  """ViViT-{size}/16x2: tubelet embedding 2x16x16 (§3.2), learned position embedding over the
  tubelet grid, a variant of VIVIT_VARIANTS. Scenic's ViT uses the tanh GELU (flax's default)."""
  ds = c.datasets[next(iter(c.datasets))]
  c.model.name = 'vivit'
  vit(c.model, size)
  c.model.tubes = ((tuple(tubelet), tuple(tubelet), (0, 0, 0)),)
  c.model.image_tube = None
  c.model.posemb = 'learned'  # M2 overrides: 'learned_space_time'
  c.model.input_shape = (ds.num_frames, ds.crop_size, ds.crop_size, 3)
  c.model.gelu_approximate = True
  c.model.dropout = 0.0
  c.model.stochastic_depth = 0.0
  c.model.update(VIVIT_VARIANTS[variant][0])


TIMESFORMER_ATTENTION = {
    # file suffix: (config.model.attention, the paper's name). TimeSformer §3 and Table 1.
    's': ('space', 'Space (S)'),
    'st': ('joint', 'Joint Space-Time (ST)'),
    'divst': ('divided', 'Divided Space-Time (T+S)'),
    'lg': ('local_global', 'Sparse Local Global (L+G)'),
    'axial': ('axial', 'Axial (T+W+H)'),
}


def timesformer(c: ml_collections.ConfigDict, attention: str = 'divided') -> None:
  """TimeSformer: ViT-B on 16x16 frame patches, learned space + time embeddings, class token."""
  ds = c.datasets[next(iter(c.datasets))]
  c.model.name = 'timesformer'
  vit(c.model, 'B')
  c.model.tubes = (((1, 16, 16), (1, 16, 16), (0, 0, 0)),)
  c.model.image_tube = None
  c.model.posemb = 'learned_space_time'
  c.model.input_shape = (ds.num_frames, ds.crop_size, ds.crop_size, 3)
  c.model.attention = attention
  c.model.head = 'token'
  c.model.gelu_approximate = False
  c.model.dropout = 0.0
  c.model.stochastic_depth = 0.0


def timesformer_ssv2(setting: str = 'base', **kw):
  """SSv2 clips for TimeSformer: one frame per segment (8, HR 16 at 448 px, L 64 as the official
  SSv2 config), no flips, 1x3 views."""
  frames, _, crop = TIMESFORMER_CLIPS[setting]
  frames = 64 if setting == 'l' else frames
  return ssv2_dataset(num_frames=frames, crop_size=crop, min_resize=crop,
                      max_resize=crop * 320 // 224, batch_size=8, views=(1, 3), eval_batch_size=12,
                      normalization='imagenet', **kw)


# ---------------------------------------------------------------------------------------------
# Tiny configs on the built-in dataset (configs/synthetic/{tubevit,vivit,timesformer}_tiny.py)

def synthetic(images: bool = True) -> ml_collections.ConfigDict:
  """The built-in moving-shapes videos (label: direction of motion), optionally the images (label:
  shape, through the 2D-patch tube), a 4-layer width-64 encoder and a 600-step recipe that runs in
  minutes on 2 CPU cores. Each tiny config then sets its tokenizer, position and attention."""
  c = defaults.base()
  c.datasets.shapes_video = defaults.dataset(
      tfds_name='moving_shapes/video', kind='video', batch_size=32, eval_batch_size=48,
      num_frames=8, frame_stride=1, crop_size=32, min_resize=36, max_resize=40, flip=False,
      eval_temporal_views=2, eval_spatial_views=3)
  if images:
    c.datasets.shapes_image = defaults.dataset(
        tfds_name='moving_shapes/image', kind='image', batch_size=16, eval_batch_size=48,
        crop_size=32, min_resize=36, max_resize=40, flip=True, loss_weight=0.5,
        eval_spatial_views=1)
  c.model.hidden_size = 64
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 256
  c.model.dropout = 0.0
  c.model.stochastic_depth = 0.0
  c.model.input_shape = (8, 32, 32, 3)    # sizes the learned position tables (unused by sincos3d)
  c.total_steps = 600
  c.label_smoothing = 0.1
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 1e-4
  c.log_every_steps = 25
  c.checkpoint_every_steps = 200
  return c
