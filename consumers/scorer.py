"""The scorer process: PULL frames, test-then-train, trigger, push selections to the sink.

Per frame: decode (zero-copy), check its sequence number, hand it to
:class:`streamflow.scoring.frame_scorer.FrameScorer` (score with every learner, select, learn),
send the frame's accepted events as one SELECTION message (empty ones too: the
sink counts frames by them), record the frame's latency from the producer's send
time, checkpoint every ``checkpoint_every`` frames, and publish telemetry about
twice a second. END_OF_STREAM, SIGINT, SIGTERM and the idle timeout all end the
loop the same way: a last learning step, a checkpoint, the selections stream
ended with its own handshake, and the ledger (the idle timeout then exits with its
one-line error).

Crashes: every handled frame is appended to a journal (streamflow.stream.journal),
emptied at each checkpoint. A scorer restarted with ``resume`` after ``kill -9``
reads the journal: those frames were scored (their selections sent) but the
learning from them died with the process -- "lost after processing". The frames
that were still queued in the dead process show up as a sequence gap -- "lost in
flight". The checkpoint carries both forward, and at END_OF_STREAM the ledger
accounts for every frame and event the producer sent (streamflow.stream.ledger.account_stream).

Data-parallel (started by torchrun with WORLD_SIZE > 1, see streamflow.distributed):
every rank pulls its own frames, and the ranks work in rounds -- each round every
rank processes the frame it received, or an empty one, so that all of them take
part in every learning step and threshold sum. A round begins with one small sum
of (has a frame, ended, stopped, idle, schema unknown, quiet since another rank
ended), so the ranks decide together when the stream is over. Per-rank files carry ``-rank<r>`` in their names; rank 0 writes
the one checkpoint (all ranks resume from it) and the merged ledger, which
accounts for every frame across the ranks and checks that their weights agree.
Each rank's SequenceTracker sees the other ranks' frames as gaps: it remembers up
to MAX_TRACKED_MISSING of them (streamflow.stream.ledger; 1M frames, about 4 billion
events at 4096 a frame, per stream) -- beyond that the merged account can no
longer tell other ranks' frames from losses.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq

from streamflow.scoring.checkpoint import load_checkpoint, save_checkpoint
from streamflow.distributed import Collective, close_collective, init_collective, rank_endpoint, weights_digest
from streamflow.errors import ConfigError, StreamflowError
from streamflow.events.batch import EventBatch
from streamflow.stream.journal import FrameJournal
from streamflow.stream.ledger import (
    Ledger,
    SequenceTracker,
    StreamAccount,
    account_stream,
    merge_sequence_states,
    seen_runs,
    selection_totals,
    stream_receivers,
    stream_totals,
)
from streamflow.analysis.sampling import HISTOGRAM_KEY, ContextHistogram
from streamflow.scoring.score_buffer import ScoreBuffer
from streamflow.scoring.frame_scorer import FrameScorer, ScorerConfig, line_figures, resolve_device
from streamflow.ops.telemetry import LatencyHistogram, RateMeter, TelemetryReporter
from streamflow.trigger import LineStats
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
from streamflow.stream.wire import Kind, Message, encode_selection


@dataclass(frozen=True)
class ConsumeConfig:
    """How a scorer process runs (its learners and lines are in ``scorer``).

    selections: endpoint the scorer binds to push accepted events to a sink (None: none).
    telemetry: endpoint of a monitor's SUB socket to publish stats to (None: only the JSON lines file).
    idle_timeout: seconds without any frame before the scorer gives up with a clear error.
    curve: connect to the producer as a CURVE client (None: plain sockets).
    selections_curve: serve the selections socket under CURVE, admitting only authorised sinks.
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

    def __post_init__(self) -> None:
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
            raise ConfigError("the scorer binds its selections socket: its CURVE config needs an authorised-keys folder")
        if self.selections_curve is not None and self.selections is None:
            raise ConfigError("a CURVE config for the selections socket needs a selections endpoint (--selections)")

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
    sent_totals: dict[int, tuple[int, int]] = field(default_factory=dict)
    """stream id -> (frames, events) its sender sent, from END_OF_STREAM."""
    receivers: int = 1
    """How many receivers shared the stream(s), from END_OF_STREAM (data-parallel ranks count each)."""
    rank: int | None = None
    """This scorer's rank when data-parallel (rank 0 holds the merged ledger), else None."""
    selections_by_stream: dict[int, tuple[int, int]] = field(default_factory=dict)
    """stream id -> (SELECTION frames, accepted events) sent to the sink by this scorer over all its lifetimes
    (checkpointed; a crash window's from the journal), for the sink's END_OF_STREAM."""
    busy: tuple[float, float] | None = None
    """Wall-clock times (s since the epoch) of the first frame's arrival and the last frame's end."""
    sink_error: str | None = None
    """Why the selections did not reach a sink to the end (stuck sink, END_OF_STREAM not acknowledged)."""
    sink_confirmed: int | None = None
    """Selected events the sink(s) acknowledged having received at END_OF_STREAM (None: no handshake)."""


