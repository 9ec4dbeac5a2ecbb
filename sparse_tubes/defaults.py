"""Defaults shared by every config file: `base()` for the run, `dataset()` for each named dataset,
`model()` for config.model.

Config files under configs/ start from these and change what they need; validation
(`sparse_tubes.config`) rejects keys that are not here (naming the closest one) and values of
another type than the default's (`TYPES` lists the keys that take more than one type), so a typo
fails before anything runs.

A new key is added here, with its default and a comment, and read as `config.model.key` (never
`.get(key, default)`: the default lives only here); a key taking more than one type, or None,
also gets an entry in TYPES.
"""
import ml_collections

NoneType = type(None)


def dataset(**kw) -> ml_collections.ConfigDict:
  """One named dataset of the training mix. Every key is read by `sparse_tubes.data`."""
  d = ml_collections.ConfigDict(dict(
      tfds_name='',            # e.g. 'moving_shapes/video'
      kind='video',            # 'video' (B,T,H,W,C) or 'image' (B,H,W,C)
      train_split='train',
      eval_split='test',
      batch_size=16,           # global batch, summed over hosts
      eval_batch_size=16,      # global, in views
      loss_weight=1.0,
      num_frames=8,            # frames per clip (video only)
      frame_stride=1,          # Kinetics-style stride sampling
      sampling='stride',       # 'stride' (Kinetics) or 'segment' (SSv2)
      crop_size=32,
      min_resize=36,           # short side before the crop (eval); train jitters in [min_resize, max_resize]
      max_resize=40,
      flip=True,               # off where flipping changes the label (SSv2, motion direction)
      train_crop='scale_jitter',  # or 'random_resized' (Inception crop; ignores min/max_resize in train)
      rrc_scale=(0.08, 1.0),   # random_resized: area fraction range
      rrc_ratio=(0.75, 4 / 3),  # random_resized: aspect ratio (w/h) range
      randaugment_layers=0,    # RandAugment N (0: off); the same ops for every frame of a clip
      randaugment_magnitude=9,  # RandAugment M, 0..10
      # Pixel normalization, the one the model was (pre)trained with: 'minus_one_to_one' ([-1, 1]),
      # 'imagenet', 'kinetics' (mean 0.45, std 0.225), or 'custom' (norm_mean / norm_std per
      # channel, on pixels in [0, 1]). `convert` sets it from the published checkpoint's source.
      normalization='minus_one_to_one',
      norm_mean=(),
      norm_std=(),
      eval_temporal_views=1,   # clips per video; 0: non-overlapping clips covering the whole video
      eval_spatial_views=1,
      eval_aggregation='mean_logits',  # views -> video: 'mean_logits' or 'mean_softmax'
  ))
  d.update(kw)
  return d


def model(**kw) -> ml_collections.ConfigDict:
  """Every key of config.model, read by `sparse_tubes.models.video_vit` (its docstring says what
  each does). Not type-safe as a ConfigDict (so `remat` may become 'full', `image_tube` an int):
  `sparse_tubes.config.validate` checks the types against these defaults and TYPES."""
  m = ml_collections.ConfigDict(dict(
      name='',                 # 'tubevit' | 'vivit' | 'timesformer' (required)
      # The ViT encoder (required; num_layers: the spatial encoder's for encoder='factorised').
      hidden_size=0, num_layers=0, num_heads=0, mlp_dim=0,
      tubes=(),                # ((kernel), (stride), (offset)) per tube, each (t, h, w) (required)
      image_tube=None,         # index of the 2D-patch tube images go through; None: no image path
      tube_variant='conv',     # 'conv' | 'space_to_depth' | 'interpolated' (TubeViT §3.4)
      space_to_depth=(1, 2, 2),       # fold (t, h, w) of tube_variant='space_to_depth'
      interpolated_kernel=(8, 8, 8),  # the one learned kernel of tube_variant='interpolated'
      in_channels=3,
      posemb='',               # 'sincos3d' | 'learned' | 'learned_space_time'; '': by name
      posemb_tau=10000.0,      # sincos3d's tau
      input_shape=None,        # (T, H, W, C) of the largest clip: sizes the learned posembs
      head='',                 # pooling: 'token' | 'gap' | 'map'; '': by name (tubevit 'map')
      head_mlp_dim=0,          # > 0: big_vision's MAP head (+ MLP block); 0: TubeViT's pooling
      attention='',            # the encoder's space/time pattern; '': by name
      attention_impl='auto',   # one of sparse_tubes.models.attention.IMPLS
      factorised_order='space_time',  # ViViT M3: or 'time_space'
      temporal_zero_init=True,
      local_window=None,       # local_global's window (t, h, w) in tokens; None: (n_t, n_h/2, n_w/2)
      global_stride=(2, 2, 2),  # local_global's sparse global stride (t, h, w)
      encoder='single',        # or 'factorised' (ViViT M2)
      temporal_layers=4,       # ViViT M2's L_t
      spatial_pool='token',    # ViViT M2's per-frame vector: 'token' | 'gap'
      dropout=0.0,
      stochastic_depth=0.0,
      dtype='float32',         # activation/compute dtype; parameters stay float32
      remat=False,             # False/'none' | True/'full' | 'dots_saveable' | ...
      scan_layers=False,
      scaling_gate_layers=(),  # TubeViT §3.6 gated layers; an int k means layers k..L-1
      layer_norm_eps=1e-6,
      gelu_approximate=False,
      space_cls_average='before_norm',  # space-only TimeSformer: or 'after_norm' (HF)
  ), type_safe=False)
  unknown = set(kw) - set(m)
  if unknown:
    raise ValueError(f'Unknown config key(s) {sorted("model." + k for k in unknown)}.')
  m.update(kw)
  return m


