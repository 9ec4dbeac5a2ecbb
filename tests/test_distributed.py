"""Multi-host start-up decisions (the multi-process run itself: tests/launch/test_local.py)."""
import logging as std_logging

import pytest

from sparse_tubes import distributed


def test_single_process_runs_never_initialize(monkeypatch):
  for var in distributed.ENV.values():
    monkeypatch.delenv(var, raising=False)
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, 'initialize', lambda *a, **k: calls.append(a))
  assert distributed.explicit_layout() is None
  assert distributed.detected_process_count() == 1     # this machine is no pod, GKE or SLURM job
  assert distributed.initialize() is False
  assert distributed.initialize('localhost:1234', 1, 0) is False   # one process: nothing to wire
  assert calls == []


def test_explicit_layout_from_flags_or_environment(monkeypatch):
  monkeypatch.setenv('SPARSE_TUBES_COORDINATOR_ADDRESS', 'localhost:9999')
  monkeypatch.setenv('SPARSE_TUBES_NUM_PROCESSES', '4')
  monkeypatch.setenv('SPARSE_TUBES_PROCESS_ID', '3')
  assert distributed.explicit_layout() == ('localhost:9999', 4, 3)
  assert distributed.explicit_layout('10.0.0.2:8476', 2, 1) == ('10.0.0.2:8476', 2, 1)
  monkeypatch.delenv('SPARSE_TUBES_PROCESS_ID')
  with pytest.raises(ValueError, match='give all three'):
    distributed.explicit_layout()
  with pytest.raises(ValueError, match=r'process_id=5 must be in \[0, num_processes=4\)'):
    distributed.explicit_layout(process_id=5)


def test_log_records_carry_the_process_index():
  record = std_logging.LogRecord('x', std_logging.WARNING, __file__, 1, 'disk %s', ('full',), None)
  distributed._ProcessPrefix().filter(record)
  distributed._ProcessPrefix().filter(record)   # once only, however many handlers see it
  assert record.getMessage() == '[process 0/1] disk full'
