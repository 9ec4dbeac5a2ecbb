"""The jitted train and eval steps. One step sees one batch from EVERY dataset of the mix; each
dataset goes through its own head and its loss is weighted by `loss_weight` (TubeViT App. A:
joint image+video training computes each example's loss on its dataset's head)."""
import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sparse_tubes import compat
from sparse_tubes import config as config_lib
from sparse_tubes.models import partitioning
from sparse_tubes.train import mixup, optim, sharding, state as state_lib


def targets(labels, num_classes: int, label_smoothing: float):
  onehot = jax.nn.one_hot(labels, num_classes)
  return optax.smooth_labels(onehot, label_smoothing) if label_smoothing else onehot


def split_microbatches(x, microbatches: int):
  """(B, ...) -> (microbatches, B / microbatches, ...), micro-batch m = rows m, m + M, m + 2M, ...

  Strided rather than contiguous: the batch is sharded in contiguous blocks over the data-parallel
  devices, so every micro-batch keeps an equal share on every device (a local reshape, no
  communication)."""
  b = x.shape[0]
  x = x.reshape(b // microbatches, microbatches, *x.shape[1:])
  x = partitioning.constrain(x, ('batch',) + (None,) * (x.ndim - 1))
  x = jnp.moveaxis(x, 1, 0)
  return partitioning.constrain(x, (None, 'batch') + (None,) * (x.ndim - 2))


def make_train_step(graphdef, tx, schedule, datasets: Mapping, num_classes: Mapping[str, int], *,
                    label_smoothing: float, seed: int, mixup_cfg=None, microbatches: int = 1,
                    ema_decay: float = 0.0):
  """microbatches > 1: gradient accumulation. The global batch of every dataset is split into that
  many micro-batches inside the step (jax.lax.scan), and their gradients and metrics averaged: the
  same update as the whole batch at a fraction of the activation memory. Mixup is applied to the
  whole batch before the split, so partners and mixing weights do not change either.

  ema_decay > 0: the state's 'ema' follows the updated parameters, ema <- d ema + (1 - d) params,
  every step (as in MViT and VideoMAE fine-tuning recipes), elementwise on each shard."""
  names = sorted(datasets)
  weights = {n: float(datasets[n].loss_weight) for n in names}
  mixup_kw = dict(mixup_cfg or dict(mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_prob=0.5))
  microbatches = int(microbatches)
  for name in names:
    if microbatches < 1 or datasets[name].batch_size % microbatches:
      raise ValueError(f'config.microbatches={microbatches} must be >= 1 and divide '
                       f'config.datasets.{name}.batch_size={datasets[name].batch_size}.')

  def loss_fn(params, batch, drop_keys):
    model = nnx.merge(graphdef, params)
    total, metrics = 0.0, {}
    for name in names:
      x, soft, y = batch[name]
      rngs = compat.host_counted_rngs(dropout=drop_keys[name])
      logits = model(x, dataset=name, train=True, rngs=rngs)
      loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), soft).mean()
      total += weights[name] * loss
      metrics[f'train/loss/{name}'] = loss
      metrics[f'train/accuracy/{name}'] = (jnp.argmax(logits, -1) == y).mean()
    return total, metrics

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    # The dropout key depends on the step only, so a resumed run draws the same masks.
    key = jax.random.fold_in(jax.random.key(seed), state['step'])
    mixed, drop_keys = {}, {}
    for i, name in enumerate(names):
      drop_keys[name], k_mix = jax.random.split(jax.random.fold_in(key, i))
      x, y = batch[name]['inputs'], batch[name]['label']
      x, soft = mixup.mix(k_mix, x, targets(y, num_classes[name], label_smoothing), **mixup_kw)
      mixed[name] = (x, soft, y)
    params = state['params']
    if microbatches == 1:
      (loss, metrics), grads = grad_fn(params, mixed, drop_keys)
    else:
      micro = jax.tree.map(lambda a: split_microbatches(a, microbatches), mixed)

      def accumulate(sums, inputs):
        m, mb = inputs
        keys = {n: jax.random.fold_in(k, m) for n, k in drop_keys.items()}
        out = grad_fn(params, mb, keys)
        return jax.tree.map(jnp.add, sums, out), None

      first = jax.tree.map(lambda a: a[0], micro)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(grad_fn, params, first, drop_keys))
      sums, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(microbatches), micro))
      (loss, metrics), grads = jax.tree.map(lambda a: a / microbatches, sums)
    updates, opt_state = tx.update(grads, state['opt_state'], params)
    params = optax.apply_updates(params, updates)
    metrics.update({'train/loss': loss, 'train/grad_norm': optax.tree.norm(grads),
                    'train/learning_rate': schedule(state['step'])})
    new = {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}
    if ema_decay:
      new['ema'] = jax.tree.map(lambda e, p: (ema_decay * e + (1 - ema_decay) * p).astype(e.dtype),
                                state['ema'], params)
    return new, metrics

  return train_step


