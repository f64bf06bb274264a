"""A frame scorer on a stream: everything one scorer process (or rank) knows, apart from its sockets.

Per frame (:meth:`StreamScorer.on_frame`): check its sequence number, hand it to
:class:`~streamflow.scoring.frame_scorer.FrameScorer` (score with every learner,
select, learn), count it, keep its scores for the ROC curves
(:class:`~streamflow.scoring.score_buffer.ScoreBuffer`), count its mjj
(:class:`~streamflow.scoring.context_histogram.ContextHistogram`) and fold the
learning figures into running totals. From those counts, and the counters of the
process's sockets that it passes in, the scorer builds its telemetry record
(:meth:`StreamScorer.telemetry`), the account of the stream(s) at END_OF_STREAM
(:meth:`StreamScorer.end_of_stream`), the totals a sink accounts against
(:meth:`StreamScorer.sink_totals`) and its ledger (:meth:`StreamScorer.ledger`).

What survives the process (checkpoint, resume, the journal) is
:mod:`streamflow.scoring.durability`; the merge of data-parallel ranks
:mod:`streamflow.scoring.rank_merge`; the SELECTION message
:mod:`streamflow.scoring.selection`. The process loop with its sockets and
signals is ``consumers/scorer.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamflow.distributed import Collective, weights_digest
from streamflow.events.batch import EventBatch
from streamflow.learners import is_level_stat
from streamflow.scoring.context_histogram import ContextHistogram
from streamflow.scoring.frame_scorer import FrameResult, FrameScorer, ScorerConfig
from streamflow.scoring.score_buffer import ScoreBuffer
from streamflow.stream.ledger import (
    Ledger,
    SequenceTracker,
    StreamAccount,
    account_stream,
    seen_runs,
    selection_totals,
    stream_receivers,
    stream_totals,
)
from streamflow.stream.telemetry import LatencyHistogram, RateMeter, ScorerRecord


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
    rank: int = 0
    """This scorer's rank among data-parallel ranks (rank 0 holds the merged ledger); 0 alone."""
    selections_by_stream: dict[int, tuple[int, int]] = field(default_factory=dict)
    """stream id -> (SELECTION frames, accepted events) sent to the sink by this scorer over all its lifetimes
    (checkpointed; a crash window's from the journal), for the sink's END_OF_STREAM."""
    busy: tuple[float, float] | None = None
    """Wall-clock times (s since the epoch) of the first frame's arrival and the last frame's end."""
    sink_error: str | None = None
    """Why the selections did not reach a sink to the end (stuck sink, END_OF_STREAM not acknowledged)."""
    sink_confirmed: int | None = None
    """Selected events the sink(s) acknowledged having received at END_OF_STREAM (None: no handshake)."""
    duplicates_suppressed: int = 0
    delivery: dict[str, int] | None = None
    """The producer's acknowledged-delivery counts from END_OF_STREAM (acknowledged, redelivered, bad acks)."""
    """Redelivered frames (acknowledged delivery) that this scorer, or an earlier lifetime of it, had handled."""


@dataclass(frozen=True)
class Counters:
    """A frame scorer's running counts: frames, events scored, events learned from."""

    frames: int = 0
    events_scored: int = 0
    events_learned: int = 0

    @classmethod
    def of(cls, scorer: FrameScorer) -> Counters:
        return cls(scorer.frames, scorer.events_scored, scorer.events_learned)

    def __add__(self, other: Counters) -> Counters:
        return Counters(self.frames + other.frames, self.events_scored + other.events_scored,
                        self.events_learned + other.events_learned)

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.frames - other.frames, self.events_scored - other.events_scored,
                        self.events_learned - other.events_learned)

    def to_dict(self) -> dict[str, int]:
        """As :meth:`FrameScorer.state_dict` names them under "counters" (and JSON carries them)."""
        return {"frames": self.frames, "events_scored": self.events_scored, "events_learned": self.events_learned}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> Counters:
        return cls(int(data["frames"]), int(data["events_scored"]), int(data["events_learned"]))


