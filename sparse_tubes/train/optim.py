"""Optimizer and learning-rate schedule from `config.optimizer`."""
import re

import jax
import optax

OPTIMIZERS = ('adamw', 'adam', 'sgd')
SCHEDULES = ('cosine', 'constant', 'linear', 'step')


def make_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then the decay the config names."""
  lr, warmup = opt_cfg.learning_rate, int(opt_cfg.warmup_steps)
  decay_steps = max(total_steps - warmup, 1)
  end = lr * opt_cfg.end_learning_rate_factor
  if opt_cfg.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
  elif opt_cfg.schedule == 'linear':
    decay = optax.linear_schedule(lr, end, decay_steps)
  elif opt_cfg.schedule == 'constant':
    decay = optax.constant_schedule(lr)
  elif opt_cfg.schedule == 'step':
    # TimeSformer's recipe: x0.1 at each boundary (given as fractions of training, e.g. 11/15, 14/15).
    bounds = {int(f * total_steps) - warmup: 0.1 for f in opt_cfg.step_boundaries}
    decay = optax.piecewise_constant_schedule(lr, bounds)
  else:
    raise ValueError(f'config.optimizer.schedule={opt_cfg.schedule!r}; choose one of {SCHEDULES}.')
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def _decay_mask(params):
  # Weight decay on matrices and conv kernels only, not on biases, LayerNorm scales or embeddings
  # of rank 1 (the usual ViT convention).
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = make_schedule(opt_cfg, total_steps)
  if opt_cfg.name == 'adamw':
    opt = optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, weight_decay=opt_cfg.weight_decay,
                      mask=_decay_mask)
  elif opt_cfg.name == 'adam':
    opt = optax.adam(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2)
  elif opt_cfg.name == 'sgd':
    opt = optax.chain(optax.add_decayed_weights(opt_cfg.weight_decay, mask=_decay_mask),
                      optax.sgd(schedule, momentum=opt_cfg.momentum, nesterov=False))
  else:
    raise ValueError(f'config.optimizer.name={opt_cfg.name!r}; choose one of {OPTIMIZERS}.')
  parts = []
  if opt_cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
  parts.append(opt)
  return optax.chain(*parts), schedule


def frozen_mask(params, freeze_cfg) -> tuple[dict, list[str]]:
  """(bool tree, frozen names) from `config.freeze`: parameter names ('/'-joined paths, e.g.
  'encoder/blocks/0/attention/query') matching any regex of `patterns` (re.search), plus the
  encoder blocks before `layers_before` (TubeViT §3.6: freeze the layers before layer k)."""
  patterns = freeze_cfg.patterns
  patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
  k = int(freeze_cfg.layers_before)
  compiled = []
  for p in patterns:
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise ValueError(f'config.freeze.patterns: {p!r} is not a regex ({e}).') from None
  names = []

  def frozen(path, _):
    name = '/'.join(str(getattr(e, 'key', getattr(e, 'idx', e))) for e in path)
    m = re.match(r'(spatial_encoder|encoder)/blocks/(\d+)/', name)
    if k and re.match(r'(spatial_encoder|encoder)/blocks/[a-z]', name):
      raise ValueError('config.freeze.layers_before needs config.model.scan_layers=False (scanned '
                       'blocks share one parameter array per name); freeze by pattern instead.')
    hit = any(c.search(name) for c in compiled) or bool(m and int(m.group(2)) < k)
    if hit:
      names.append(name)
    return hit

  mask = jax.tree_util.tree_map_with_path(frozen, params)
  if (compiled or k) and not names:
    raise ValueError(f'config.freeze (patterns={patterns}, layers_before={k}) matches no parameter; '
                     'names look like encoder/blocks/0/attention/query (see parameters.txt).')
  return mask, names


def with_freeze(tx: optax.GradientTransformation, params, freeze_cfg):
  """`tx` with frozen parameters' gradients zeroed before it (so clipping, moments and the
  global norm ignore them) and their updates zeroed after it (so weight decay cannot move them).
  Returns (tx, frozen names); tx is unchanged when nothing is frozen. The optimizer state keeps
  the parameter tree's structure, hence its sharding."""
  mask, names = frozen_mask(params, freeze_cfg)
  if not names:
    return tx, []
  zero = optax.masked(optax.set_to_zero(), mask)
  return optax.chain(zero, tx, optax.masked(optax.set_to_zero(), mask)), names
