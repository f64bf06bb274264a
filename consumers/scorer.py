"""The scorer process: PULL frames, test-then-train, trigger, push selections to the sink.

Per frame: decode (zero-copy), hand it to
:class:`streamflow.scoring.stream_scorer.StreamScorer` (sequence check, score with
every learner, select, learn, count), journal it, send the frame's accepted events
as one SELECTION message (empty ones too: the sink counts frames by them;
streamflow.scoring.selection), record the frame's latency from the producer's send
time, checkpoint every ``checkpoint_every`` frames (streamflow.scoring.durability,
which also explains crash recovery), and publish telemetry about twice a second.
END_OF_STREAM, SIGINT, SIGTERM, the idle timeout and a sink that takes nothing for
the idle timeout all end the loop the same way: a last learning step, a checkpoint,
the selections stream ended with its own handshake (not to a stuck sink), and the
ledger, with what the sink confirmed (the idle timeout and a failed sink then exit
with their one-line error). This module holds the sockets and the loops; everything
else is in the library, testable without sockets.

Data-parallel (started by torchrun with WORLD_SIZE > 1, see streamflow.distributed):
every rank pulls its own frames, and the ranks work in rounds -- each round every
rank processes the frame it received, or an empty one, so that all of them take
part in every learning step and threshold sum. A round begins with one small sum
of (has a frame, ended, stopped, idle, schema unknown, quiet since another rank
ended), so the ranks decide together when the stream is over. Per-rank files carry
``-rank<r>`` in their names; rank 0 writes the one checkpoint (all ranks resume
from it) and the merged ledger (streamflow.scoring.rank_merge).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import zmq

from streamflow.distributed import Collective, init_collective, rank_endpoint
from streamflow.errors import ConfigError, StreamflowError
from streamflow.events.batch import EventBatch
from streamflow.ops.prometheus import check_metrics, start_exporter
from streamflow.scoring.durability import CHECKPOINT_SUFFIX, Durability
from streamflow.scoring.frame_scorer import ScorerConfig, resolve_device
from streamflow.scoring.rank_merge import merged_ledger
from streamflow.scoring.selection import selection_parts
from streamflow.scoring.stream_scorer import ConsumeStats, Intake, StreamScorer
from streamflow.stream.acked_transport import AckedReceiver, AckedSender
from streamflow.stream.delivery import DEFAULT_WINDOW, MAX_WINDOW, SELECTIONS_WINDOW, DeliveryConfig
from streamflow.stream.ledger import Ledger
from streamflow.stream.telemetry import ScorerRecord, TelemetryReporter
from streamflow.stream.transport import (
    DEFAULT_ENDPOINT,
    DEFAULT_HWM,
    Curve,
    DownstreamStuck,
    HandshakeError,
    Receiver,
    Sender,
    check_endpoint,
    check_queue_options,
    connect,
)
from streamflow.stream.wire import Kind, Message


@dataclass(frozen=True)
class ConsumeConfig:
    """How a scorer process runs (its learners and lines are in ``scorer``).

    selections: endpoint the scorer binds to push accepted events to a sink (None: none).
    telemetry: endpoint of a monitor's SUB socket to publish stats to (None: only the JSON lines file).
    idle_timeout: seconds without any frame before the scorer gives up with a clear error.
    curve: connect to the producer as a CURVE client (None: plain sockets).
    selections_curve: serve the selections socket under CURVE, admitting only authorised sinks.
    metrics_port: serve Prometheus ``/metrics`` here (streamflow.ops.prometheus; rank r of
    data-parallel ranks on metrics_port + r); metrics_hold: seconds to keep serving after the run.
    acked: take frames by acknowledged delivery (the producer runs it too; a lone scorer only),
    holding at most ``ack_window`` unacknowledged: each frame is acknowledged once scored and
    journalled (with a sink, once the sink committed its selection), and a redelivered frame
    handled before is acknowledged without being scored again (StreamScorer.already_processed). The selections go to the
    sink (run with ``--acked`` too) by acknowledged delivery as well: kept until the sink
    has committed them, sent again to a sink that restarts.
    """

    scorer: ScorerConfig
    endpoint: str = DEFAULT_ENDPOINT
    selections: str | None = None
    telemetry: str | None = None
    run_dir: str = "."
    checkpoint_every: int = 200
    resume: bool = False
    idle_timeout: float = 60.0
    eos_timeout: float = 30.0
    hwm: int = DEFAULT_HWM
    kernel_buffer: int = 0  # bytes of OS socket buffer (0: OS default)
    name: str = "scorer"
    curve: Curve | None = None
    selections_curve: Curve | None = None
    metrics_port: int | None = None
    metrics_hold: float = 0.0
    acked: bool = False
    ack_window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        check_metrics(self.metrics_port, self.metrics_hold)
        if not 1 <= self.ack_window <= MAX_WINDOW:
            raise ConfigError(f"ack window must be 1 to {MAX_WINDOW} frames, got {self.ack_window}")
        for endpoint in (self.endpoint, self.selections, self.telemetry):
            if endpoint is not None:
                check_endpoint(endpoint)
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0 frames, got {self.checkpoint_every}")
        if not self.idle_timeout > 0:
            raise ConfigError(f"idle timeout must be positive seconds, got {self.idle_timeout}")
        check_queue_options(self.hwm, self.kernel_buffer)
        if self.curve is not None and self.curve.is_server:
            raise ConfigError("the scorer connects: its CURVE config needs the producer's public key file")
        if self.selections_curve is not None and not self.selections_curve.is_server:
            raise ConfigError("the scorer binds its selections socket: "
                              "its CURVE config needs an authorised-keys folder")
        if self.selections_curve is not None and self.selections is None:
            raise ConfigError("a CURVE config for the selections socket needs a selections endpoint (--selections)")

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.run_dir) / f"{self.name}{CHECKPOINT_SUFFIX}"


SELECTIONS_DELIVERY = DeliveryConfig(window=SELECTIONS_WINDOW, max_unacked=4 * SELECTIONS_WINDOW)
"""Acknowledged delivery to a sink (``acked``): a sink acknowledges a SELECTION once a flush has committed it,
in batches, so its window is wider than a scorer's."""