def _lost_json(lost: dict[int, dict[int, int]]) -> dict[str, dict[str, int]]:
    """Frames lost after processing (stream id -> {seq: events}) with JSON's string keys."""
    return {str(sid): {str(seq): n for seq, n in frames.items()} for sid, frames in lost.items()}


def _add_lost(into: dict[int, dict[int, int]], saved: dict[str, dict[str, int]]) -> None:
    """Merge what :func:`_lost_json` wrote (a checkpoint's, or another rank's) into ``into``."""
    for sid, frames in saved.items():
        into.setdefault(int(sid), {}).update({int(seq): int(n) for seq, n in frames.items()})


def _sent_selections(state: dict[str, Any], name: str, journal: Path) -> dict[int, tuple[int, int]]:
    """stream id -> (SELECTION frames, events) that the earlier lifetimes of scorer ``name`` sent:
    the checkpoint's count, plus the frames of the crash window, from the journal."""
    saved = state.get("selections_sent", {}).get(name, {})
    counts = {int(sid): (int(frames), int(events)) for sid, (frames, events) in saved.items()}
    for sid, sent in FrameJournal.read_file(journal, column=3).items():
        frames, events = counts.get(sid, (0, 0))
        counts[sid] = (frames + len(sent), events + sum(sent.values()))
    return counts


_COUNTERS = ("frames", "events_scored", "events_learned")
"""FrameScorer's running counts, as its state_dict names them."""


