"""Defaults shared by every config file: `base()` for the run, `dataset()` for each named dataset.

Config files under configs/ start from these and change what they need; validation
(`sparse_tubes.config`) rejects keys that are not here, so a typo fails before anything runs."""
import ml_collections


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
      normalization='minus_one_to_one',  # or 'imagenet'
      eval_temporal_views=1,
      eval_spatial_views=1,
  ))
  d.update(kw)
  return d


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data_dir = ''             # '' -> $SPARSE_TUBES_DATA_DIR or ~/.cache/sparse_tubes/tfds
  c.datasets = ml_collections.ConfigDict()
  c.eval_datasets = ()        # names to evaluate; () -> all

  c.model = ml_collections.ConfigDict()
  c.model.dtype = 'float32'   # activation/compute dtype; parameters stay float32
  c.model.remat = False

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
      grad_clip_norm=1.0))

  # Mesh axes and the rules that map logical axis names onto them (MaxText's discipline).
  # -1 takes the devices that are left.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
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

  c.grain = ml_collections.ConfigDict(dict(worker_count=0, worker_buffer_size=2, read_threads=4))

  c.log_every_steps = 25
  c.eval_every_steps = 0      # > 0: multi-view eval every N steps and at the end, while training
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.profile = ml_collections.ConfigDict(dict(enabled=False, start_step=10, num_steps=5))
  return c