class _ScorerLoop:
    """One scorer process (or rank): its sockets around a :class:`StreamScorer`; :func:`run_consume` drives it."""

    def __init__(self, config: ConsumeConfig, ctx: zmq.Context, collective: Collective,
                 stop_event: threading.Event) -> None:
        self.stop_event = stop_event
        """Set by a signal: a send blocked on a full selections queue gives up."""
        checkpoint_path = config.checkpoint_path  # one checkpoint, whatever the rank
        if collective.world_size > 1:
            rank = collective.rank
            config = dataclasses.replace(
                config, name=f"{config.name}-rank{rank}", scorer=dataclasses.replace(
                    config.scorer, device=str(collective.device)),
                selections=rank_endpoint(config.selections, rank) if config.selections else None)
        self.config = config
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.state = StreamScorer(config.scorer, collective)
        port = config.metrics_port
        self.exporter = start_exporter(config.name, port + collective.rank if port else port, self.state.latency)
        self.durability = Durability(checkpoint_path, run_dir / f"{config.name}.journal", config.name)
        self.durability.start(self.state, config.resume)
        if config.acked and collective.world_size > 1:
            raise ConfigError("acknowledged delivery (--acked) is for a lone scorer: data-parallel ranks "
                              "take frames in rounds")
        self.receiver: Receiver | AckedReceiver = (
            AckedReceiver(ctx, config.endpoint, name=config.name, window=config.ack_window, curve=config.curve)
            if config.acked else Receiver(ctx, config.endpoint, name=config.name, hwm=config.hwm,
                                          kernel_buffer=config.kernel_buffer, curve=config.curve))
        self.uncommitted: dict[tuple[int, int], tuple[int, int]] = {}
        """Acknowledged to a sink: frame -> (events, selected) whose selection the sink has not committed yet."""
        self.selections: Sender | AckedSender | None = None
        if config.selections and config.acked:
            self.selections = AckedSender(ctx, config.selections, delivery=SELECTIONS_DELIVERY,
                                          curve=config.selections_curve, on_settled=self._committed)
        elif config.selections:
            self.selections = Sender(ctx, config.selections, hwm=config.hwm, curve=config.selections_curve)
        self._pub = connect(ctx, zmq.PUB, config.telemetry) if config.telemetry else None
        self.reporter = TelemetryReporter(
            config.name, publish=self._pub.send if self._pub else None,
            jsonl_path=run_dir / f"telemetry-{config.name}.jsonl",
            observers=[self.exporter.observe] if self.exporter else [],
        )

    def on_frame(self, msg: Message, batch: EventBatch) -> None:
        """Score, select and learn one frame (``msg``'s ``batch``); journal it; send its selections.

        Acknowledged to a sink, the frame is journalled once the sink has committed its selection
        (:meth:`_committed`), so a journalled frame's selection is in the sink's file."""
        result = self.state.on_frame(batch, msg.stream_id, msg.seq)
        if self.selections is None:
            self.durability.record(msg.stream_id, msg.seq, len(batch))
        else:
            key = (msg.stream_id, msg.seq)
            parts, accepted = selection_parts(batch, result, self.config.scorer.lines,
                                              seq=msg.seq, stream_id=msg.stream_id, send_ns=msg.send_ns)
            if isinstance(self.selections, AckedSender):
                self.uncommitted[key] = (len(batch), accepted)
                self._send_selection(parts, accepted, key)
            else:
                self.durability.record(msg.stream_id, msg.seq, len(batch), accepted)  # before it goes (durability)
                if self._send_selection(parts, accepted, key):
                    self.state.selection_sent(msg.stream_id, accepted)
        self.state.on_frame_done(msg.send_ns)

    def on_delivered(self, msg: Message, batch: EventBatch) -> None:
        """:meth:`on_frame` and, under acknowledged delivery, the frame's acknowledgement to the producer:
        at once without a sink, once the sink committed its selection with one (:meth:`_committed`). A
        redelivered frame handled before (by this process or a killed lifetime) is only acknowledged."""
        if not isinstance(self.receiver, AckedReceiver):
            self.on_frame(msg, batch)
            return
        key = (msg.stream_id, msg.seq)
        if self.state.already_processed(*key):
            self.state.stats.duplicates_suppressed += 1
            if key in self.uncommitted:
                return  # acknowledged when the sink commits it
        else:
            self.on_frame(msg, batch)
            if isinstance(self.selections, AckedSender):
                return
        self.receiver.acknowledge(*key)

    def _committed(self, key: tuple[int, int]) -> None:
        """The sink committed frame ``key``'s selection: journal the frame, count it, acknowledge it upstream."""
        handled = self.uncommitted.pop(key, None)
        if handled is None:
            return
        events, accepted = handled
        self.durability.record(*key, events, accepted)
        self.state.selection_sent(key[0], accepted)
        if isinstance(self.receiver, AckedReceiver):
            self.receiver.acknowledge(*key)

    def pump(self) -> None:
        """Read the sink's acknowledgements (acknowledged delivery), so that frames are acknowledged upstream."""
        if isinstance(self.selections, AckedSender):
            self.selections.pump(0)

    def _send_selection(self, parts: list[Any], accepted: int, key: tuple[int, int]) -> bool:
        """Push one SELECTION message; False if a stop or a stuck sink kept it from going. A sink that
        takes nothing for the idle timeout (gone, or wedged) is kept for the ledger and the exit, and
        stops the loop as a signal would (data-parallel ranks vote on it), without the handshake."""
        assert self.selections is not None
        try:
            if isinstance(self.selections, AckedSender):  # kept until the sink has committed it
                return self.selections.send(parts, accepted, self.stop_event, key=key,
                                            give_up_s=self.config.idle_timeout)
            return self.selections.send(parts, accepted, self.stop_event, give_up_s=self.config.idle_timeout)
        except DownstreamStuck as exc:
            self.state.stats.sink_error = f"the sink stopped taking selections: {exc}"
            self.stop_event.set()
            return False

    def end_selections(self) -> None:
        """END_OF_STREAM to the sink(s) with the totals they account against; what they acknowledged
        goes to the ledger, a failed handshake to ``stats.sink_error``."""
        assert self.selections is not None
        stats = self.state.stats
        if stats.sink_error is not None:
            return  # a stuck sink would not acknowledge: do not wait for it again
        streams, shared_by, extra = self.state.sink_totals()
        try:
            eos = self.selections.end_stream(self.config.eos_timeout, streams=streams, shared_by=shared_by,
                                             stop_event=self.stop_event, extra=extra)
        except HandshakeError as exc:
            stats.sink_error = str(exc)
        else:
            stats.sink_confirmed = eos.acked_events

    def checkpoint(self) -> None:
        """Save the checkpoint; acknowledged to a sink, once the sink committed every selection sent
        (a checkpointed frame's selection is then in the sink's file)."""
        if isinstance(self.selections, AckedSender) and self.state.stats.sink_error is None:
            try:
                self.selections.drain(self.config.idle_timeout, self.stop_event)
            except DownstreamStuck as exc:
                self.state.stats.sink_error = f"the sink stopped acknowledging selections: {exc}"
                self.stop_event.set()
        self.durability.checkpoint(self.state)

    def telemetry(self) -> ScorerRecord:
        return self.state.telemetry(self.receiver.rejected, self.selections.blocked_s if self.selections else 0.0)

    def idle(self, where: str = "") -> None:
        """End with the idle timeout's error (ranks decide it together: rank 0 raises it); ``where``
        says on which ranks."""
        self.state.stats.idle_error = (f"no frame from {self.config.endpoint}{where} for "
                                       f"{self.config.idle_timeout:g} s: is the producer running?")

    def ledger(self) -> Ledger:
        receiver = self.receiver
        intake = Intake(receiver.events, receiver.frames, receiver.rejected, receiver.last_error)
        return self.state.ledger(intake, sink=self.selections is not None)

    def close(self) -> None:
        self.state.close()
        self.durability.close()
        self.receiver.close()
        if self.selections is not None:
            self.selections.close()
        if self._pub is not None:
            self._pub.close(linger=0)
        self.reporter.close()
        if self.exporter is not None:
            self.exporter.close(hold=self.config.metrics_hold)


