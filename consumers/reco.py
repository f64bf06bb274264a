"""The reconstruction worker: PULL raw particle frames, reconstruct, PUSH feature frames.

A worker is a receiver of the producer's RAW stream and the sender of a stream of
its own: DATA frames of the 16 LHCO stream features (streamflow.events.reco), with
the producer's event ids and labels, numbered 0, 1, 2, ... on ``stream_id``. K
workers share the producer's stream (PUSH fair-queues frames between them, each
worker accounts for the share it got); a proxy (producers/proxy.py) merges their K
streams for the scorer, which then accounts for each (a distinct ``stream_id``
per worker). Frames block at the high-water mark both ways, so back-pressure from
the scorer reaches the producer and nothing is dropped; a frame whose every event
was rejected sends nothing (the numbering stays gapless).

Its ledger places every raw event it received: reconstructed, or rejected with
the reason (streamflow.events.reco.REJECT_REASONS), or not decoded (a malformed
frame, counted by the receiver). END_OF_STREAM from the producer (or ``stop_event``)
ends it: it forwards the end downstream with its own totals, waits for the
acknowledgement, writes ``ledger-NAME.json`` and a final telemetry message.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from streamflow.errors import ConfigError, StreamflowError
from streamflow.events.particles import ParticleBatch
from streamflow.events.reco import REJECT_REASONS, RecoConfig, reconstruct
from streamflow.stream.ledger import Ledger, SequenceTracker, account_stream, stream_receivers, stream_totals
from streamflow.stream.telemetry import LatencyHistogram, RateMeter, RecoRecord, TelemetryReporter
from streamflow.stream.transport import (
    DEFAULT_ENDPOINT,
    DEFAULT_HWM,
    Curve,
    Receiver,
    Sender,
    check_endpoint,
    check_queue_options,
    check_stream_id,
    connect,
)
from streamflow.stream.wire import Kind

DEFAULT_RECO_ENDPOINT = "tcp://127.0.0.1:5570"


@dataclass(frozen=True)
class RecoWorkerConfig:
    """Where a worker reads raw frames, where it sends feature frames, and how it reconstructs.

    endpoint: the producer's data endpoint (connect); output: the endpoint this worker binds
    for the scorer or a proxy (control on port + 1); stream_id: the id of its output stream
    (give each of K workers its own). curve: connect to the producer as a CURVE client;
    output_curve: serve the output socket as a CURVE server.
    """

    endpoint: str = DEFAULT_ENDPOINT
    output: str = DEFAULT_RECO_ENDPOINT
    stream_id: int = 1
    name: str = "reco"
    telemetry: str | None = None
    run_dir: str = "."
    hwm: int = DEFAULT_HWM
    kernel_buffer: int = 0
    idle_timeout: float = 60.0
    eos_timeout: float = 60.0
    reco: RecoConfig = field(default_factory=RecoConfig)
    curve: Curve | None = None
    output_curve: Curve | None = None

    def __post_init__(self) -> None:
        for endpoint in (self.endpoint, self.output, self.telemetry):
            if endpoint is not None:
                check_endpoint(endpoint)
        if self.endpoint == self.output:
            raise ConfigError(f"the worker cannot bind {self.output}: it is also the producer endpoint it reads")
        check_stream_id(self.stream_id)
        check_queue_options(self.hwm, self.kernel_buffer)
        for name in ("idle_timeout", "eos_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be positive seconds, got {getattr(self, name)}")
        if self.curve is not None and self.curve.is_server:
            raise ConfigError("the reco worker connects to the producer: that CURVE config needs its public key file")
        if self.output_curve is not None and not self.output_curve.is_server:
            raise ConfigError("the reco worker binds its output: that CURVE config needs an authorised-keys folder")


@dataclass
class RecoStats:
    """What a worker did: raw events in, features out, rejections by reason, time in reconstruction."""

    frames_in: int = 0
    events_in: int = 0
    reconstructed: int = 0
    frames_out: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    malformed_frames: int = 0
    reco_s: float = 0.0
    cpu_s: float = 0.0  # CPU time of the worker process while it streamed (its capacity on a shared machine)
    stopped: bool = False
    error: str | None = None

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def ledger(self, name: str, account: str | None) -> Ledger:
        ledger = Ledger()
        ledger.add("reco received", self.events_in, f"{self.frames_in} raw frames by {name}; "
                   f"{self.malformed_frames} malformed frames not decoded")
        reasons = ", ".join(f"{reason} {count:,d}" for reason, count in self.rejected.items() if count)
        ledger.add("reconstructed", self.reconstructed,
                   f"rejected {self.n_rejected:,d}" + (f" ({reasons})" if reasons else ""))
        if account:
            ledger.notes.append(account)
        if self.error:
            ledger.notes.append(f"ended: {self.error}")
        ledger.details.update(rejected=self.rejected, frames_in=self.frames_in, frames_out=self.frames_out,
                              malformed_frames=self.malformed_frames, reco_s=self.reco_s, cpu_s=self.cpu_s,
                              stopped=self.stopped)
        return ledger


def _fastjet_banner_to_stderr() -> None:
    """FastJet prints its banner on stdout at a process's first clustering; stdout is for the ledger.

    One two-particle event is reconstructed with file descriptor 1 pointing at stderr.
    """
    two = ParticleBatch(ids=np.zeros(1, np.uint64), counts=np.full(1, 2, np.uint32), pt=np.array([10.0, 10.0]),
                        eta=np.zeros(2), phi=np.array([0.0, 3.0]))
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        reconstruct(two)
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def run_reco_worker(config: RecoWorkerConfig, stop_event: threading.Event | None = None) -> tuple[RecoStats, Ledger]:
    """Reconstruct until the producer's END_OF_STREAM (or ``stop_event``), then end the output stream.

    The ledger (also written to the run folder) is written however the worker ends; an idle
    timeout or a stream of the wrong kind then raises its StreamflowError.
    """
    stop_event = stop_event or threading.Event()
    _fastjet_banner_to_stderr()
    stats, tracker, rates, latency = RecoStats(), SequenceTracker(), RateMeter(), LatencyHistogram()
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = zmq.Context()
    pub = connect(ctx, zmq.PUB, config.telemetry) if config.telemetry else None
    reporter = TelemetryReporter(config.name, publish=pub.send if pub else None,
                                 jsonl_path=run_dir / f"telemetry-{config.name}.jsonl")
    account: str | None = None

    def telemetry(final: bool = False) -> RecoRecord:
        events_per_s, frames_per_s = rates.rates()
        return RecoRecord(events=stats.events_in, frames=stats.frames_in, events_per_s=events_per_s,
                          frames_per_s=frames_per_s, reconstructed=stats.reconstructed,
                          rejected_events=stats.n_rejected, rejected=receiver.rejected,
                          reco_s=round(stats.reco_s, 3), latency=latency.summary(), blocked_s=sender.blocked_s,
                          final=final)

    try:
        with Receiver(ctx, config.endpoint, name=config.name, hwm=config.hwm, kernel_buffer=config.kernel_buffer,
                      curve=config.curve) as receiver, \
                Sender(ctx, config.output, stream_id=config.stream_id, hwm=config.hwm,
                       kernel_buffer=config.kernel_buffer, curve=config.output_curve) as sender:
            last = time.monotonic()
            cpu_start = time.process_time()
            while not stop_event.is_set():
                msg = receiver.recv(timeout_ms=200)
                stats.malformed_frames = receiver.rejected
                if msg is None:
                    if time.monotonic() - last > config.idle_timeout:
                        stats.error = (f"no raw frames from {config.endpoint} for {config.idle_timeout:g} s: "
                                       f"is the producer running (with raw frames)?")
                        break
                elif msg.kind == Kind.END_OF_STREAM:
                    others = stream_receivers(msg.meta) - 1
                    account = "; ".join(
                        account_stream(tracker, sid, frames, events, other_receivers=others).render(sid)
                        for sid, (frames, events) in stream_totals(msg.meta, msg.stream_id).items())
                    break
                elif msg.kind == Kind.RAW and msg.particles is not None:
                    last = time.monotonic()
                    tracker.observe(msg.stream_id, msg.seq, len(msg.particles))
                    stats.frames_in += 1
                    stats.events_in += len(msg.particles)
                    start = time.perf_counter()
                    result = reconstruct(msg.particles, config.reco)
                    stats.reco_s += time.perf_counter() - start
                    for reason, ids in result.rejected.items():
                        stats.rejected[reason] += len(ids)
                    stats.reconstructed += len(result.events)
                    rates.add(len(msg.particles))
                    latency.record(time.time_ns() - msg.send_ns)
                    if len(result.events):
                        if not sender.send_batch(result.events, stop_event):
                            break
                        stats.frames_out += 1
                else:  # a DATA or SELECTION frame: someone pointed a feature stream at a reco worker
                    stats.error = (f"{config.endpoint} sends {msg.kind.name} frames, not RAW particle frames: "
                                   f"is it a producer with raw frames (a raw LHCO file)?")
                    break
                reporter.maybe_report(telemetry)
            stats.stopped = stop_event.is_set()
            stats.cpu_s = time.process_time() - cpu_start
            reporter.report(telemetry(final=True))
            sender.end_stream(config.eos_timeout)
    finally:
        reporter.close()
        if pub is not None:
            pub.close(linger=0)
        ctx.destroy(linger=0)
        ledger = stats.ledger(config.name, account)
        ledger.write(run_dir / f"ledger-{config.name}.json")
    if stats.error:
        raise StreamflowError(stats.error)
    return stats, ledger
