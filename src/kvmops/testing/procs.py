"""Stopping the helper processes tests and benchmarks start (exporters, servers,
Prometheus): politely first, then for sure, so none outlives its run."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
                 timeout_s: float = 20.0) -> None:
    """Send ``sig`` to a still-running ``proc``, wait ``timeout_s``, then kill it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
