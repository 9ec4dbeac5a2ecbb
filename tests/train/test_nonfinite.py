"""config.on_nonfinite: 'stop' names the first bad step and what went bad; 'skip' stops after
max_nonfinite_skips bad steps in a row, a finite step resetting the count."""
import math

from sparse_tubes.train import nonfinite

GOOD = {'train/finite': 1.0, 'train/loss': 0.7, 'train/loss/k400': 0.7}


def bad(**losses):
  m = {'train/finite': 0.0, 'train/loss': sum(losses.values()) if losses else 1.0}
  m.update({f'train/loss/{k}': v for k, v in losses.items()})
  return m


def test_stop_names_the_step_and_the_dataset():
  w = nonfinite.Watch('stop', max_skips=3)
  assert w.check([(1, GOOD), (2, GOOD)]) == ''
  msg = w.check([(3, GOOD), (4, bad(k400=math.nan, ssv2=0.5, img=math.inf))])
  assert msg == 'step 4: the loss of dataset img, k400 is not finite (NaN or Inf)'


def test_stop_on_a_loss_or_the_gradient_norm():
  w = nonfinite.Watch('stop', max_skips=3)
  assert w.check([(5, {'train/finite': 0.0, 'train/loss': math.nan})]) == (
      'step 5: the loss is not finite (NaN or Inf)')
  assert w.check([(6, {'train/finite': 0.0, 'train/loss': 0.3})]) == (
      'step 6: the gradient norm is not finite (NaN or Inf)')


def test_skip_counts_in_a_row():
  w = nonfinite.Watch('skip', max_skips=2)
  assert w.check([(1, bad(k400=math.nan)), (2, GOOD), (3, bad(k400=math.nan))]) == ''
  assert (w.in_a_row, w.skipped) == (1, 2)
  msg = w.check([(4, bad(k400=math.nan))])
  assert msg.startswith('2 non-finite steps in a row up to step 4 (config.max_nonfinite_skips=2)')
  assert msg.endswith('the last in the loss of dataset k400')


def test_metrics_without_the_flag_count_as_finite():
  assert nonfinite.Watch('stop', 1).check([(1, {'train/loss': 0.1})]) == ''