@dataclass(frozen=True)
class Intake:
    """What the process's receiving socket counted: events and frames handed over, messages rejected."""

    events: int
    frames: int
    rejected: int
    last_error: str | None = None


def lost_json(lost: dict[int, dict[int, int]]) -> dict[str, dict[str, int]]:
    """Frames lost after processing (stream id -> {seq: events}) with JSON's string keys."""
    return {str(sid): {str(seq): n for seq, n in frames.items()} for sid, frames in lost.items()}


def add_lost(into: dict[int, dict[int, int]], saved: dict[str, dict[str, int]]) -> None:
    """Merge what :func:`lost_json` wrote (a checkpoint's, or another rank's) into ``into``."""
    for sid, frames in saved.items():
        into.setdefault(int(sid), {}).update({int(seq): int(n) for seq, n in frames.items()})


def events_per_second(events: int, busy: tuple[float, float] | None) -> float | None:
    """Events per second from the first frame's arrival to the last frame's end (None: no frames)."""
    return events / (busy[1] - busy[0]) if busy and busy[1] > busy[0] else None


class StreamScorer:
    """One scorer's state on its stream(s): the frame scorer, its sequence account and running figures."""

    def __init__(self, config: ScorerConfig, collective: Collective) -> None:
        self.collective = collective
        self.scorer = FrameScorer(config)
        self.scorer.distribute(collective)
        self.tracker = SequenceTracker()
        self.stats = ConsumeStats(rank=collective.rank)
        self.latency = LatencyHistogram()
        self.rates = RateMeter()
        self.learn_totals: dict[str, dict[str, float]] = {}
        self.sample = ScoreBuffer(tuple(self.scorer.learners))
        self.mjj = ContextHistogram("mjj")
        """The streamed mjj, checkpointed so that `streamflow sample` draws mjj as the stream had it."""
        self.base = Counters()
        """Counts carried over from a checkpoint, so the ledger reports this run's events only."""
        self.learned_base: dict[str, int] = dict.fromkeys(self.scorer.learners, 0)
        """Each learner's learnt events carried over from a checkpoint (as ``base``)."""

    @property
    def leader(self) -> bool:
        """Writes the checkpoint and the merged ledger: the only scorer, or rank 0."""
        return self.collective.rank == 0

    def counted(self) -> Counters:
        """This run's counts: the frame scorer's less those carried over from a checkpoint."""
        return Counters.of(self.scorer) - self.base

    def resumed(self) -> None:
        """The frame scorer was just loaded from a checkpoint: count this run's events from here."""
        self.base = Counters.of(self.scorer)
        self.learned_base = self.scorer.learned_by()

    def learning(self) -> dict[str, dict[str, Any]]:
        """Per learner this run's events scored and learnt from, and their ratio (telemetry, ledger, report)."""
        scored = self.counted().events_scored
        learned = self.scorer.learned_by()
        return {name: {"scored": scored, "learned_from": n - self.learned_base.get(name, 0),
                       "learned_fraction": (n - self.learned_base.get(name, 0)) / scored if scored else None}
                for name, n in learned.items()}

    def close(self) -> None:
        """Stop the frame scorer's learner thread, if any."""
        self.scorer.close()

    def on_frame(self, batch: EventBatch, stream_id: int, seq: int) -> FrameResult:
        """Score, select and learn one frame, and count it."""
        started = self.stats.busy[0] if self.stats.busy else time.time()
        self.tracker.observe(stream_id, seq, len(batch))
        result = self.scorer.process(batch)
        self.stats.frames += 1
        self.stats.events += len(batch)
        self.stats.accepted += int(np.count_nonzero(result.selection.accept))
        self.rates.add(len(batch))
        self.sample.add(batch, result.scores)
        if "mjj" in batch.names:
            self.mjj.add(batch.column("mjj"))
        self.add_learn_stats(result.learn_stats)
        self.stats.busy = (started, time.time())
        return result

    def already_processed(self, stream_id: int, seq: int) -> bool:
        """Whether frame (``stream_id``, ``seq``) was handled before: by this process, by the lifetimes
        its checkpoint carries, or -- from the journal -- by a killed lifetime after that checkpoint
        (scored and its selections sent; not learnt by the resumed model, and counted "lost after
        processing" for that). A redelivered frame that was is acknowledged, not handled again."""
        return self.tracker.seen(stream_id, seq) or seq in self.stats.lost_after_processing.get(stream_id, {})

    def on_no_frame(self, names: tuple[str, ...]) -> None:
        """A data-parallel round without a frame here: take part in the others' step with no events."""
        empty = EventBatch(np.zeros(0, np.uint64), np.zeros((0, len(names)), np.float32), names)
        self.add_learn_stats(self.scorer.process(empty, counted=False).learn_stats)

    def on_frame_done(self, send_ns: int) -> None:
        """The frame's latency from the producer's send to now (its selections, if any, are out)."""
        self.latency.record(time.time_ns() - send_ns)
        if self.stats.busy:
            self.stats.busy = (self.stats.busy[0], time.time())

    def selection_sent(self, stream_id: int, accepted: int) -> None:
        """Count one SELECTION message of ``accepted`` events sent to the sink for stream ``stream_id``."""
        self.stats.selections_sent += accepted
        frames, events = self.stats.selections_by_stream.get(stream_id, (0, 0))
        self.stats.selections_by_stream[stream_id] = (frames + 1, events + accepted)

    def add_learn_stats(self, learn_stats: dict[str, dict[str, float]]) -> None:
        """Fold one learning call's stats into the running totals (levels such as the last loss or a
        gate's state as they are, counts summed; learners.is_level_stat tells them apart)."""
        for name, stats in learn_stats.items():
            totals = self.learn_totals.setdefault(name, {})
            for key, value in stats.items():
                totals[key] = value if is_level_stat(key) else totals.get(key, 0.0) + value

    def flush(self, stopped: bool = False) -> None:
        """Learn from the scored events still waiting for a step (the end of the stream; ``stopped``:
        a learner thread leaves the frames it has not begun); its last stats count in full (they are
        its frames' own learning, not a deferred step's)."""
        stats = self.scorer.flush(stopped)
        if self.scorer.decoupled is not None:
            self.add_learn_stats(stats)
            return
        self.add_learn_stats({name: {"loss": one.get("loss", float("nan"))} for name, one in stats.items()})

    def end_of_stream(self, meta: dict, stream_id: int) -> None:
        """Account for every frame and event of the stream(s) the producer (or proxy) just ended."""
        self.stats.ended_by_producer = True
        self.stats.sent_totals = stream_totals(meta, stream_id)
        self.stats.receivers = stream_receivers(meta)
        delivery = meta.get("delivery")
        self.stats.delivery = delivery if isinstance(delivery, dict) else None
        for sid, (frames, events) in self.stats.sent_totals.items():
            self.stats.accounts[sid] = account_stream(
                self.tracker, sid, frames, events, self.stats.lost_after_processing.get(sid),
                self.stats.receivers - 1)

    def sink_totals(self) -> tuple[dict[int, tuple[int, int]], int | None, dict[str, Any] | None]:
        """(stream id -> (frames, events), receivers sharing the stream or None, extra meta or None)
        for the sink's END_OF_STREAM.

        The totals cover all of this scorer's lifetimes (streamflow.stream.ledger.selection_totals):
        when scorers split the producer's stream, a sink sees this scorer's share of the
        producer's sequence numbers, the others' being "taken by the other receivers"."""
        stats, shared = self.stats, self.stats.receivers
        streams, extra = selection_totals(
            self.tracker, {sid: events for sid, (_, events) in stats.selections_by_stream.items()},
            stats.sent_totals, stats.lost_after_processing, shared)
        return streams, shared if shared > 1 else None, extra

    def telemetry(self, rejected: int, blocked_s: float) -> ScorerRecord:
        """The scorer's telemetry record; ``rejected`` messages and ``blocked_s`` on the sink are the sockets'."""
        events_per_s, frames_per_s = self.rates.rates()
        learning = self.learning()
        learners = {name: {**self.learn_totals.get(name, {}), **learning[name]} for name in learning}
        return ScorerRecord(
            events=self.stats.events, frames=self.stats.frames, events_per_s=events_per_s, frames_per_s=frames_per_s,
            latency=self.latency.summary(), rejected=rejected, sequence=self.tracker.summary(),
            accepted=self.stats.accepted, blocked_s=blocked_s, learners=learners,
            lines=self.scorer.line_stats(), device=str(self.scorer.device), learn=str(self.scorer.config.learn))

    def ledger(self, intake: Intake, sink: bool) -> Ledger:
        """This scorer's ledger: received, scored, learned from, accepted, sent to the sink and confirmed by
        it (if ``sink``; call it after the selections' END_OF_STREAM handshake)."""
        ledger = Ledger()
        stats, counted = self.stats, self.counted()
        ledger.add("received", intake.events, f"{intake.frames} frames; {intake.rejected} rejected messages"
                   + (f"; {stats.duplicates_suppressed} redelivered frames handled before, not scored again"
                      if stats.duplicates_suppressed else ""))
        ledger.add("scored", counted.events_scored, "")
        learning = self.learning()
        policy = self.scorer.config.learn
        ledger.add("learned from", counted.events_learned, "every scored event is learned from after its frame"
                   if policy == "all" else f"learn = {policy!r}: the most any learner learnt from; " + ", ".join(
                       f"{name} {figures['learned_fraction'] or 0:.1%}" for name, figures in learning.items()))
        ledger.add("accepted", stats.accepted, "by at least one trigger line")
        ledger.add("sent to sink", stats.selections_sent, "" if sink else "no sink configured")
        if sink:
            confirmed = stats.sink_confirmed or 0
            unconfirmed = stats.selections_sent - confirmed
            ledger.add("confirmed by sink", confirmed, (
                "acknowledged at END_OF_STREAM" if stats.sink_confirmed is not None else "no sink acknowledged")
                + (f"; {unconfirmed:,d} not: lost, or taken by a sink that left" if unconfirmed > 0 else ""))
        lost = {sid: {"frames": sorted(frames), "events": sum(frames.values())}
                for sid, frames in stats.lost_after_processing.items()}
        ledger.details.update(sequence=self.tracker.summary(), missing_frames=self.tracker.missing_frames(),
                              resumed_from_frame=stats.resumed_from_frame, lines=self.scorer.line_stats(),
                              learners=self.learn_totals, rejected=intake.rejected,
                              duplicates_suppressed=stats.duplicates_suppressed, delivery=stats.delivery,
                              learning={"policy": policy, "learners": learning},
                              last_rejection=intake.last_error, lost_after_processing=lost,
                              streams={sid: a.to_dict() for sid, a in stats.accounts.items()},
                              frames_seen=seen_runs(self.tracker.state_dict()), busy=stats.busy,
                              rate=events_per_second(intake.events, stats.busy),
                              weights_sha256=weights_digest(
                                  learner.model for learner in self.scorer.learners.values()))
        ledger.notes += [account.render(sid) for sid, account in stats.accounts.items()]
        if stats.delivery is not None:  # the producer's counts (from the wire: shown as they came)
            d = stats.delivery
            ledger.notes.append(f"acknowledged delivery: {d.get('acked')} of {d.get('sent')} frames acknowledged, "
                                f"{d.get('redelivered')} redelivered, {d.get('receivers_lost')} receivers lost; "
                                f"{stats.duplicates_suppressed} redelivered frames handled before, not scored again")
        if intake.rejected:
            ledger.notes.append(f"rejected {intake.rejected} messages; last: {intake.last_error}")
        if stats.idle_error:
            ledger.notes.append(f"ended: {stats.idle_error}")
        if stats.sink_error:
            ledger.notes.append(f"ended: {stats.sink_error}")
        return ledger