def _alone(loop: _ScorerLoop, stop_event: threading.Event) -> None:
    """The loop of a scorer on its own: frame by frame until END_OF_STREAM, a stop or the idle timeout."""
    config = loop.config
    last_frame = time.monotonic()
    while not stop_event.is_set():
        msg = loop.receiver.recv(timeout_ms=20 if loop.uncommitted else 200)
        loop.pump()
        if msg is None:
            if time.monotonic() - last_frame > config.idle_timeout:
                loop.idle()
                break
        elif msg.kind == Kind.END_OF_STREAM:
            loop.state.end_of_stream(msg.meta, msg.stream_id)
            break
        elif msg.kind == Kind.DATA and msg.batch is not None:
            last_frame = time.monotonic()
            scored = loop.state.scorer.frames
            loop.on_delivered(msg, msg.batch)
            every = config.checkpoint_every
            if every and loop.state.scorer.frames != scored and loop.state.scorer.frames % every == 0:
                loop.checkpoint()
        loop.reporter.maybe_report(loop.telemetry)


_ROUND_WAIT_MS = 20
"""How long a data-parallel rank waits for a frame before joining a round without one."""
END_GRACE_S = 5.0
"""Once one rank has END_OF_STREAM, the ranks stop after this long without a frame anywhere: a
rank that joined after the producer's handshake ended never gets an END_OF_STREAM of its own."""


