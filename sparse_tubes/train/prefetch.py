"""Host-side prefetch: the next global batches are read and put on the devices while a step runs.

A background thread draws every dataset's next host batch (Grain, numpy), turns it into global
jax.Arrays (`to_device`, an asynchronous transfer) and queues up to `size` such batches. The
training loop takes them without waiting unless the input pipeline is slower than the step, and
the loop's own host work (dispatch, logging, checkpoints, evaluation) never holds up the reading.
Decoding and augmentation release the GIL (OpenCV, numpy), so the thread runs beside the loop.

Checkpoints: the iterators run ahead of training by up to `size` + 1 batches, so their live state
is not where training is. The thread records each iterator's state right after drawing a batch,
and `positions()` hands out the states as of the last batch the loop took: what a checkpoint must
save for a resumed run to see exactly the batches an uninterrupted one would.
"""
import json
import queue
import threading
import time


class _Position:
  """An iterator state frozen as JSON; saved like the live iterator by Grain's Orbax handler
  (which writes `get_state()` of anything that is not a Grain iterator as bytes)."""

  def __init__(self, state_json: str):
    self.state_json = state_json

  def get_state(self) -> bytes:
    return self.state_json.encode()


class _Raised:
  def __init__(self, error: BaseException):
    self.error = error


_END = object()


class Prefetcher:
  """Iterator of {name: global batch}, `size` batches ahead of the loop (see the module doc).

  `wait_s` sums the time the loop waited for a batch. `limit`: how many batches the loop will
  take (None: no end); no more are read, so a short run decodes nothing it does not train on.
  Call `close()` (or use it as a context manager) when done: the thread stops after the batch it
  is reading."""

  def __init__(self, iterators: dict, to_device, size: int = 2, limit: int | None = None):
    if size < 1:
      raise ValueError(f'prefetch size {size}: at least one batch ahead.')
    self._iterators = iterators
    self._to_device = to_device
    self._queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._positions = {n: json.dumps(it.get_state(), indent=4) for n, it in iterators.items()}
    self.wait_s = 0.0
    self._done = None
    self._limit = limit
    self._thread = threading.Thread(target=self._fill, name='sparse_tubes-prefetch', daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self):
    try:
      read = 0
      while read != self._limit and not self._stop.is_set():
        read += 1
        host = {n: next(it) for n, it in self._iterators.items()}
        states = {n: json.dumps(it.get_state(), indent=4) for n, it in self._iterators.items()}
        if not self._put((self._to_device(host), states)):
          return
      self._put(_END)  # The limit (or close(): then nobody takes it).
    except StopIteration:
      self._put(_END)
    except BaseException as e:  # noqa: BLE001 - handed to the loop, raised there
      self._put(_Raised(e))

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._done is None:
      start = time.perf_counter()
      item = self._queue.get()
      self.wait_s += time.perf_counter() - start
      if item is _END or isinstance(item, _Raised):
        self._done = item  # Every later call ends (or raises) the same way.
    if self._done is _END:
      raise StopIteration
    if self._done is not None:
      raise self._done.error
    batch, self._positions = item
    return batch

  def positions(self) -> dict:
    """{name: the iterator's state after the batches handed out so far}, for `Checkpointer.save`."""
    return {n: _Position(s) for n, s in self._positions.items()}

  def close(self, timeout: float = 10.0):
    self._stop.set()
    while True:  # Unblocks a thread waiting to put.
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