# What posemb, head and attention = '' mean, by model name.
# Choices of config.model keys that models/video_vit.py implements (checked by config.check_model).
POSEMBS = ('sincos3d', 'learned', 'learned_space_time')
POOLS = ('map', 'gap', 'token')
ENCODERS = ('single', 'factorised')

NAME_DEFAULTS = {
    'tubevit': dict(posemb='sincos3d', head='map', attention='joint'),
    'vivit': dict(posemb='learned', head='token', attention='joint'),
    'timesformer': dict(posemb='learned_space_time', head='token', attention='divided'),
}


# Keys of model() whose value may have another type than the default's (None: unset).
TYPES = {
    'model.image_tube': (int, NoneType),
    'model.input_shape': (tuple, NoneType),
    'model.local_window': (tuple, NoneType),
    'model.remat': (bool, str),
    'model.scaling_gate_layers': (tuple, int),
}


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data_dir = ''             # '' -> $SPARSE_TUBES_DATA_DIR or ~/.cache/sparse_tubes/tfds
  c.datasets = ml_collections.ConfigDict()
  c.eval_datasets = ()        # names to evaluate; () -> all

  c.model = model()

  c.total_steps = 1000
  # Epoch-based duration (TimeSformer's 15 epochs): when > 0 it replaces total_steps, counted in
  # epochs of the first dataset of config.datasets (alphabetical), the one the recipe is quoted for.
  c.num_epochs = 0.0
  c.label_smoothing = 0.0
  # Mixup / CutMix on device inside the jitted step, for every dataset of the mix (TubeViT's SSv2
  # recipe, Table 10: mixup 0.3). A batch gets CutMix with probability cutmix_prob when both are on.
  c.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_prob=0.5))
  # Gradient accumulation: each step's global batch (of every dataset) is split into this many
  # micro-batches inside the jitted step, and their gradients averaged. A paper batch size on a
  # slice too small to hold its activations at once; the update is the same (sparse_tubes/train/step.py).
  c.microbatches = 1
  # The TPU slice a config is sized for (`python -m sparse_tubes plan` checks it fits), e.g.
  # 'v5e:4x4'; '' for configs meant for a CPU or one accelerator.
  c.topology = ''
  c.optimizer = ml_collections.ConfigDict(dict(
      name='adamw', learning_rate=1e-3, warmup_steps=100, schedule='cosine',
      end_learning_rate_factor=0.0, b1=0.9, b2=0.999, momentum=0.9, weight_decay=0.0,
      grad_clip_norm=1.0,
      step_boundaries=(0.73, 0.93)))  # schedule='step': lr x0.1 at these fractions of the steps

  # Mesh axes and the rules that map logical axis names onto them (MaxText's discipline).
  # -1 takes the devices that are left. `slices`: TPU slices joined over the data-centre network;
  # they split the data axis only (sparse_tubes/train/sharding.py, docs/multislice.md).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, slices=1))
  c.sharding_rules = (
      ('batch', ('data', 'fsdp')),
      ('embed', 'fsdp'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('kv', None),
      ('tokens', None),
      ('vocab', None),
  )

  # Start from pretrained weights when the workdir has no checkpoint yet (sparse_tubes/pretrained/
  # init.py): kind '' (the model's own init), 'vit_npz', 'vit_torch' or 'checkpoint'.
  c.init_from = ml_collections.ConfigDict(dict(
      kind='', path='', step=-1, tube_init='central_frame', kernel_resize='pi', posemb='repeat',
      temporal_init='auto', keep_heads=False, tubes_from='', tube_projection='orthogonal'))
  # Parameters that never move: names ('/'-joined, as in parameters.txt) matching a regex of
  # `patterns`, and the encoder blocks before `layers_before` (0: none). Logged at the start.
  c.freeze = ml_collections.ConfigDict(dict(patterns=(), layers_before=0))
  # Exponential moving average of the parameters, kept in the train state and checkpointed
  # (item params_ema): ema <- d ema + (1 - d) params after every step; 0 turns it off. `evaluate`
  # uses it when present (--params=ema|raw). 0.9999 suits a long run; lower for short ones (the
  # average spans about 1 / (1 - d) steps).
  c.ema_decay = 0.0

  c.grain = ml_collections.ConfigDict(dict(worker_count=0, worker_buffer_size=2, read_threads=4))
  # Global batches read and put on the devices ahead of the step, by a thread beside the loop
  # (sparse_tubes/train/prefetch.py): each costs one batch of device memory.
  c.prefetch_batches = 2

  c.log_every_steps = 25
  c.eval_every_steps = 0      # > 0: multi-view eval every N steps and at the end, while training
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 3
  # A step whose loss or gradient norm is not finite: 'stop' (exit non-zero, naming the step, the
  # dataset and the last good checkpoint) or 'skip' (drop that update inside the step; still stop
  # after max_nonfinite_skips skips in a row). Checkpoints with non-finite parameters are never saved.
  c.on_nonfinite = 'stop'
  c.max_nonfinite_skips = 10
  c.async_checkpoints = True
  c.profile = ml_collections.ConfigDict(dict(enabled=False, start_step=10, num_steps=5))
  return c
