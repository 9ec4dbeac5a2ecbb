"""One process: SIGTERM and a first Ctrl-C ask for a save-and-stop after the step; a second Ctrl-C
runs the abort and exits 130 at once; the previous handlers come back."""
import os
import signal

import pytest

from sparse_tubes.train import preemption


@pytest.fixture
def guard():
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  aborted = []
  g = preemption.PreemptionGuard(on_abort=lambda: aborted.append(True))
  g.aborted = aborted
  yield g
  g.restore_handler()
  assert {s: signal.getsignal(s) for s in before} == before


def test_sigterm_stops_after_the_step_without_counting_as_ctrl_c(guard):
  assert not guard.reached(1)
  os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
  assert guard.reached(2) and not guard.interrupted


def test_ctrl_c_saves_and_a_second_one_exits_at_once(guard, monkeypatch, capsys):
  exits = []

  def fake_exit(code):
    exits.append(code)
    raise SystemExit(code)

  monkeypatch.setattr(preemption.os, '_exit', fake_exit)
  monkeypatch.setattr(preemption.os, 'dup2', lambda *a: None)  # keep this test's stderr
  os.kill(os.getpid(), signal.SIGINT)
  assert guard.reached(3) and guard.interrupted and exits == []
  assert 'Ctrl-C: saving a checkpoint after this step' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    os.kill(os.getpid(), signal.SIGINT)
  assert exits == [preemption.INTERRUPTED_EXIT] == [130] and guard.aborted == [True]
  assert 'Ctrl-C again: stopping now without a checkpoint' in capsys.readouterr().err
