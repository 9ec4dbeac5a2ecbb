import jax
import jax.numpy as jnp
import numpy as np

from sparse_tubes.train import mixup


def batch(b=4, t=3, h=8, w=8, classes=4):
  x = jax.random.normal(jax.random.key(0), (b, t, h, w, 3))
  y = jax.nn.one_hot(jnp.arange(b) % classes, classes)
  return x, y


def test_off_is_identity():
  x, y = batch()
  mx, my = mixup.mix(jax.random.key(1), x, y, mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_prob=0.5)
  assert mx is x and my is y


def test_mixup_mixes_inputs_and_targets_with_the_same_lambda():
  x, y = batch()
  mx, my = mixup.mix(jax.random.key(1), x, y, mixup_alpha=0.3, cutmix_alpha=0.0, cutmix_prob=0.5)
  lam = float(my[0, 0])  # Example 0 has label 0; its partner (example 3) has label 3.
  assert 0.0 <= lam <= 1.0
  np.testing.assert_allclose(my.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(mx, lam * x + (1 - lam) * jnp.roll(x, 1, axis=0), rtol=1e-5, atol=1e-6)


def test_cutmix_cuts_the_same_box_from_every_frame():
  x, y = batch(h=16, w=16)
  mx, my = mixup.mix(jax.random.key(3), x, y, mixup_alpha=0.0, cutmix_alpha=1.0, cutmix_prob=0.5)
  pasted = np.asarray(jnp.isclose(mx, jnp.roll(x, 1, axis=0)) & ~jnp.isclose(mx, x))
  box = pasted[0, 0, :, :, 0]
  for t in range(x.shape[1]):            # The same box in every frame and channel.
    np.testing.assert_array_equal(pasted[0, t, :, :, 0], box)
  kept = 1.0 - box.mean()
  np.testing.assert_allclose(float(my[0, 0]), kept, atol=1e-6)   # Targets weigh the area kept.