class _ScorerLoop:
    """State of one scorer process (or rank); :func:`run_consume` drives it."""

    def __init__(self, config: ConsumeConfig, ctx: zmq.Context, collective: Collective | None = None,
                 stop_event: threading.Event | None = None) -> None:
        self.collective = collective
        self.stop_event = stop_event
        """Set by a signal: a send blocked on a full selections queue gives up."""
        self.checkpoint_path = config.checkpoint_path  # one checkpoint, whatever the rank
        if collective is not None:
            rank = collective.rank
            config = dataclasses.replace(
                config, name=f"{config.name}-rank{rank}", scorer=dataclasses.replace(
                    config.scorer, device=str(collective.device)),
                selections=rank_endpoint(config.selections, rank) if config.selections else None)
        self.config = config
        self.scorer = FrameScorer(config.scorer)
        if collective is not None:
            self.scorer.distribute(collective)
        self.tracker = SequenceTracker()
        self.stats = ConsumeStats(rank=None if collective is None else collective.rank)
        self.latency = LatencyHistogram()
        self.rates = RateMeter()
        self.learn_totals: dict[str, dict[str, float]] = {}
        self.sample = ScoreBuffer(tuple(self.scorer.learners))
        self.mjj = ContextHistogram("mjj")
        """The streamed mjj, checkpointed so that `streamflow sample` draws mjj as the stream had it."""
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.journal = FrameJournal(run_dir / f"{config.name}.journal")
        self.base = self._counters()
        """Counts carried over from a checkpoint, so the ledger reports this run's events only."""
        if config.resume and self._checkpoint_exists():
            self._resume()
        else:
            self.journal.clear()
        self.receiver = Receiver(ctx, config.endpoint, name=config.name, hwm=config.hwm,
                                 kernel_buffer=config.kernel_buffer, curve=config.curve)
        self.selections = (Sender(ctx, config.selections, hwm=config.hwm, curve=config.selections_curve)
                           if config.selections else None)
        self._pub = connect(ctx, zmq.PUB, config.telemetry) if config.telemetry else None
        self.reporter = TelemetryReporter(
            config.name, publish=self._pub.send if self._pub else None,
            jsonl_path=run_dir / f"telemetry-{config.name}.jsonl",
        )

    def _counters(self) -> tuple[int, int, int]:
        return tuple(getattr(self.scorer, key) for key in _COUNTERS)  # type: ignore[return-value]

    @property
    def leader(self) -> bool:
        """Writes the checkpoint and the merged ledger: the only scorer, or rank 0."""
        return self.collective is None or self.collective.rank == 0

    def _checkpoint_exists(self) -> bool:
        exists = self.checkpoint_path.exists()
        if self.collective is None:
            return exists
        views = self.collective.gather_json(exists)
        if len(set(views)) > 1:
            raise ConfigError(f"--resume: {self.checkpoint_path} is visible to ranks "
                              f"{[r for r, v in enumerate(views) if v]} only: the run folder must be shared")
        return exists

    def _resume(self) -> None:
        state = load_checkpoint(self.checkpoint_path, self.scorer.device)
        self.scorer.load_state_dict(state["scorer"])
        self.base = self._counters()
        self.stats.resumed_from_frame = self.scorer.frames
        self.stats.selections_by_stream = _sent_selections(state, self.config.name, self.journal.path)
        if not self.leader:  # rank 0 carries the stream's account (and reads this rank's journal)
            self.checkpoint()
            return
        self.tracker.load_state_dict(state["sequence"])
        if HISTOGRAM_KEY in state:
            self.mjj = ContextHistogram.from_state(state[HISTOGRAM_KEY])
        lost = self.stats.lost_after_processing
        _add_lost(lost, state.get("lost_after_processing", {}))
        journals = [self.journal.path]
        if self.collective is not None:
            base = self.checkpoint_path.name.removesuffix(".ckpt.pt")
            journals = sorted(self.journal.path.parent.glob(f"{base}-rank*.journal"))
        missing = self.tracker.missing_frames()
        for path in journals:  # frames handled by the dead process(es) after the checkpoint
            for sid, frames in FrameJournal.read_file(path).items():
                next_seq, _, _ = self.tracker.segment(sid)
                gaps = set(missing.get(sid, []))
                lost.setdefault(sid, {}).update(
                    {seq: n for seq, n in frames.items() if seq >= next_seq or seq in gaps})
        self.checkpoint()  # carries the crash window forward before the journal is emptied

    def checkpoint(self) -> None:
        """Save learners, the stream's account and the crash window; empty the journal.

        Data-parallel this is collective: rank 0 saves the union of every rank's account."""
        sequence = self.tracker.state_dict()
        scorer = self.scorer.state_dict()
        mjj = self.mjj.state_dict()
        selections = {self.config.name: {str(sid): list(counts)
                                         for sid, counts in self.stats.selections_by_stream.items()}}
        if self.collective is not None:  # the stream's account, counts and mjj are those of all ranks
            views = self.collective.gather_json({"sequence": sequence, "selections": selections, "counted": [
                now - base for now, base in zip(self._counters(), self.base)]})
            selections = {name: counts for view in views for name, counts in view["selections"].items()}
            sequence, _ = merge_sequence_states([view["sequence"] for view in views])
            scorer["counters"] = {key: base + sum(view["counted"][i] for view in views)
                                  for i, (key, base) in enumerate(zip(_COUNTERS, self.base))}
            summed = self.collective.sum_counts(np.append(self.mjj.counts, self.mjj.outside))
            mjj.update(counts=torch.from_numpy(summed[:-1]), outside=int(summed[-1]))
        if self.leader:
            save_checkpoint(self.checkpoint_path, {
                "scorer": scorer, "sequence": sequence, HISTOGRAM_KEY: mjj,
                "lost_after_processing": _lost_json(self.stats.lost_after_processing),
                "selections_sent": selections,
            })
        if self.collective is not None:  # no rank forgets its frames before rank 0 has saved them
            self.collective.barrier()
        self.journal.clear()
        self.stats.checkpoints += 1

    def on_frame(self, msg: Message) -> None:
        batch = msg.batch
        started = self.stats.busy[0] if self.stats.busy else time.time()
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
        self.add_learn_stats(result.learn_stats)
        if self.selections is None:
            self.journal.record(msg.stream_id, msg.seq, len(batch))
        else:
            line_scores = np.column_stack(
                [result.scores[line.learner][accepted] for line in self.config.scorer.lines]
            ).astype(np.float32) if self.config.scorer.lines else np.zeros((len(accepted), 0), np.float32)
            parts = encode_selection(
                batch.take(accepted), selection.bits[accepted], line_scores,
                tuple(line.name for line in self.config.scorer.lines),
                seq=msg.seq, stream_id=msg.stream_id, send_ns=msg.send_ns,
            )
            # Journalled before it goes: a kill between the two leaves the sink one frame short, counted lost
            # in flight; the other order would leave it one frame over that the sink's account cannot place.
            self.journal.record(msg.stream_id, msg.seq, len(batch), len(accepted))
            if self._send_selection(parts, len(accepted)):
                frames, events = self.stats.selections_by_stream.get(msg.stream_id, (0, 0))
                self.stats.selections_by_stream[msg.stream_id] = (frames + 1, events + len(accepted))
        self.latency.record(time.time_ns() - msg.send_ns)
        self.stats.busy = (started, time.time())

    def _send_selection(self, parts: list[Any], accepted: int) -> bool:
        """Push one SELECTION message; False if a stop or a stuck sink kept it from going.

        A sink that takes nothing for the idle timeout (gone, or wedged) is reported once:
        the error is kept for the ledger and the exit, and the loop is stopped like a signal
        would (data-parallel ranks vote on it), without the selections handshake."""
        assert self.selections is not None and self.stop_event is not None
        try:
            sent = self.selections.send(parts, accepted, self.stop_event, give_up_s=self.config.idle_timeout)
        except DownstreamStuck as exc:
            self.stats.sink_error = f"the sink stopped taking selections: {exc}"
            self.stop_event.set()
            return False
        self.stats.selections_sent += accepted if sent else 0
        return sent

    def on_no_frame(self, names: tuple[str, ...]) -> None:
        """A data-parallel round without a frame here: take part in the others' step with no events."""
        empty = EventBatch(np.zeros(0, np.uint64), np.zeros((0, len(names)), np.float32), names)
        self.add_learn_stats(self.scorer.process(empty, counted=False).learn_stats)

    def add_learn_stats(self, learn_stats: dict[str, dict[str, float]]) -> None:
        """Fold one learning call's stats into the running totals (the last loss, summed counts)."""
        for name, stats in learn_stats.items():
            totals = self.learn_totals.setdefault(name, {})
            for key, value in stats.items():
                totals[key] = value if key == "loss" else totals.get(key, 0.0) + value

    def end_selections(self, timeout_s: float) -> None:
        """END_OF_STREAM to the sink(s), with the totals per stream that a sink accounts against.

        The totals cover all of this scorer's lifetimes (streamflow.stream.ledger.selection_totals)."""
        assert self.selections is not None
        if self.stats.sink_error is not None:
            return  # a stuck sink would not acknowledge: do not wait for it again
        shared = self.stats.receivers
        streams, extra = selection_totals(
            self.tracker, {sid: sent for sid, (_, sent) in self.stats.selections_by_stream.items()},
            self.stats.sent_totals, self.stats.lost_after_processing, shared)
        try:
            eos = self.selections.end_stream(timeout_s, streams=streams, shared_by=shared if shared > 1 else None,
                                             stop_event=self.stop_event, extra=extra)
        except HandshakeError as exc:
            self.stats.sink_error = str(exc)
        else:
            self.stats.sink_confirmed = eos.acked_events

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
        """Account for every frame and event of the stream(s) the producer (or proxy) just ended."""
        self.stats.ended_by_producer = True
        self.stats.sent_totals = stream_totals(msg.meta, msg.stream_id)
        self.stats.receivers = stream_receivers(msg.meta)
        for sid, (frames, events) in self.stats.sent_totals.items():
            self.stats.accounts[sid] = account_stream(
                self.tracker, sid, frames, events, self.stats.lost_after_processing.get(sid),
                self.stats.receivers - 1)

    def ledger(self) -> Ledger:
        ledger = Ledger()
        stats, receiver = self.stats, self.receiver
        ledger.add("received", receiver.events, f"{receiver.frames} frames; {receiver.rejected} rejected messages")
        ledger.add("scored", self.scorer.events_scored - self.base[1], "")
        ledger.add("learned from", self.scorer.events_learned - self.base[2],
                   "every scored event is learned from after its frame")
        ledger.add("accepted", stats.accepted, "by at least one trigger line")
        ledger.add("sent to sink", stats.selections_sent, "" if self.selections else "no sink configured")
        if self.selections is not None:
            confirmed = stats.sink_confirmed or 0
            unconfirmed = stats.selections_sent - confirmed
            ledger.add("confirmed by sink", confirmed, (
                "acknowledged at END_OF_STREAM" if stats.sink_confirmed is not None else "no sink acknowledged")
                + (f"; {unconfirmed:,d} not: lost, or taken by a sink that left" if unconfirmed > 0 else ""))
        lost = {sid: {"frames": sorted(frames), "events": sum(frames.values())}
                for sid, frames in stats.lost_after_processing.items()}
        ledger.details.update(sequence=self.tracker.summary(), missing_frames=self.tracker.missing_frames(),
                              resumed_from_frame=stats.resumed_from_frame, lines=self.scorer.line_stats(),
                              learners=self.learn_totals, rejected=receiver.rejected,
                              last_rejection=receiver.last_error, lost_after_processing=lost,
                              streams={sid: a.to_dict() for sid, a in stats.accounts.items()},
                              frames_seen=seen_runs(self.tracker.state_dict()), busy=stats.busy,
                              rate=_rate(receiver.events, stats.busy),
                              weights_sha256=weights_digest(
                                  learner.model for learner in self.scorer.learners.values()))
        ledger.notes += [account.render(sid) for sid, account in stats.accounts.items()]
        if receiver.rejected:
            ledger.notes.append(f"rejected {receiver.rejected} messages; last: {receiver.last_error}")
        if stats.idle_error:
            ledger.notes.append(f"ended: {stats.idle_error}")
        if stats.sink_error:
            ledger.notes.append(f"ended: {stats.sink_error}")
        return ledger

    def close(self) -> None:
        self.journal.close()
        self.receiver.close()
        if self.selections is not None:
            self.selections.close()
        if self._pub is not None:
            self._pub.close(linger=0)
        self.reporter.close()


