"""Pieces every process subcommand shares: stopping cleanly on signals."""

from __future__ import annotations

import signal
import threading
from typing import Any


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so a loop can finish cleanly (checkpoint, flush, handshake).

    A second SIGINT while stopping raises KeyboardInterrupt, for a user who cannot wait.
    """
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop
