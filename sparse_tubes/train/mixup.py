"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on device, inside the jitted step.

Each example is mixed with its neighbour in the batch (a roll by one, as big_vision does), so no
gather of random indices crosses hosts. For videos, CutMix cuts the same box out of every frame:
the box is a region of the scene, and motion inside it stays intact.
"""
import jax
import jax.numpy as jnp


def _box_mask(key, height: int, width: int, lam):
  """A (height, width) float mask, 1 inside a box of area (1 - lam) placed uniformly (clipped)."""
  ky, kx = jax.random.split(key)
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = height * cut, width * cut
  cy = jax.random.uniform(ky, (), minval=0, maxval=height)
  cx = jax.random.uniform(kx, (), minval=0, maxval=width)
  ys, xs = jnp.arange(height) + 0.5, jnp.arange(width) + 0.5
  inside_y = (ys >= cy - ch / 2) & (ys < cy + ch / 2)
  inside_x = (xs >= cx - cw / 2) & (xs < cx + cw / 2)
  return (inside_y[:, None] & inside_x[None, :]).astype(jnp.float32)


def mix(key, inputs, targets, *, mixup_alpha: float, cutmix_alpha: float, cutmix_prob: float):
  """Returns mixed (inputs, soft targets). inputs: (B, ..., H, W, C); targets: (B, classes)."""
  if not mixup_alpha and not cutmix_alpha:
    return inputs, targets
  k_choice, k_mix, k_cut, k_box = jax.random.split(key, 4)
  partner_x, partner_y = jnp.roll(inputs, 1, axis=0), jnp.roll(targets, 1, axis=0)
  h, w = inputs.shape[-3], inputs.shape[-2]

  def do_mixup(_):
    lam = jax.random.beta(k_mix, mixup_alpha, mixup_alpha)
    x = lam * inputs + (1 - lam) * partner_x
    return x.astype(inputs.dtype), lam

  def do_cutmix(_):
    lam = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha)
    box = _box_mask(k_box, h, w, lam)[:, :, None]      # (H, W, 1), broadcast over B, T and C
    x = inputs * (1 - box) + partner_x * box
    return x.astype(inputs.dtype), 1.0 - box.mean()     # lam = the area actually kept

  if mixup_alpha and cutmix_alpha:
    use_cutmix = jax.random.uniform(k_choice) < cutmix_prob
    x, lam = jax.lax.cond(use_cutmix, do_cutmix, do_mixup, None)
  elif cutmix_alpha:
    x, lam = do_cutmix(None)
  else:
    x, lam = do_mixup(None)
  return x, lam * targets + (1 - lam) * partner_y
