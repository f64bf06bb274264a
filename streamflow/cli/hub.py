"""`streamflow hub`: a telemetry hub, so several monitors and exporters can watch one pipeline's telemetry."""

from __future__ import annotations

import argparse
import sys

from consumers.monitor import DEFAULT_TELEMETRY_ENDPOINT
from consumers.telemetry_hub import DEFAULT_SUBSCRIBE_ENDPOINT, TelemetryHub
from streamflow.cli.common import stop_on_signals


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hub", help="telemetry hub: processes publish to it, any number of monitors and exporters subscribe",
        description="Bind the telemetry endpoint the processes publish to (--publish) and republish every record "
                    "on --subscribe, where any number of `streamflow monitor --connect` (dashboards, "
                    "--metrics-port exporters) listen side by side. Runs until Ctrl-C or SIGTERM.",
    )
    p.add_argument("--publish", default=DEFAULT_TELEMETRY_ENDPOINT,
                   help=f"endpoint the processes' --telemetry points at (default {DEFAULT_TELEMETRY_ENDPOINT})")
    p.add_argument("--subscribe", default=DEFAULT_SUBSCRIBE_ENDPOINT,
                   help=f"endpoint the subscribers connect to (default {DEFAULT_SUBSCRIBE_ENDPOINT})")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    stop = stop_on_signals()
    with TelemetryHub(args.publish, args.subscribe):
        print(f"streamflow hub: publishers -> {args.publish}, subscribers -> {args.subscribe}", file=sys.stderr)
        while not stop.wait(0.2):
            pass
    return 0
