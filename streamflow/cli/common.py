"""Pieces the process subcommands share: stopping cleanly on signals, CURVE options."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from streamflow.errors import ConfigError
from streamflow.stream.delivery import DEFAULT_WINDOW, MAX_WINDOW
from streamflow.stream.transport import Curve


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so a loop can finish cleanly (checkpoint, flush, handshake).

    Every wait of a process loop looks at the event at least every 200 ms, and an END_OF_STREAM
    handshake after a stop waits at most ``transport.STOP_HANDSHAKE_S`` (10 s); a second SIGINT or
    SIGTERM while stopping raises KeyboardInterrupt, for a user (or supervisor) who cannot wait.
    """
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def metrics_options(p: argparse.ArgumentParser) -> None:
    """--metrics-port and --metrics-hold: serve Prometheus /metrics (streamflow.ops.prometheus)."""
    p.add_argument("--metrics-port", type=int, metavar="PORT", default=None,
                   help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics (default: none)")
    p.add_argument("--metrics-hold", type=float, metavar="S", default=0.0,
                   help="keep /metrics up S seconds after the run, so a scrape gets the final counts (default 0)")


def acked_options(p: argparse.ArgumentParser) -> None:
    """--acked and --ack-window: acknowledged delivery on the producer -> scorer hop (streamflow.stream.delivery)."""
    p.add_argument("--acked", action="store_true",
                   help="acknowledged delivery with redelivery (producer and scorers alike): no frame is lost "
                        "when a scorer dies")
    p.add_argument("--ack-window", type=int, default=DEFAULT_WINDOW, metavar="FRAMES",
                   help=f"with --acked: frames one scorer holds unacknowledged, 1 to {MAX_WINDOW} "
                        f"(default {DEFAULT_WINDOW})")


def curve_options(p: argparse.ArgumentParser, connects_to: str, binds: str | None) -> None:
    """--curve-secret, --curve-server-key (towards ``connects_to``) and, for a process that also
    binds a socket for others (``binds``), --curve-authorized."""
    p.add_argument("--curve-secret", metavar="FILE",
                   help="this process's NAME.key_secret (from `streamflow keys`) for CURVE")
    p.add_argument("--curve-server-key", metavar="FILE",
                   help=f"the public key (NAME.key) of the {connects_to}: connect to it under CURVE")
    if binds is not None:
        p.add_argument("--curve-authorized", metavar="DIR",
                       help=f"folder of the public keys (*.key) admitted to {binds} under CURVE")


def curves_from_args(args: argparse.Namespace) -> tuple[Curve | None, Curve | None]:
    """(client, server) CURVE configs of the options :func:`curve_options` added (None: plain).

    The client secures the connection to the sender this process reads; the server the
    socket it binds for its own receivers. Both use this process's one keypair.
    """
    authorized = getattr(args, "curve_authorized", None)
    if not (args.curve_server_key or authorized):
        if args.curve_secret:
            raise ConfigError("--curve-secret needs --curve-server-key FILE and/or --curve-authorized DIR")
        return None, None
    if not args.curve_secret:
        raise ConfigError("--curve-server-key and --curve-authorized need --curve-secret FILE (this process's key)")
    client = Curve(args.curve_secret, server_public_key_file=args.curve_server_key) if args.curve_server_key else None
    server = Curve(args.curve_secret, authorized_dir=authorized) if authorized else None
    return client, server