def guard_nonfinite(train_step, skip: bool):
  """`train_step` that also reports `train/finite` (1 when the loss and the gradient norm are
  finite), fetched with the other metrics so the check costs no host sync (train/nonfinite.py).
  With `skip` a non-finite step keeps the old parameters and optimizer state (`train/skipped` 1);
  the step counter still advances, as the batch was consumed."""

  def guarded(state, batch):
    new, metrics = train_step(state, batch)
    finite = jnp.isfinite(metrics['train/loss']) & jnp.isfinite(metrics['train/grad_norm'])
    metrics['train/finite'] = finite.astype(jnp.float32)
    if skip:  # Dropped inside the step: nothing non-finite reaches the state.
      keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(finite, x, y), a, b)
      new = {**new, 'params': keep(new['params'], state['params']),
             'opt_state': keep(new['opt_state'], state['opt_state'])}
      if 'ema' in new:
        new['ema'] = keep(new['ema'], state['ema'])
      metrics['train/skipped'] = 1.0 - metrics['train/finite']
    return new, metrics

  return guarded


def make_eval_step(graphdef, dataset: str):
  def eval_step(params, batch):
    logits = nnx.merge(graphdef, params)(batch['inputs'], dataset=dataset, train=False)
    # The batch's bookkeeping (label, video_id, mask, key) comes back with the logits.
    return {**{k: v for k, v in batch.items() if k != 'inputs'},
            'logits': logits.astype(jnp.float32)}
  return eval_step


BATCH_DTYPES = {'inputs': jnp.float32, 'label': jnp.int32, 'video_id': jnp.int32, 'mask': jnp.bool_}


def abstract_batch(ds_cfg, size: int, mesh, rules, keys=('inputs', 'label')) -> dict:
  """ShapeDtypeStructs of one dataset's batch of `size` examples, sharded as the loop shards it:
  what `plan` and `bench --topology` compile the train (or eval) step for."""
  shapes = {'inputs': (size, *config_lib.input_shape(ds_cfg))}
  return {k: jax.ShapeDtypeStruct(shapes.get(k, (size,)), BATCH_DTYPES[k],
                                  sharding=sharding.batch_sharding(mesh, rules,
                                                                   len(shapes.get(k, (size,)))))
          for k in keys}


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """What `build` gives: the jitted train step and everything it was built from."""
  step: Callable                  # jax.jit(state, batch) -> (state, metrics); donates the state
  spec: state_lib.ModelSpec
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  frozen: tuple[str, ...]         # parameter names config.freeze keeps fixed
  shardings: dict                 # of the state
  ema: bool = False               # the state holds 'ema' (config.ema_decay > 0)

  def abstract_state(self, mesh):
    return state_lib.abstract_state(self.spec, self.tx, mesh, self.ema)

  def init_state(self, config, classes: Mapping[str, int], mesh):
    """A fresh state for this step (parameters from config.seed; the EMA, if any, equal to them)."""
    return state_lib.init_state(config.model, classes, self.spec, self.tx, mesh, config.seed,
                                self.ema)

  def compile(self, state, batch):
    """The step lowered and compiled for these (possibly abstract) arguments."""
    return self.step.lower(state, batch).compile()


def build(config, classes: Mapping[str, int], mesh, rules, total_steps: int) -> TrainProgram:
  """The one train step of a config: `train` runs it, `bench step` times it and `plan` compiles it
  for a TPU slice. Model and shardings from the config's mesh and rules, the optimizer with its
  schedule over `total_steps` and frozen parameters (config.freeze), micro-batches
  (config.microbatches), the non-finite guard (config.on_nonfinite) and the parameters' moving
  average (config.ema_decay)."""
  spec = state_lib.model_spec(config.model, classes, mesh, rules)
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps)
  tx, frozen = optim.with_freeze(tx, spec.abstract_params, config.freeze)
  train_step = make_train_step(
      spec.graphdef, tx, schedule, config.datasets, classes,
      label_smoothing=config.label_smoothing, seed=config.seed, mixup_cfg=config.mixup,
      microbatches=config.microbatches, ema_decay=config.ema_decay)
  train_step = guard_nonfinite(train_step, skip=config.on_nonfinite == 'skip')
  ema = config.ema_decay > 0
  shardings = state_lib.state_shardings(spec, tx, mesh, ema)
  train_step = jax.jit(train_step, in_shardings=(shardings, None),
                       out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  return TrainProgram(train_step, spec, tx, schedule, tuple(frozen), shardings, ema)
