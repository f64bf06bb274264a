"""Test helpers: free local ports and running the `streamflow` command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STREAMFLOW = [sys.executable, "-m", "streamflow.cli.main"]


def free_port_block(size: int = 6) -> int:
    """A base port P with P..P+size-1 all free on 127.0.0.1 (checked by binding each)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no block of free ports")


def streamflow(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run `streamflow ARGS` to completion, capturing its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*STREAMFLOW, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=kwargs.pop("cwd", REPO), env=env, **kwargs)