def _in_rounds(loop: _ScorerLoop, collective: Collective, stop_event: threading.Event) -> None:
    """The loop of a data-parallel rank: rounds of one frame (or none) per rank, decided together."""
    config = loop.config
    ended = False
    names: tuple[str, ...] | None = None
    last_frame = time.monotonic()
    rounds = 0
    some_ended = False
    while True:
        msg = None if ended or stop_event.is_set() else loop.receiver.recv(timeout_ms=_ROUND_WAIT_MS)
        if msg is not None and msg.kind == Kind.END_OF_STREAM:
            loop.state.end_of_stream(msg.meta, msg.stream_id)
            ended, msg = True, None
        batch = msg.batch if msg is not None and msg.kind == Kind.DATA else None
        if batch is not None:
            names = batch.names
        quiet_s = time.monotonic() - last_frame
        idle, over = quiet_s > config.idle_timeout, some_ended and quiet_s > END_GRACE_S
        votes = collective.sum_(torch.tensor(
            [batch is not None, ended, stop_event.is_set(), idle, names is None, over], dtype=torch.int64)).tolist()
        with_frames, n_ended, n_stopped, n_idle, n_unbound, n_over = votes
        some_ended = n_ended > 0
        if with_frames:
            last_frame = time.monotonic()
            if n_unbound:  # some rank has had no frame yet: it takes the stream's schema from one that has
                names = tuple(next(n for n in collective.gather_json(names) if n is not None))
            if msg is not None and batch is not None:
                loop.on_frame(msg, batch)
            elif names is not None:
                loop.state.on_no_frame(names)
            rounds += 1
            if config.checkpoint_every and rounds % config.checkpoint_every == 0:
                loop.checkpoint()
        loop.reporter.maybe_report(loop.telemetry)
        if n_stopped:
            break
        if n_idle == collective.world_size and not with_frames:
            loop.idle(f" on any of {collective.world_size} ranks")
            break
        if (n_ended == collective.world_size or n_over == collective.world_size) and not with_frames:
            break


