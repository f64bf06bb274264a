"""K scorer ranks on this machine without torchrun: ``streamflow consume --ranks K``.

Starts the same command K times with a torchrun-style environment
(streamflow.distributed.local_group_env), so each process joins the group as one
rank (see consumers/scorer.py), and waits for all of them. Each rank reports its
own one-line errors; if one fails, the others -- which would otherwise wait in a
collective for ever -- are stopped (SIGTERM, then SIGKILL after a grace period).
A signal to this process is passed on to the ranks, which stop cleanly.
Across machines, use torchrun (README, "How to scale out").
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from streamflow.distributed import local_group_env

STOP_GRACE_S = 10.0
"""How long ranks get to stop after SIGTERM before they are killed."""


def run_local_ranks(command: Sequence[str], ranks: int) -> int:
    """Run ``command`` as ``ranks`` ranks; 0 if all succeed, else the first failing rank's exit code."""
    procs = [subprocess.Popen(list(command), env={**os.environ, **env}) for env in local_group_env(ranks)]

    def forward(signum: int, frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(proc.poll() is None for proc in procs):
            if any(proc.returncode not in (None, 0) for proc in procs):
                _stop(procs)
                break
            time.sleep(0.2)
        failed = [proc.returncode for proc in procs if proc.returncode != 0]
        return failed[0] if failed else 0
    finally:
        _stop(procs)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to the ranks still running, SIGKILL to those still running after the grace period."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
