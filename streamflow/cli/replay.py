"""`streamflow replay`: stream an event source to ZeroMQ receivers, paced and framed.

Options override a ``[replay]`` table of ``--config FILE``. The first Ctrl-C (or
SIGTERM) ends the stream cleanly: the receivers still get END_OF_STREAM; a second
Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

from producers.replay import ReplayConfig, ReplayStats, run_replay
from streamflow.cli.common import acked_options, metrics_options, stop_on_signals
from streamflow.config import load_toml
from streamflow.errors import ConfigError
from streamflow.ops.prometheus import MetricsExporter, check_metrics, start_exporter
from streamflow.stream.delivery import DEFAULT_ACK_TIMEOUT_S, DEFAULT_MAX_UNACKED, DeliveryConfig, DeliveryCounts
from streamflow.stream.pacing import MAX_FRAME_EVENTS
from streamflow.stream.telemetry import ProducerRecord
from streamflow.stream.transport import DEFAULT_HWM, MAX_HWM, MAX_KERNEL_BUFFER, Curve

Progress = Callable[[int, int, bool], None]

_OPTIONS = ("rate", "frame_size", "signal_fraction", "events", "loop", "seed", "endpoint", "stream_id",
            "eos_timeout", "hwm", "kernel_buffer", "raw")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay", help="replay events (file, synthetic or gaussian) to ZeroMQ receivers",
        description=__doc__.split("\n\n")[0])
    p.add_argument("source", nargs="?", help="LHCO features/raw .h5 file, 'synthetic' or 'gaussian' "
                   "(default: synthetic)")
    p.add_argument("--config", metavar="TOML", help="read defaults from this file's [replay] table")
    p.add_argument("--rate", metavar="EVENTS_PER_S", help="target event rate, or 'max' (default)")
    p.add_argument("--frame-size", type=int, metavar="N",
                   help=f"events per frame, 1 to {MAX_FRAME_EVENTS:,} (default 4096)")
    p.add_argument("--signal-fraction", type=float, metavar="F", help="fraction of signal events to inject")
    p.add_argument("--events", type=int, metavar="N", help="stop after N events (streamed: any number)")
    p.add_argument("--loop", action="store_const", const=True, help="start the source again when it ends")
    p.add_argument("--raw", action="store_const", const=True,
                   help="send a raw LHCO file's particle events as RAW frames, for `streamflow reco` workers")
    p.add_argument("--seed", type=int, help="random seed of the source (default 0)")
    p.add_argument("--endpoint", help="data endpoint to bind (default tcp://127.0.0.1:5555; control on "
                   "port+1, or PATH.ctl for ipc://PATH)")
    p.add_argument("--stream-id", type=int, help="stream id stamped on every frame (default 0)")
    p.add_argument("--eos-timeout", type=float, metavar="S",
                   help="seconds to wait for receivers to acknowledge END_OF_STREAM (default 10)")
    p.add_argument("--hwm", type=int, metavar="FRAMES",
                   help=f"frames queued before sends block, 1 to {MAX_HWM:,} (default {DEFAULT_HWM})")
    p.add_argument("--kernel-buffer", type=int, metavar="BYTES",
                   help=f"cap the OS socket buffers, at most {MAX_KERNEL_BUFFER:,} bytes: fewer frames queued "
                        "beyond --hwm (default: the OS default)")
    p.add_argument("--curve-secret", metavar="FILE",
                   help="CURVE-secure the stream with this NAME.key_secret (from `streamflow keys`); "
                        "needs --curve-authorized")
    p.add_argument("--curve-authorized", metavar="DIR",
                   help="folder of the public keys (*.key) of the receivers admitted under CURVE")
    acked_options(p)
    p.add_argument("--max-unacked", type=int, default=DEFAULT_MAX_UNACKED, metavar="FRAMES",
                   help="with --acked: frames kept for redelivery until acknowledged; the producer blocks "
                        f"when they are this many (default {DEFAULT_MAX_UNACKED})")
    p.add_argument("--ack-timeout", type=float, default=DEFAULT_ACK_TIMEOUT_S, metavar="S",
                   help="with --acked: a frame unacknowledged this long is sent again and its receiver dropped "
                        f"(default {DEFAULT_ACK_TIMEOUT_S:g})")
    metrics_options(p)
    p.set_defaults(func=run)


def parse_rate(text: str) -> float | None:
    """'max' -> None (as fast as possible), else a positive number of events/s."""
    if text.strip().lower() == "max":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"bad --rate {text!r}: expected events per second or 'max'") from None


def config_from_args(args: argparse.Namespace) -> ReplayConfig:
    base = load_toml(ReplayConfig, args.config, "replay") if args.config else ReplayConfig()
    overrides: dict[str, Any] = {name: getattr(args, name) for name in _OPTIONS
                                 if getattr(args, name) is not None}
    if args.source is not None:
        overrides["source"] = args.source
    if "rate" in overrides:
        overrides["rate"] = parse_rate(overrides["rate"])
    if args.curve_secret or args.curve_authorized:
        if not (args.curve_secret and args.curve_authorized):
            raise ConfigError("--curve-secret FILE and --curve-authorized DIR go together")
        overrides["curve"] = Curve(args.curve_secret, authorized_dir=args.curve_authorized)
    if args.acked:
        overrides["delivery"] = DeliveryConfig(window=args.ack_window, max_unacked=args.max_unacked,
                                               ack_timeout_s=args.ack_timeout)
    return dataclasses.replace(base, **overrides)


def _progress_bar() -> tuple[Callable[[int, int, bool], None], Callable[[], None]]:
    """A rich live line (events sent, rate) refreshed at most 10 times a second, and its closer."""
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]replay[/] {task.fields[events]:,} events, {task.fields[frames]:,} frames, "
                              "{task.fields[rate]:,.0f} events/s"), TimeElapsedColumn(), transient=True)
    task = bar.add_task("replay", events=0, frames=0, rate=0.0)
    bar.start()
    start = last = time.monotonic()

    def update(events: int, frames: int, sent_all: bool) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 0.1 or sent_all:
            last = now
            bar.update(task, events=events, frames=frames, rate=events / max(now - start, 1e-9))

    return update, bar.stop


def summary(stats: ReplayStats) -> str:
    receivers = ", ".join(f"{name}: {meta.get('events', '?')} events" for name, meta in stats.eos.acks.items())
    return (f"replayed {stats.events} events in {stats.frames} frames in {stats.seconds:.3f} s "
            f"({stats.rate:,.0f} events/s, {stats.blocked_s:.3f} s blocked on receivers); "
            f"END_OF_STREAM acknowledged by {receivers}"
            + (f"; {delivery_line(stats.delivery)}" if stats.delivery else ""))


def delivery_line(counts: DeliveryCounts) -> str:
    """Acknowledged delivery's account in one line."""
    return (f"acknowledged {counts.acked:,d} of {counts.sent:,d} frames, redelivered {counts.redelivered:,d}; "
            f"receivers lost {counts.receivers_lost}, timed out {counts.receivers_timed_out}; "
            f"acknowledgements duplicate {counts.duplicate_acks}, unknown {counts.unknown_acks}, "
            f"late {counts.late_acks}")


def _exporting(exporter: MetricsExporter | None, update: Progress | None) -> Progress | None:
    """The progress callback that also hands the producer's counts to ``exporter`` (a ProducerRecord)."""
    if exporter is None:
        return update

    def progress(events: int, frames: int, sent_all: bool) -> None:
        exporter.observe(ProducerRecord(events=events, frames=frames, sent_all=sent_all).to_json())
        if update is not None:
            update(events, frames, sent_all)

    return progress


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    check_metrics(args.metrics_port, args.metrics_hold)
    stop = stop_on_signals()
    update, close = _progress_bar() if sys.stderr.isatty() else (None, lambda: None)
    exporter = start_exporter("producer", args.metrics_port)
    try:
        stats = run_replay(config, stop, _exporting(exporter, update))
    finally:
        close()
        if exporter is not None:
            exporter.close(hold=args.metrics_hold)
    print(summary(stats))
    if stats.stopped:
        print("streamflow replay: interrupted; the stream was ended cleanly", file=sys.stderr)
        return 130
    return 0