def run_consume(config: ConsumeConfig, stop_event: threading.Event | None = None) -> tuple[ConsumeStats, Ledger]:
    """Run a scorer until END_OF_STREAM, ``stop_event`` or the idle timeout.

    The idle timeout ends the run like the others (checkpoint, ledger), then raises
    its StreamflowError. A producer that comes back before it is picked up
    (ZeroMQ reconnects); its frames, numbered from 0 again, open a new segment.
    Under torchrun (WORLD_SIZE > 1) this process is one rank of a data-parallel
    scorer (module docstring); rank 0 returns the merged ledger and raises the idle
    timeout, the other ranks return with ``stats.idle_error`` set.
    """
    stop_event = stop_event or threading.Event()
    collective = init_collective(resolve_device(config.scorer.device))
    ctx = zmq.Context()
    loop = None
    try:
        loop = _ScorerLoop(config, ctx, collective, stop_event)
        state, stats = loop.state, loop.state.stats
        if collective.world_size == 1:
            _alone(loop, stop_event)
        else:
            _in_rounds(loop, collective, stop_event)
        stats.stopped = stop_event.is_set() and stats.sink_error is None
        state.flush(stopped=stop_event.is_set())
        loop.checkpoint()
        state.sample.save(Path(loop.config.run_dir) / f"scores-{loop.config.name}.npz")
        loop.reporter.report(loop.telemetry())
        stats.sequence = state.tracker.summary()
        stats.missing_frames = state.tracker.missing_frames()
        stats.rejected = loop.receiver.rejected
        if loop.selections is not None:  # before the ledger, which says what the sink confirmed
            loop.end_selections()
        ledger = loop.ledger()
        ledger.write(Path(config.run_dir) / f"ledger-{loop.config.name}.json")
        if collective.world_size > 1:
            ledger = merged_ledger(state, ledger)
            if state.leader:
                ledger.write(Path(config.run_dir) / f"ledger-{config.name}.json")
        if stats.idle_error and state.leader:  # the ranks decided it together: rank 0 says it
            raise StreamflowError(stats.idle_error)
        if stats.sink_error:  # this scorer's (or rank's) own sink
            raise StreamflowError(stats.sink_error)
        return stats, ledger
    finally:
        if loop is not None:
            loop.close()
        ctx.destroy(linger=0)
        collective.close()
