"""`personaagent serve`'s last shutdown step: whatever the stack left behind is stopped, stubborn or not."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from personaagent.cli import _stop_processes

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def _spawn(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"  # its handler is in place
    return proc


def test_leftovers_are_stopped_and_named(capsys) -> None:
    polite = _spawn("import time; print('ready', flush=True); time.sleep(60)")
    stubborn = _spawn(IGNORES_SIGTERM)
    handles = [psutil.Process(polite.pid), psutil.Process(stubborn.pid)]
    started = time.monotonic()
    _stop_processes(handles, grace_s=0.5)
    took = time.monotonic() - started
    # psutil reaped them (our children here, as the stack's processes are the CLI's).
    assert [h.is_running() for h in handles] == [False, False]
    assert took < 5
    said = capsys.readouterr().out
    assert "stopped 2 leftover process(es)" in said and "1 needed SIGKILL" in said
    assert f"[{stubborn.pid}]" in said


def test_nothing_left_says_nothing(capsys) -> None:
    gone = _spawn("print('ready', flush=True)")
    handle = psutil.Process(gone.pid)
    gone.wait()
    _stop_processes([handle], grace_s=0.1)
    assert capsys.readouterr().out == ""
