"""The scorer process: PULL frames, test-then-train, trigger, push selections to the sink.

Per frame: decode (zero-copy), check its sequence number, hand it to
:class:`streamflow.scorer.FrameScorer` (score with every learner, select, learn),
send the frame's accepted events as one SELECTION message (empty ones too: the
sink counts frames by them), record the frame's latency from the producer's send
time, checkpoint every ``checkpoint_every`` frames, and publish telemetry about
twice a second. END_OF_STREAM, SIGINT, SIGTERM and the idle timeout all end the
loop the same way: a last learning step, a checkpoint, the selections stream
ended with its own handshake, and the ledger (the idle timeout then exits with its
one-line error).

Crashes: every handled frame is appended to a journal (streamflow.journal),
emptied at each checkpoint. A scorer restarted with ``resume`` after ``kill -9``
reads the journal: those frames were scored (their selections sent) but the
learning from them died with the process -- "lost after processing". The frames
that were still queued in the dead process show up as a sequence gap -- "lost in
flight". The checkpoint carries both forward, and at END_OF_STREAM the ledger
accounts for every frame and event the producer sent (streamflow.ledger.account_stream).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from streamflow.checkpoint import load_checkpoint, save_checkpoint
from streamflow.errors import ConfigError, StreamflowError
from streamflow.journal import FrameJournal
from streamflow.ledger import Ledger, SequenceTracker, StreamAccount, account_stream
from streamflow.sampling import HISTOGRAM_KEY, ContextHistogram
from streamflow.score_sample import ScoreSample
from streamflow.scorer import FrameScorer, ScorerConfig
from streamflow.telemetry import LatencyHistogram, RateMeter, TelemetryReporter
from streamflow.transport import DEFAULT_ENDPOINT, DEFAULT_HWM, Curve, Receiver, Sender, check_endpoint, connect
from streamflow.wire import Kind, Message, encode_selection


@dataclass(frozen=True)
class ConsumeConfig:
    """How a scorer process runs (its learners and lines are in ``scorer``).

    selections: endpoint the scorer binds to push accepted events to a sink (None: none).
    telemetry: endpoint of a monitor's SUB socket to publish stats to (None: only the JSON lines file).
    idle_timeout: seconds without any frame before the scorer gives up with a clear error.
    curve: connect to the producer as a CURVE client (None: plain sockets).
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

    def __post_init__(self) -> None:
        for endpoint in (self.endpoint, self.selections, self.telemetry):
            if endpoint is not None:
                check_endpoint(endpoint)
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0 frames, got {self.checkpoint_every}")
        if not self.idle_timeout > 0:
            raise ConfigError(f"idle timeout must be positive seconds, got {self.idle_timeout}")
        if self.hwm < 1:
            raise ConfigError(f"high-water mark must be at least 1 frame, got {self.hwm}")
        if self.kernel_buffer < 0:
            raise ConfigError(f"kernel buffer must be >= 0 bytes, got {self.kernel_buffer}")
        if self.curve is not None and self.curve.is_server:
            raise ConfigError("the scorer connects: its CURVE config needs the producer's public key file")

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.run_dir) / f"{self.name}.ckpt.pt"


@dataclass
class ConsumeStats:
    """What a scorer did, for the ledger and the caller."""

    frames: int = 0
    events: int = 0
    rejected: int = 0
    accepted: int = 0
    selections_sent: int = 0
    checkpoints: int = 0
    resumed_from_frame: int | None = None
    stopped: bool = False
    ended_by_producer: bool = False
    idle_error: str | None = None
    sequence: dict[str, int] = field(default_factory=dict)
    missing_frames: dict[int, list[int]] = field(default_factory=dict)
    lost_after_processing: dict[int, dict[int, int]] = field(default_factory=dict)
    """stream id -> {seq: events} scored by a crashed incarnation after its last checkpoint."""
    accounts: dict[int, StreamAccount] = field(default_factory=dict)


