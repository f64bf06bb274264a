"""The sink process: PULL selections from a scorer, append them to the HDF5 selections file.

The scorer pushes one SELECTION message per frame (empty when the frame had no
accepted event), so the sink sees every frame's sequence number and counts gaps.
The path blocks rather than drops (PUSH/PULL at a high-water mark). Rows are
flushed to disk at least every ``flush_interval`` seconds; END_OF_STREAM,
SIGINT and SIGTERM all end with a final flush and the ledger.

The sequence tracker is committed to the file with every flush, so a sink
restarted after ``kill -9`` appends to the file and sees the frames the dead sink
held unflushed, or had queued, as a sequence gap; at END_OF_STREAM the ledger
compares the sender's count of selections sent with the rows in the file, for
every stream the END_OF_STREAM totals (a proxy that merges several scorers'
selection streams totals each; streamflow.stream.ledger.stream_totals).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from streamflow.errors import ConfigError, StreamflowError
from streamflow.ops.prometheus import check_metrics, start_exporter
from streamflow.stream.acked_transport import AckedReceiver
from streamflow.stream.delivery import CONFIRM_EVERY, SELECTIONS_WINDOW
from streamflow.stream.ledger import (
    Ledger,
    SequenceTracker,
    StreamAccount,
    account_stream,
    stream_not_sent,
    stream_receivers,
    stream_totals,
)
from streamflow.stream.selections import SelectedEvents, SelectionWriter
from streamflow.stream.telemetry import LatencyHistogram, RateMeter, SinkRecord, TelemetryReporter
from streamflow.stream.transport import Curve, Receiver, check_endpoint, connect
from streamflow.stream.wire import Kind, Message

DEFAULT_SELECTIONS_ENDPOINT = "tcp://127.0.0.1:5557"
CONFIRM_IDLE_MS = 20
"""Acknowledged delivery: with selections unconfirmed, a pause this long commits and acknowledges them."""


@dataclass(frozen=True)
class SinkConfig:
    """Where selections come from and go.

    run_config: a JSON-able description of the run, stored as the file's ``config`` attribute.
    curve: connect to the scorer's selections socket as a CURVE client (None: plain sockets).
    metrics_port: serve Prometheus ``/metrics`` here (streamflow.ops.prometheus); metrics_hold:
    seconds to keep serving after the run (its ledger is written by then).
    """

    endpoint: str = DEFAULT_SELECTIONS_ENDPOINT
    output: str = "selections.h5"
    telemetry: str | None = None
    run_dir: str = "."
    flush_interval: float = 1.0
    idle_timeout: float = 120.0
    name: str = "sink"
    curve: Curve | None = None
    metrics_port: int | None = None
    metrics_hold: float = 0.0
    acked: bool = False

    def __post_init__(self) -> None:
        check_metrics(self.metrics_port, self.metrics_hold)
        for endpoint in (self.endpoint, self.telemetry):
            if endpoint is not None:
                check_endpoint(endpoint)
        if not self.flush_interval > 0:
            raise ConfigError(f"flush interval must be positive seconds, got {self.flush_interval}")
        if self.curve is not None and self.curve.is_server:
            raise ConfigError("the sink connects: its CURVE config needs the scorer's public key file")


@dataclass
class SinkStats:
    frames: int = 0
    events_in: int = 0
    written: int = 0
    rows_at_start: int = 0  # committed by an earlier sink (a restarted sink appends)
    unwritten: int = 0  # received but not written because a write failed
    stopped: bool = False
    ended_by_scorer: bool = False
    duplicates: int = 0  # redelivered selections already committed (acknowledged delivery), not written again


def _selected(msg: Message) -> SelectedEvents:
    batch = msg.batch
    assert batch is not None  # wire.decode gives every SELECTION its events
    n = len(batch)
    return SelectedEvents(
        ids=np.array(batch.ids), seq=np.full(n, msg.seq, np.uint64), bits=np.array(msg.bits),
        passed=np.array(msg.passed),
        scores=np.array(msg.scores), features=np.array(batch.features),
        labels=np.array(batch.labels) if batch.labels is not None else np.full(n, -1, np.int8),
    )


def run_sink(config: SinkConfig, stop_event: threading.Event | None = None,
             run_config: dict[str, Any] | None = None) -> tuple[SinkStats, Ledger]:
    """Write selections until END_OF_STREAM or ``stop_event``.

    An idle timeout or a failed write (disk full) ends the run with the file closed
    at its last committed row and the ledger written, then raises its StreamflowError.
    """
    stop_event = stop_event or threading.Event()
    ctx = zmq.Context()
    stats, tracker, rates = SinkStats(), SequenceTracker(), RateMeter()
    latency = LatencyHistogram()
    exporter = start_exporter(config.name, config.metrics_port, latency)
    writer: SelectionWriter | None = None
    accounts: dict[int, StreamAccount] = {}
    error: str | None = None
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pub = connect(ctx, zmq.PUB, config.telemetry) if config.telemetry else None
    reporter = TelemetryReporter(config.name, publish=pub.send if pub else None,
                                 jsonl_path=run_dir / f"telemetry-{config.name}.jsonl",
                                 observers=[exporter.observe] if exporter else [])
    receiver: Receiver | AckedReceiver = (
        AckedReceiver(ctx, config.endpoint, name=config.name, window=SELECTIONS_WINDOW, curve=config.curve)
        if config.acked else Receiver(ctx, config.endpoint, name=config.name, curve=config.curve))
    unconfirmed: list[tuple[int, int]] = []  # acked: (stream id, seq) received, acknowledged after a flush
    confirm_by = math.inf

    def confirm() -> None:
        """Commit what arrived (a flush), then acknowledge it: the scorer may forget it."""
        nonlocal confirm_by
        if writer is not None:
            writer.flush()
        assert isinstance(receiver, AckedReceiver)
        for sid, seq in unconfirmed:
            receiver.acknowledge(sid, seq)
        unconfirmed.clear()
        confirm_by = math.inf

    def telemetry() -> SinkRecord:
        events_per_s, frames_per_s = rates.rates()
        return SinkRecord(frames=stats.frames, events=stats.events_in, events_per_s=events_per_s,
                          frames_per_s=frames_per_s, written=writer.rows_written if writer else 0,
                          pending=writer.pending if writer else 0, latency=latency.summary(),
                          sequence=tracker.summary(), rejected=receiver.rejected)

    try:
        last = time.monotonic()
        while not stop_event.is_set():
            msg = receiver.recv(timeout_ms=CONFIRM_IDLE_MS if config.acked else 200)
            if msg is None:
                if unconfirmed:
                    confirm()
                if time.monotonic() - last > config.idle_timeout:
                    error = (f"no selections from {config.endpoint} for {config.idle_timeout:g} s: "
                             "is the scorer running?")
                    break
            elif msg.kind == Kind.END_OF_STREAM:
                stats.ended_by_scorer = True
                if writer is not None:
                    writer.flush()  # the account compares the sender's totals with committed rows
                    others = stream_receivers(msg.meta) - 1
                    skipped = stream_not_sent(msg.meta)  # frames its scorer never had: no selection
                    accounts = {sid: account_stream(tracker, sid, frames, events, other_receivers=others,
                                                    not_sent=skipped.get(sid))
                                for sid, (frames, events) in stream_totals(msg.meta, msg.stream_id).items()}
                break
            elif msg.kind == Kind.SELECTION:
                last = time.monotonic()
                batch = msg.batch
                assert batch is not None and msg.line_names is not None  # wire.decode checks a SELECTION's parts
                if writer is None:
                    writer = SelectionWriter(run_dir / config.output, batch.names, msg.line_names,
                                             config=run_config, flush_interval=config.flush_interval,
                                             state=lambda: {"sequence": tracker.state_dict()})
                    tracker.load_state_dict(writer.committed_state.get("sequence", {}))
                    stats.rows_at_start = writer.rows_written
                if config.acked:
                    unconfirmed.append((msg.stream_id, msg.seq))
                    confirm_by = min(confirm_by, last + config.flush_interval)
                if config.acked and tracker.seen(msg.stream_id, msg.seq):
                    stats.duplicates += 1
                else:
                    tracker.observe(msg.stream_id, msg.seq, len(batch))
                    stats.frames += 1
                    stats.events_in += len(batch)
                    rates.add(len(batch))
                    latency.record(time.time_ns() - msg.send_ns)
                    writer.append(_selected(msg))
                if unconfirmed and (len(unconfirmed) >= CONFIRM_EVERY or last >= confirm_by):
                    confirm()
            if writer is not None:
                writer.maybe_flush()  # idle streams still reach the disk within flush_interval
            reporter.maybe_report(telemetry)
        stats.stopped = stop_event.is_set()
    except StreamflowError as exc:  # a failed write: the file keeps its committed rows
        error = str(exc)
    finally:
        if writer is not None:
            stats.unwritten = writer.pending if writer.broken else 0
            writer.close()
            stats.written = writer.rows_written - stats.rows_at_start
        reporter.report(telemetry())
        reporter.close()
        receiver.close()
        if pub is not None:
            pub.close(linger=0)
        ctx.destroy(linger=0)
    ledger = Ledger()
    ledger.add("selections received", stats.events_in, f"{stats.frames} frames; {receiver.rejected} rejected"
               + (f"; {stats.duplicates} redelivered frames already committed, not written again"
                  if stats.duplicates else ""))
    ledger.add("written", stats.written, f"to {run_dir / config.output}"
               + (f"; {stats.unwritten} not written (write failed)" if stats.unwritten else ""))
    ledger.details.update(sequence=tracker.summary(), missing_frames=tracker.missing_frames(),
                          rows_at_start=stats.rows_at_start, unwritten=stats.unwritten, rejected=receiver.rejected,
                          duplicates_suppressed=stats.duplicates,
                          streams={sid: a.to_dict() for sid, a in accounts.items()},  # "stream": the only one's
                          stream=next(iter(accounts.values())).to_dict() if len(accounts) == 1 else None)
    if stats.rows_at_start:
        ledger.notes.append(f"appended to {stats.rows_at_start:,d} rows a previous sink committed")
    ledger.notes += [account.render(sid) + " (processed = committed to the file)" for sid, account in accounts.items()]
    if error:
        ledger.notes.append(f"ended: {error}")
    ledger.write(run_dir / f"ledger-{config.name}.json")
    if exporter is not None:
        exporter.close(hold=config.metrics_hold)
    if error:
        raise StreamflowError(error)
    return stats, ledger
