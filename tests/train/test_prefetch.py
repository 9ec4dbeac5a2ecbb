"""The prefetcher hands out the same batches in order, checkpoints where the loop is (not where the
reading thread is), surfaces pipeline errors in the loop, and stops its thread."""
import json
import threading
import time

import grain
import numpy as np
import pytest

from sparse_tubes.train import prefetch


def _iterator(n=20):
  ds = grain.MapDataset.range(n).map(lambda i: {'x': np.full((2,), i)}).batch(2)
  return iter(ds.to_iter_dataset())


def test_same_batches_in_order_and_positions_of_the_taken_batches():
  reference = [b['x'] for b in _iterator()]
  iterators = {'a': _iterator(), 'b': _iterator()}
  with prefetch.Prefetcher(iterators, lambda b: b, size=2) as feed:
    first = [next(feed) for _ in range(3)]
    time.sleep(0.2)  # The thread has read ahead by now.
    saved = {n: p.get_state() for n, p in feed.positions().items()}
    rest = list(feed)
  got = [b['a']['x'] for b in first + rest]
  np.testing.assert_array_equal(np.stack(got), np.stack(reference))
  # A fresh iterator set to the saved position continues with batch 4, not where the thread was.
  fresh = _iterator()
  fresh.set_state(json.loads(saved['b'].decode()))
  np.testing.assert_array_equal(next(fresh)['x'], reference[3])


def test_pipeline_error_is_raised_in_the_loop_after_earlier_batches():
  def failing():
    yield {'x': np.zeros(2)}
    raise OSError('disk gone')

  class It:
    def __init__(self):
      self.g = failing()

    def __next__(self):
      return next(self.g)

    def get_state(self):
      return {}

  feed = prefetch.Prefetcher({'a': It()}, lambda b: b)
  next(feed)
  for _ in range(2):  # Raised again on later calls, never a hang.
    with pytest.raises(OSError, match='disk gone'):
      next(feed)
  feed.close()


def test_close_stops_the_thread_while_the_queue_is_full():
  feed = prefetch.Prefetcher({'a': _iterator(1000)}, lambda b: b, size=1)
  time.sleep(0.2)
  feed.close()
  assert not any(t.name == 'sparse_tubes-prefetch' and t.is_alive() for t in threading.enumerate())


def test_size_must_be_positive():
  with pytest.raises(ValueError, match='at least one batch'):
    prefetch.Prefetcher({}, lambda b: b, size=0)


def test_grain_worker_processes_through_the_thread(tiny_data_dir):
  """The TPU-host layout: Grain worker processes read by the prefetch thread give the batches they
  give when read directly, and a position saved mid-way resumes the worker pipeline exactly."""
  from sparse_tubes import defaults
  from sparse_tubes.data import pipeline

  def train(workers):
    cfg = defaults.dataset(tfds_name='moving_shapes/video_tiny', kind='video', batch_size=8,
                           num_frames=8, crop_size=32, min_resize=36, max_resize=40)
    g = defaults.base().grain
    g.worker_count, g.read_threads = workers, 2
    return pipeline.train_iterator(cfg, data_dir=tiny_data_dir, seed=3, process_index=0,
                                   process_count=1, grain_cfg=g)
  it = train(2)
  reference = [next(it)['inputs'] for _ in range(5)]
  with prefetch.Prefetcher({'v': train(2)}, lambda b: b) as feed:
    got = [next(feed)['v']['inputs'] for _ in range(3)]
    saved = feed.positions()['v'].get_state()
  resumed = train(2)
  resumed.set_state(json.loads(saved.decode()))
  got += [next(resumed)['inputs'] for _ in range(2)]
  for a, b in zip(got, reference, strict=True):
    np.testing.assert_array_equal(a, b)


def test_limit_reads_no_more_batches_than_the_loop_takes():
  reference = [b['x'] for b in _iterator()]
  it = _iterator()
  with prefetch.Prefetcher({'a': it}, lambda b: b, size=2, limit=3) as feed:
    assert len(list(feed)) == 3
    time.sleep(0.2)
  np.testing.assert_array_equal(next(it)['x'], reference[3])   # the thread stopped at 3