class _ScorerLoop:
    """State of one scorer process; :func:`run_consume` drives it."""

    def __init__(self, config: ConsumeConfig, ctx: zmq.Context) -> None:
        self.config = config
        self.scorer = FrameScorer(config.scorer)
        self.tracker = SequenceTracker()
        self.stats = ConsumeStats()
        self.latency = LatencyHistogram()
        self.rates = RateMeter()
        self.learn_totals: dict[str, dict[str, float]] = {}
        self.sample = ScoreSample(tuple(self.scorer.learners))
        self.mjj = ContextHistogram("mjj")
        """The streamed mjj, checkpointed so that `streamflow sample` draws mjj as the stream had it."""
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.journal = FrameJournal(run_dir / f"{config.name}.journal")
        if config.resume and config.checkpoint_path.exists():
            self._resume()
        else:
            self.journal.clear()
        # Counts carried over from a checkpoint, so the ledger reports this run's events only.
        self.base_scored, self.base_learned = self.scorer.events_scored, self.scorer.events_learned
        self.receiver = Receiver(ctx, config.endpoint, name=config.name, hwm=config.hwm,
                                 kernel_buffer=config.kernel_buffer, curve=config.curve)
        self.selections = Sender(ctx, config.selections, hwm=config.hwm) if config.selections else None
        self._pub = connect(ctx, zmq.PUB, config.telemetry) if config.telemetry else None
        self.reporter = TelemetryReporter(
            config.name, publish=self._pub.send if self._pub else None,
            jsonl_path=run_dir / f"telemetry-{config.name}.jsonl",
        )

    def _resume(self) -> None:
        state = load_checkpoint(self.config.checkpoint_path, self.scorer.device)
        self.scorer.load_state_dict(state["scorer"])
        self.tracker.load_state_dict(state["sequence"])
        if HISTOGRAM_KEY in state:
            self.mjj = ContextHistogram.from_state(state[HISTOGRAM_KEY])
        self.stats.resumed_from_frame = self.scorer.frames
        lost = self.stats.lost_after_processing
        for sid, frames in state.get("lost_after_processing", {}).items():
            lost.setdefault(int(sid), {}).update({int(seq): int(n) for seq, n in frames.items()})
        for sid, frames in self.journal.read().items():  # handled by the dead process after its checkpoint
            next_seq, _, _ = self.tracker.segment(sid)
            missing = set(self.tracker.missing_frames().get(sid, []))
            lost.setdefault(sid, {}).update(
                {seq: n for seq, n in frames.items() if seq >= next_seq or seq in missing})
        self.checkpoint()  # carries the crash window forward before the journal is emptied

    def checkpoint(self) -> None:
        lost = {str(sid): {str(seq): n for seq, n in frames.items()}
                for sid, frames in self.stats.lost_after_processing.items()}
        save_checkpoint(self.config.checkpoint_path, {
            "scorer": self.scorer.state_dict(), "sequence": self.tracker.state_dict(),
            HISTOGRAM_KEY: self.mjj.state_dict(), "lost_after_processing": lost,
        })
        self.journal.clear()
        self.stats.checkpoints += 1

    def on_frame(self, msg: Message) -> None:
        batch = msg.batch
        self.tracker.observe(msg.stream_id, msg.seq, len(batch))
        result = self.scorer.process(batch)
        selection = result.selection
        accepted = np.flatnonzero(selection.accept)
        self.stats.frames += 1
        self.stats.events += len(batch)
        self.stats.accepted += len(accepted)
        self.rates.add(len(batch))
        self.sample.add(batch.labels, result.scores)
        if "mjj" in batch.names:
            self.mjj.add(batch.column("mjj"))
        for name, stats in result.learn_stats.items():
            totals = self.learn_totals.setdefault(name, {})
            for key, value in stats.items():
                totals[key] = value if key == "loss" else totals.get(key, 0.0) + value
        if self.selections is not None:
            line_scores = np.column_stack(
                [result.scores[line.learner][accepted] for line in self.config.scorer.lines]
            ).astype(np.float32) if self.config.scorer.lines else np.zeros((len(accepted), 0), np.float32)
            parts = encode_selection(
                batch.take(accepted), selection.bits[accepted], line_scores,
                tuple(line.name for line in self.config.scorer.lines),
                seq=msg.seq, stream_id=msg.stream_id, send_ns=msg.send_ns,
            )
            self.selections.send(parts, len(accepted))
            self.stats.selections_sent += len(accepted)
        self.latency.record(time.time_ns() - msg.send_ns)
        self.journal.record(msg.stream_id, msg.seq, len(batch))
        every = self.config.checkpoint_every
        if every and self.scorer.frames % every == 0:
            self.checkpoint()

    def telemetry(self) -> dict[str, Any]:
        sender = self.selections
        return {
            "events": self.stats.events, "frames": self.stats.frames, **self.rates.rates(),
            "latency": self.latency.summary(), "rejected": self.receiver.rejected,
            "sequence": self.tracker.summary(), "accepted": self.stats.accepted,
            "blocked_s": sender.blocked_s if sender else 0.0,
            "learners": self.learn_totals, "lines": self.scorer.line_stats(),
            "device": str(self.scorer.device),
        }

    def end_of_stream(self, msg: Message) -> None:
        """Account for every frame and event of the stream the producer just ended."""
        meta = msg.meta
        self.stats.ended_by_producer = True
        if isinstance(meta.get("frames"), int) and isinstance(meta.get("events"), int):
            self.stats.accounts[msg.stream_id] = account_stream(
                self.tracker, msg.stream_id, meta["frames"], meta["events"],
                self.stats.lost_after_processing.get(msg.stream_id))

    def ledger(self) -> Ledger:
        ledger = Ledger()
        stats, receiver = self.stats, self.receiver
        ledger.add("received", receiver.events, f"{receiver.frames} frames; {receiver.rejected} rejected messages")
        ledger.add("scored", self.scorer.events_scored - self.base_scored, "")
        ledger.add("learned from", self.scorer.events_learned - self.base_learned,
                   "every scored event is learned from after its frame")
        ledger.add("accepted", stats.accepted, "by at least one trigger line")
        ledger.add("sent to sink", stats.selections_sent, "" if self.selections else "no sink configured")
        lost = {sid: {"frames": sorted(frames), "events": sum(frames.values())}
                for sid, frames in stats.lost_after_processing.items()}
        ledger.details.update(sequence=self.tracker.summary(), missing_frames=self.tracker.missing_frames(),
                              resumed_from_frame=stats.resumed_from_frame, lines=self.scorer.line_stats(),
                              learners=self.learn_totals, rejected=receiver.rejected,
                              last_rejection=receiver.last_error, lost_after_processing=lost,
                              streams={sid: a.to_dict() for sid, a in stats.accounts.items()})
        ledger.notes += [account.render(sid) for sid, account in stats.accounts.items()]
        if receiver.rejected:
            ledger.notes.append(f"rejected {receiver.rejected} messages; last: {receiver.last_error}")
        if stats.idle_error:
            ledger.notes.append(f"ended: {stats.idle_error}")
        return ledger

    def close(self) -> None:
        self.journal.close()
        self.receiver.close()
        if self.selections is not None:
            self.selections.close()
        if self._pub is not None:
            self._pub.close(linger=0)
        self.reporter.close()