def _alone(loop: _ScorerLoop, stop_event: threading.Event) -> None:
    """The loop of a scorer on its own: frame by frame until END_OF_STREAM, a stop or the idle timeout."""
    config = loop.config
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
            every = config.checkpoint_every
            if every and loop.scorer.frames % every == 0:
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
            loop.end_of_stream(msg)
            ended, msg = True, None
        frame = msg if msg is not None and msg.kind == Kind.DATA else None
        if frame is not None:
            names = frame.batch.names
        quiet_s = time.monotonic() - last_frame
        idle, over = quiet_s > config.idle_timeout, some_ended and quiet_s > END_GRACE_S
        votes = collective.sum_(torch.tensor(
            [frame is not None, ended, stop_event.is_set(), idle, names is None, over], dtype=torch.int64)).tolist()
        with_frames, n_ended, n_stopped, n_idle, n_unbound, n_over = votes
        some_ended = n_ended > 0
        if with_frames:
            last_frame = time.monotonic()
            if n_unbound:  # some rank has had no frame yet: it takes the stream's schema from one that has
                names = tuple(next(n for n in collective.gather_json(names) if n is not None))
            if frame is not None:
                loop.on_frame(frame)
            else:
                loop.on_no_frame(names)
            rounds += 1
            if config.checkpoint_every and rounds % config.checkpoint_every == 0:
                loop.checkpoint()
        loop.reporter.maybe_report(loop.telemetry)
        if n_stopped:
            break
        if n_idle == collective.world_size and not with_frames:
            loop.stats.idle_error = (f"no frame from {config.endpoint} on any of {collective.world_size} ranks "
                                     f"for {config.idle_timeout:g} s: is the producer running?")
            break
        if (n_ended == collective.world_size or n_over == collective.world_size) and not with_frames:
            break


