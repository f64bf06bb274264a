"""`streamflow monitor`: a live dashboard of a running pipeline's telemetry."""

from __future__ import annotations

import argparse

from consumers.monitor import DEFAULT_TELEMETRY_ENDPOINT, run_monitor
from streamflow.cli.common import stop_on_signals
from streamflow.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor", help="live dashboard of rates, latency, trigger lines and losses",
        description="Listen for the telemetry of producers, scorers and sinks and draw a live dashboard "
                    "(q or Ctrl-C quits), or print one plain line per interval when not on a terminal.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--endpoint", default=DEFAULT_TELEMETRY_ENDPOINT,
                       help="telemetry endpoint to bind; processes publish to it, and this monitor is their one "
                            f"listener (default {DEFAULT_TELEMETRY_ENDPOINT})")
    where.add_argument("--connect", metavar="ENDPOINT",
                       help="instead, connect to a telemetry hub's subscriber endpoint (`streamflow run`'s: its "
                            "base port + 5; `streamflow hub`'s --subscribe), beside any other monitors and exporters")
    p.add_argument("--plain", action="store_true", help="plain text lines even on a terminal")
    p.add_argument("--duration", type=float, metavar="S", help="exit after S seconds")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="seconds between plain lines (default 1; the dashboard redraws 4 times a second)")
    p.add_argument("--exit-after-idle", type=float, metavar="S", dest="idle_exit",
                   help="exit once no message has arrived for S seconds (after the first one)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="also serve every process's telemetry as Prometheus metrics on "
                        "http://0.0.0.0:PORT/metrics (default: none)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    for option, value in (("--duration", args.duration), ("--interval", args.interval),
                          ("--exit-after-idle", args.idle_exit)):
        if value is not None and not value > 0:
            raise ConfigError(f"{option} must be positive seconds, got {value:g}")
    run_monitor(args.connect or args.endpoint, plain=args.plain, duration=args.duration, idle_exit=args.idle_exit,
                stop_event=stop_on_signals(), interval=args.interval, metrics_port=args.metrics_port,
                connect_to_hub=args.connect is not None)
    return 0
