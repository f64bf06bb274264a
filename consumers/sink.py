"""The sink process: PULL selections from a scorer, append them to the HDF5 selections file.

The scorer pushes one SELECTION message per frame (empty when the frame had no
accepted event), so the sink sees every frame's sequence number and counts gaps.
The path blocks rather than drops (PUSH/PULL at a high-water mark). Rows are
flushed to disk at least every ``flush_interval`` seconds; END_OF_STREAM,
SIGINT and SIGTERM all end with a final flush and the ledger.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from streamflow.errors import ConfigError, StreamflowError
from streamflow.ledger import Ledger, SequenceTracker
from streamflow.selections import SelectedEvents, SelectionWriter
from streamflow.telemetry import LatencyHistogram, RateMeter, TelemetryReporter
from streamflow.transport import Receiver, check_endpoint, connect
from streamflow.wire import Kind, Message

DEFAULT_SELECTIONS_ENDPOINT = "tcp://127.0.0.1:5557"


@dataclass(frozen=True)
class SinkConfig:
    """Where selections come from and go.

    run_config: a JSON-able description of the run, stored as the file's ``config`` attribute.
    """

    endpoint: str = DEFAULT_SELECTIONS_ENDPOINT
    output: str = "selections.h5"
    telemetry: str | None = None
    run_dir: str = "."
    flush_interval: float = 1.0
    idle_timeout: float = 120.0
    name: str = "sink"

    def __post_init__(self) -> None:
        for endpoint in (self.endpoint, self.telemetry):
            if endpoint is not None:
                check_endpoint(endpoint)
        if not self.flush_interval > 0:
            raise ConfigError(f"flush interval must be positive seconds, got {self.flush_interval}")


@dataclass
class SinkStats:
    frames: int = 0
    events_in: int = 0
    written: int = 0
    stopped: bool = False
    ended_by_scorer: bool = False


def _selected(msg: Message) -> SelectedEvents:
    batch = msg.batch
    n = len(batch)
    return SelectedEvents(
        ids=np.array(batch.ids), seq=np.full(n, msg.seq, np.uint64), bits=np.array(msg.bits),
        scores=np.array(msg.scores), features=np.array(batch.features),
        labels=np.array(batch.labels) if batch.labels is not None else np.full(n, -1, np.int8),
    )


def run_sink(config: SinkConfig, stop_event: threading.Event | None = None,
             run_config: dict[str, Any] | None = None) -> tuple[SinkStats, Ledger]:
    """Write selections until END_OF_STREAM or ``stop_event``; an idle timeout is a StreamflowError."""
    stop_event = stop_event or threading.Event()
    ctx = zmq.Context()
    stats, tracker, rates = SinkStats(), SequenceTracker(), RateMeter()
    latency = LatencyHistogram()
    writer: SelectionWriter | None = None
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pub = connect(ctx, zmq.PUB, config.telemetry) if config.telemetry else None
    reporter = TelemetryReporter(config.name, publish=pub.send if pub else None,
                                 jsonl_path=run_dir / f"telemetry-{config.name}.jsonl")
    receiver = Receiver(ctx, config.endpoint, name=config.name)

    def telemetry() -> dict[str, Any]:
        return {"frames": stats.frames, "events": stats.events_in, **rates.rates(),
                "written": writer.rows_written if writer else 0, "pending": writer.pending if writer else 0,
                "latency": latency.summary(), "sequence": tracker.summary(), "rejected": receiver.rejected}

    try:
        last = time.monotonic()
        while not stop_event.is_set():
            msg = receiver.recv(timeout_ms=200)
            if msg is None:
                if time.monotonic() - last > config.idle_timeout:
                    raise StreamflowError(
                        f"no selections from {config.endpoint} for {config.idle_timeout:g} s: is the scorer running?"
                    )
            elif msg.kind == Kind.END_OF_STREAM:
                stats.ended_by_scorer = True
                break
            elif msg.kind == Kind.SELECTION:
                last = time.monotonic()
                if writer is None:
                    writer = SelectionWriter(run_dir / config.output, msg.batch.names, msg.line_names,
                                             config=run_config, flush_interval=config.flush_interval)
                tracker.observe(msg.stream_id, msg.seq)
                writer.append(_selected(msg))
                stats.frames += 1
                stats.events_in += len(msg.batch)
                rates.add(len(msg.batch))
                latency.record(time.time_ns() - msg.send_ns)
            if writer is not None:
                writer.maybe_flush()  # idle streams still reach the disk within flush_interval
            reporter.maybe_report(telemetry)
        stats.stopped = stop_event.is_set()
    finally:
        if writer is not None:
            writer.close()
            stats.written = writer.rows_written
        reporter.report(telemetry())
        reporter.close()
        receiver.close()
        if pub is not None:
            pub.close(linger=0)
        ctx.destroy(linger=0)
    ledger = Ledger()
    ledger.add("selections received", stats.events_in, f"{stats.frames} frames; {receiver.rejected} rejected")
    ledger.add("written", stats.written, f"to {run_dir / config.output}")
    ledger.details.update(sequence=tracker.summary(), missing_frames=tracker.missing_frames())
    ledger.write(run_dir / f"ledger-{config.name}.json")
    return stats, ledger