def _merged_ledger(loop: _ScorerLoop, collective: Collective, ledger: Ledger) -> Ledger:
    """Rank 0's account of the whole stream from every rank's ledger (collective; others get theirs back)."""
    views = collective.gather_json({
        "stages": [[stage.name, stage.events] for stage in ledger.stages],
        "sequence": loop.tracker.state_dict(), "weights": ledger.details["weights_sha256"],
        "lost": _lost_json(loop.stats.lost_after_processing),
        "sent": {str(sid): list(totals) for sid, totals in loop.stats.sent_totals.items()},
        "receivers": loop.stats.receivers, "busy": loop.stats.busy, "lines": loop.scorer.line_stats(),
    })
    if not loop.leader:
        return ledger
    merged = Ledger()
    for i, (name, _) in enumerate(views[0]["stages"]):
        merged.add(name, sum(view["stages"][i][1] for view in views),
                   "; ".join(f"rank {r}: {view['stages'][i][1]:,d}" for r, view in enumerate(views)))
    sequence, duplicates = merge_sequence_states([view["sequence"] for view in views])
    tracker = SequenceTracker()
    tracker.load_state_dict(sequence)
    lost: dict[int, dict[int, int]] = {}
    sent: dict[int, tuple[int, int]] = {}
    for view in views:
        _add_lost(lost, view["lost"])
        sent.update({int(sid): (frames, events) for sid, (frames, events) in view["sent"].items()})
    others = max(view["receivers"] for view in views) - collective.world_size  # receivers beside the ranks
    accounts = {sid: account_stream(tracker, sid, frames, events, lost.get(sid), max(0, others))
                for sid, (frames, events) in sent.items()}
    digests = [view["weights"] for view in views]
    identical = len(set(digests)) == 1
    spans = [view["busy"] for view in views if view["busy"]]
    busy = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None
    merged.details.update(
        ranks=collective.world_size, duplicate_frames=duplicates, weights_identical=identical,
        weights_sha256=digests, missing_frames=tracker.missing_frames(),
        streams={sid: a.to_dict() for sid, a in accounts.items()},
        lines=[line_figures(LineStats.combined([LineStats.from_dict(view["lines"][i]) for view in views]))
               for i in range(len(views[0]["lines"]))],
        learners=ledger.details["learners"],
        frames_seen=[seen_runs(view["sequence"]) for view in views],
        busy=busy, rate=_rate(merged.stages[0].events, busy),
    )
    merged.notes += [account.render(sid) for sid, account in accounts.items()]
    merged.notes.append(f"{collective.world_size} ranks; frames seen by more than one rank: {duplicates}; "
                        f"weights identical on all ranks: {'yes' if identical else 'NO'}")
    merged.notes += [note for note in ledger.notes if not note.startswith("stream ")]
    return merged


