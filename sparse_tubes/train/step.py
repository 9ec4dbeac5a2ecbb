"""The jitted train and eval steps. One step sees one batch from EVERY dataset of the mix; each
dataset goes through its own head and its loss is weighted by `loss_weight` (TubeViT App. A:
joint image+video training computes each example's loss on its dataset's head)."""
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sparse_tubes.models import partitioning
from sparse_tubes.train import mixup


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
                    label_smoothing: float, seed: int, mixup_cfg=None, microbatches: int = 1):
  """microbatches > 1: gradient accumulation. The global batch of every dataset is split into that
  many micro-batches inside the step (jax.lax.scan), and their gradients and metrics averaged: the
  same update as the whole batch at a fraction of the activation memory. Mixup is applied to the
  whole batch before the split, so partners and mixing weights do not change either."""
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
      logits = model(x, dataset=name, train=True, rngs=nnx.Rngs(dropout=drop_keys[name]))
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
    return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics

  return train_step


def make_eval_step(graphdef, dataset: str):
  def eval_step(params, batch):
    logits = nnx.merge(graphdef, params)(batch['inputs'], dataset=dataset, train=False)
    return {'logits': logits.astype(jnp.float32), 'label': batch['label'],
            'video_id': batch['video_id'], 'mask': batch['mask']}
  return eval_step