def run_consume(config: ConsumeConfig, stop_event: threading.Event | None = None) -> tuple[ConsumeStats, Ledger]:
    """Run a scorer until END_OF_STREAM, ``stop_event`` or the idle timeout.

    The idle timeout ends the run like the others (checkpoint, ledger), then raises
    its StreamflowError. A producer that comes back before it is picked up
    (ZeroMQ reconnects); its frames, numbered from 0 again, open a new segment.
    """
    stop_event = stop_event or threading.Event()
    ctx = zmq.Context()
    loop = None
    try:
        loop = _ScorerLoop(config, ctx)
        last_frame = time.monotonic()
        while not stop_event.is_set():
            msg = loop.receiver.recv(timeout_ms=200)
            if msg is None:
                if time.monotonic() - last_frame > config.idle_timeout:
                    loop.stats.idle_error = (f"no frame from {config.endpoint} for {config.idle_timeout:g} s: "
                                             "is the producer running?")
                    break
            elif msg.kind == Kind.END_OF_STREAM:
                loop.end_of_stream(msg)
                break
            elif msg.kind == Kind.DATA:
                last_frame = time.monotonic()
                loop.on_frame(msg)
            loop.reporter.maybe_report(loop.telemetry)
        loop.stats.stopped = stop_event.is_set()
        final_learn = loop.scorer.flush()
        for name, stats in final_learn.items():
            loop.learn_totals.setdefault(name, {}).update(loss=stats.get("loss", float("nan")))
        loop.checkpoint()
        loop.sample.save(Path(config.run_dir) / f"scores-{config.name}.npz")
        if loop.selections is not None:
            loop.selections.end_stream(config.eos_timeout)
        loop.reporter.report(loop.telemetry())
        loop.stats.sequence = loop.tracker.summary()
        loop.stats.missing_frames = loop.tracker.missing_frames()
        loop.stats.rejected = loop.receiver.rejected
        ledger = loop.ledger()
        ledger.write(Path(config.run_dir) / f"ledger-{config.name}.json")
        if loop.stats.idle_error:
            raise StreamflowError(loop.stats.idle_error)
        return loop.stats, ledger
    finally:
        if loop is not None:
            loop.close()
        ctx.destroy(linger=0)