def _rate(events: int, busy: tuple[float, float] | None) -> float | None:
    """Events per second from the first frame's arrival to the last frame's end (None: no frames)."""
    return events / (busy[1] - busy[0]) if busy and busy[1] > busy[0] else None


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
        if collective is None:
            _alone(loop, stop_event)
        else:
            _in_rounds(loop, collective, stop_event)
        loop.stats.stopped = stop_event.is_set() and loop.stats.sink_error is None
        loop.add_learn_stats({name: {"loss": stats.get("loss", float("nan"))}
                              for name, stats in loop.scorer.flush().items()})
        loop.checkpoint()
        loop.sample.save(Path(loop.config.run_dir) / f"scores-{loop.config.name}.npz")
        loop.reporter.report(loop.telemetry())
        loop.stats.sequence = loop.tracker.summary()
        loop.stats.missing_frames = loop.tracker.missing_frames()
        loop.stats.rejected = loop.receiver.rejected
        if loop.selections is not None:  # before the ledger, which says what the sink confirmed
            loop.end_selections(config.eos_timeout)
        ledger = loop.ledger()
        ledger.write(Path(config.run_dir) / f"ledger-{loop.config.name}.json")
        if collective is not None:
            ledger = _merged_ledger(loop, collective, ledger)
            if loop.leader:
                ledger.write(Path(config.run_dir) / f"ledger-{config.name}.json")
        if loop.stats.idle_error and loop.leader:  # the ranks decided it together: rank 0 says it
            raise StreamflowError(loop.stats.idle_error)
        if loop.stats.sink_error:  # this scorer's (or rank's) own sink
            raise StreamflowError(loop.stats.sink_error)
        return loop.stats, ledger
    finally:
        if loop is not None:
            loop.close()
        ctx.destroy(linger=0)
        close_collective(collective)
