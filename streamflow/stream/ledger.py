"""Accounting: frame sequence numbers checked on arrival, and the end-of-run ledger.

Every sender numbers its frames 0, 1, 2, ... per stream. A receiver feeds each
arriving sequence number to a :class:`SequenceTracker`, which counts

- gaps: frames skipped over (seq jumped ahead) and never seen since,
- reordered: frames that arrived after a later one (a gap that filled in),
- duplicates: frames seen twice.

With the sender's END_OF_STREAM totals, :func:`account_stream` places every
frame and event: processed, lost after processing (a crashed receiver's work
since its last checkpoint, known from its journal), or lost in flight -- or,
when the sender says several receivers share its stream (PUSH fair-queues the
frames between them), taken by the other receivers.
The :class:`Ledger` is the end-of-run account, stage by stage, with the reason
for every difference; it is written to the run folder and printed.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_TRACKED_MISSING = 1_000_000
"""Missing sequence numbers remembered per stream (for telling reordering from loss)."""


@dataclass
class _StreamState:
    """One stream's current segment (a sender that starts again at seq 0 opens a new one)."""

    next_seq: int = 0
    missing: set[int] = field(default_factory=set)
    frames: int = 0
    events: int = 0


class SequenceTracker:
    """Counts gaps, reordering and duplicates of frame sequence numbers, per stream id.

    A frame numbered 0 on a stream that is past 0 (and did not miss 0) means the
    sender started again (a restarted producer): the old segment is closed -- its
    missing frames count as ``abandoned``, lost for good -- and a new one begins.
    Per segment it also counts the frames and events that arrived, so that with the
    sender's END_OF_STREAM totals (:func:`account_stream`) every event is placed.
    """

    def __init__(self) -> None:
        self._streams: dict[int, _StreamState] = {}
        self.frames = 0
        self.reordered = 0
        self.duplicates = 0
        self.restarts = 0
        self.abandoned = 0

    def observe(self, stream_id: int, seq: int, events: int = 0) -> str:
        """Record one arrival of ``events`` events; "ok", "gap", "reordered", "duplicate" or "restart"."""
        state = self._streams.setdefault(stream_id, _StreamState())
        self.frames += 1
        outcome = "ok"
        if seq == 0 and state.next_seq > 0 and 0 not in state.missing:
            self.restarts += 1
            self.abandoned += len(state.missing)
            state = self._streams[stream_id] = _StreamState()
            outcome = "restart"
        if seq == state.next_seq:
            state.next_seq += 1
        elif seq > state.next_seq:
            if len(state.missing) + seq - state.next_seq <= MAX_TRACKED_MISSING:
                state.missing.update(range(state.next_seq, seq))
            state.next_seq = seq + 1
            outcome = "gap"
        elif seq in state.missing:
            state.missing.discard(seq)
            self.reordered += 1
            outcome = "reordered"
        else:
            self.duplicates += 1
            return "duplicate"
        state.frames += 1
        state.events += events
        return outcome

    def seen(self, stream_id: int, seq: int) -> bool:
        """Whether frame ``seq`` of the current segment of ``stream_id`` has arrived already."""
        state = self._streams.get(stream_id)
        return state is not None and seq < state.next_seq and seq not in state.missing

    @property
    def gaps(self) -> int:
        """Frames skipped over and not (yet) arrived, in the current segments."""
        return sum(len(s.missing) for s in self._streams.values())

    def missing_frames(self) -> dict[int, list[int]]:
        """stream id -> the sorted sequence numbers still missing."""
        return {sid: sorted(s.missing) for sid, s in self._streams.items() if s.missing}

    def segment(self, stream_id: int) -> tuple[int, int, int]:
        """(next sequence number, frames, events) of a stream's current segment."""
        state = self._streams.get(stream_id, _StreamState())
        return state.next_seq, state.frames, state.events

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; missing frames as [start, stop) runs (a crash loses a run of frames)."""
        streams = {str(sid): {"next_seq": s.next_seq, "missing": _runs(s.missing), "frames": s.frames,
                              "events": s.events} for sid, s in self._streams.items()}
        return {"streams": streams, "restarts": self.restarts, "abandoned": self.abandoned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._streams = {
            int(sid): _StreamState(next_seq=int(s["next_seq"]),
                                   missing=_expand_runs(s["missing"]),
                                   frames=int(s["frames"]), events=int(s["events"]))
            for sid, s in state.get("streams", {}).items()
        }
        self.restarts, self.abandoned = int(state.get("restarts", 0)), int(state.get("abandoned", 0))

    def summary(self) -> dict[str, int]:
        return {"frames": self.frames, "gaps": self.gaps, "reordered": self.reordered,
                "duplicates": self.duplicates, "restarts": self.restarts, "abandoned": self.abandoned}


def merge_sequence_states(states: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """One :meth:`SequenceTracker.state_dict` for trackers that split the same streams between them.

    Data-parallel scorers each see some of a stream's frames; the union is what the
    stream delivered. Returns the merged state and the number of frames that more
    than one tracker saw (0 when every frame went to exactly one scorer).
    """
    merged: dict[str, Any] = {"streams": {}, "restarts": 0, "abandoned": 0}
    seen: dict[str, set[int]] = {}
    events: dict[str, int] = {}
    arrivals = 0
    for state in states:
        merged["restarts"] += int(state.get("restarts", 0))
        merged["abandoned"] += int(state.get("abandoned", 0))
        for sid, stream in state.get("streams", {}).items():
            frames = _seen_frames(stream)
            arrivals += len(frames)
            seen.setdefault(sid, set()).update(frames)
            events[sid] = events.get(sid, 0) + int(stream["events"])
    for sid, frames in seen.items():
        next_seq = max(frames) + 1 if frames else 0
        merged["streams"][sid] = {"next_seq": next_seq, "missing": _runs(set(range(next_seq)) - frames),
                                  "frames": len(frames), "events": events[sid]}
    return merged, arrivals - sum(len(frames) for frames in seen.values())


def seen_runs(state: dict[str, Any]) -> dict[str, list[list[int]]]:
    """stream id -> the frames a tracker saw, as [start, stop) runs (from its state_dict)."""
    return {sid: _runs(_seen_frames(stream)) for sid, stream in state.get("streams", {}).items()}


def _seen_frames(stream: dict[str, Any]) -> set[int]:
    """The sequence numbers a tracker's stream state saw: below next_seq and not missing."""
    return set(range(int(stream["next_seq"]))) - _expand_runs(stream["missing"])


def _expand_runs(runs: list[list[int]]) -> set[int]:
    """The integers of [start, stop) runs (what :func:`_runs` wrote)."""
    return {value for start, stop in runs for value in range(int(start), int(stop))}


def _runs(values: set[int]) -> list[list[int]]:
    """Sorted integers as [start, stop) runs of consecutive values."""
    runs: list[list[int]] = []
    for value in sorted(values):
        if runs and runs[-1][1] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, value + 1])
    return runs


@dataclass
class StreamAccount:
    """Where every frame and event a sender sent went, once its END_OF_STREAM totals are known.

    processed: arrived and kept (in the receiver's durable state);
    lost_after_processing: arrived at an earlier incarnation of the receiver, which
    died before its next checkpoint (for a scorer: scored and their selections sent,
    but the learning from them lost) -- sequence numbers from its journal;
    lost_in_flight: never arrived at a live receiver (in the dead process's queue
    or socket buffers when it was killed) -- the sequence numbers the tracker found
    missing that the journal does not hold;
    elsewhere: those same frames when ``other_receivers`` > 0, i.e. the stream was
    shared: PUSH gave them to the other receivers, so they are not called lost;
    not_sent: sequence numbers the sender says it never sent (a scorer's selections
    stream skips the producer's frames that never reached the scorer), no events.
    Per receiver a genuine loss cannot then be told from another receiver's share:
    the totals are checked by the sender's END_OF_STREAM acknowledgements (each
    receiver's ACK carries its frames and events) and, for data-parallel ranks, by
    the merged account of their union. Events of the unseen frames are what remains
    of the sender's total. ``unaccounted_frames`` = sent frames minus all of the
    above: zero unless the sequence numbers contradict the sender's count.
    """

    sent_frames: int
    sent_events: int
    processed_frames: int
    processed_events: int
    lost_after_processing: dict[int, int]
    lost_in_flight: list[int]
    elsewhere: list[int] = field(default_factory=list)
    other_receivers: int = 0
    not_sent: list[int] = field(default_factory=list)

    @property
    def lost_after_processing_events(self) -> int:
        return sum(self.lost_after_processing.values())

    @property
    def _unseen_events(self) -> int:
        return self.sent_events - self.processed_events - self.lost_after_processing_events

    @property
    def lost_in_flight_events(self) -> int:
        return 0 if self.other_receivers else self._unseen_events

    @property
    def elsewhere_events(self) -> int:
        return self._unseen_events if self.other_receivers else 0

    @property
    def unaccounted_frames(self) -> int:
        return (self.sent_frames - self.processed_frames - len(self.lost_after_processing)
                - len(self.lost_in_flight) - len(self.elsewhere) - len(self.not_sent))

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent_frames": self.sent_frames, "sent_events": self.sent_events,
            "processed_frames": self.processed_frames, "processed_events": self.processed_events,
            "lost_after_processing": {"frames": sorted(self.lost_after_processing),
                                      "events": self.lost_after_processing_events},
            "lost_in_flight": {"frames": self.lost_in_flight, "events": self.lost_in_flight_events},
            "taken_by_other_receivers": {"receivers": self.other_receivers, "frames": self.elsewhere,
                                         "events": self.elsewhere_events},
            "not_sent": {"frames": self.not_sent},
            "unaccounted_frames": self.unaccounted_frames,
        }

    def render(self, stream_id: int) -> str:
        unseen = (f"taken by the other {self.other_receivers} receiver(s) {self.elsewhere_events:,d} events "
                  f"({len(self.elsewhere):,d} frames)" if self.other_receivers else
                  f"lost in flight {self.lost_in_flight_events:,d} ({len(self.lost_in_flight)} frames)")
        skipped = f" + never sent {len(self.not_sent):,d} frames" if self.not_sent else ""
        return (f"stream {stream_id}: sent {self.sent_events:,d} events in {self.sent_frames:,d} frames = "
                f"processed {self.processed_events:,d} + lost after processing "
                f"{self.lost_after_processing_events:,d} ({len(self.lost_after_processing)} frames) + {unseen}"
                f"{skipped}; unaccounted frames {self.unaccounted_frames}")


def account_stream(tracker: SequenceTracker, stream_id: int, sent_frames: int, sent_events: int,
                   lost_after_processing: dict[int, int] | None = None, other_receivers: int = 0,
                   not_sent: set[int] | None = None) -> StreamAccount:
    """The account of one stream from the tracker's segment and the sender's END_OF_STREAM totals.

    Frames the sender sent after the last one that arrived (none, when END_OF_STREAM
    arrived on the same pipe) count as lost in flight too -- or, with
    ``other_receivers`` > 0 (see :func:`stream_receivers`), as taken by them. Sequence
    numbers in ``not_sent`` (:func:`stream_not_sent`) that did not arrive are neither.
    """
    lost_after = dict(lost_after_processing or {})
    next_seq, frames, events = tracker.segment(stream_id)
    missing = set(tracker.missing_frames().get(stream_id, [])) | set(range(next_seq, sent_frames))
    skipped = sorted(missing & (not_sent or set()))
    unseen = sorted(missing - lost_after.keys() - set(skipped))
    if other_receivers > 0:
        return StreamAccount(sent_frames, sent_events, frames, events, lost_after, [], unseen, other_receivers,
                             skipped)
    return StreamAccount(sent_frames, sent_events, frames, events, lost_after, unseen, not_sent=skipped)


def stream_totals(meta: dict[str, Any], stream_id: int) -> dict[int, tuple[int, int]]:
    """stream id -> (frames, events) sent, from an END_OF_STREAM's meta.

    A producer's END_OF_STREAM totals its own stream ``stream_id``; a proxy's lists
    every stream it forwarded under "streams" ({"sid": {"frames": F, "events": E}}).
    Malformed totals give no entry (the receiver cannot account for that stream).
    """
    streams = meta.get("streams")
    if isinstance(streams, dict):
        totals = {}
        for sid, sent in streams.items():
            if str(sid).isdigit() and isinstance(sent, dict) and _counts(sent):
                totals[int(sid)] = (sent["frames"], sent["events"])
        return totals
    return {stream_id: (meta["frames"], meta["events"])} if _counts(meta) else {}


def not_sent_json(not_sent: dict[int, set[int]]) -> dict[str, list[list[int]]]:
    """stream id -> sequence numbers a sender skipped, as the END_OF_STREAM meta's "not_sent" runs."""
    return {str(sid): _runs(seqs) for sid, seqs in not_sent.items()}


def stream_not_sent(meta: dict[str, Any]) -> dict[int, set[int]]:
    """stream id -> the sequence numbers the sender says it never sent, from an END_OF_STREAM's meta.

    A scorer's selections stream carries the producer's sequence numbers and skips the
    frames that never reached the scorer (:func:`not_sent_json` wrote them); absent,
    malformed or more than MAX_TRACKED_MISSING frames a stream: none.
    """
    streams = meta.get("not_sent")
    if not isinstance(streams, dict):
        return {}
    try:
        runs = {int(sid): [(int(start), int(stop)) for start, stop in seqs] for sid, seqs in streams.items()}
    except (TypeError, ValueError):
        return {}
    if any(not 0 <= start <= stop or sum(b - a for a, b in seqs) > MAX_TRACKED_MISSING
           for seqs in runs.values() for start, stop in seqs):
        return {}
    return {sid: {seq for start, stop in seqs for seq in range(start, stop)} for sid, seqs in runs.items()}


def selection_totals(tracker: SequenceTracker, selected: dict[int, int], sent_totals: dict[int, tuple[int, int]],
                     lost_after_processing: dict[int, dict[int, int]], receivers: int,
                     ) -> tuple[dict[int, tuple[int, int]], dict[str, Any] | None]:
    """What a scorer's END_OF_STREAM tells its sink: (stream id -> (frames, events), extra meta or None).

    A selections stream carries the producer's sequence numbers, one SELECTION per frame the
    scorer processed, so a sink accounts against the producer's frames (``sent_totals``, from
    its END_OF_STREAM; before one, the sequence numbers seen so far) and the events the scorer
    ``selected`` over all its lifetimes -- a resumed scorer's sink holds both lifetimes' rows.
    When ``receivers`` > 1 scorers split the producer's stream, the frames this one never had
    are the other receivers' (the caller says so with ``shared_by``); alone, the frames that no
    lifetime of it processed -- its own losses in flight -- had no selection, and the extra meta
    lists them as "not_sent" (:func:`stream_not_sent`) so that the sink does not count them lost.
    """
    if receivers > 1:
        return {sid: (sent_totals[sid][0], events) for sid, events in selected.items() if sid in sent_totals}, None
    streams, not_sent = {}, {}
    for sid, events in selected.items():
        next_seq, _, _ = tracker.segment(sid)
        lost = lost_after_processing.get(sid, {})
        span = sent_totals[sid][0] if sid in sent_totals else max(next_seq, max(lost, default=-1) + 1)
        processed = set(range(next_seq)) - set(tracker.missing_frames().get(sid, []))
        streams[sid] = (span, events)
        not_sent[sid] = set(range(span)) - processed - lost.keys()
    return streams, {"not_sent": not_sent_json(not_sent)}


def stream_receivers(meta: dict[str, Any]) -> int:
    """How many receivers shared the stream(s), from an END_OF_STREAM's meta ("receivers").

    At least 1 (the one reading it); 1 when absent or malformed (a sender from before the count).
    """
    receivers = meta.get("receivers")
    return max(1, receivers) if isinstance(receivers, int) else 1


def _counts(sent: dict[str, Any]) -> bool:
    return isinstance(sent.get("frames"), int) and isinstance(sent.get("events"), int)


@dataclass
class Stage:
    """One line of the ledger: a count, and how it differs from the stage before, with why."""

    name: str
    events: int
    note: str = ""


@dataclass
class Ledger:
    """The end-of-run account: events at each stage, differences explained."""

    stages: list[Stage] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Lines printed under the table (stream accounts, how the run ended)."""

    def add(self, name: str, events: int, note: str = "") -> None:
        self.stages.append(Stage(name, int(events), note))

    def render(self, width: int = 80) -> str:
        """A fixed-width table: stage, events, difference to the previous stage, reason.

        The table fits ``width`` columns (a terminal's 80 by default): a long note goes on
        under its column. The notes under the table are prose, one line each (a terminal
        wraps them without breaking the table's columns)."""
        head = 20 + 13 + 14 + 2  # stage, events (up to 1,000,000,000), diff (and its sign), gap
        rows = [f"{'stage':<20}{'events':>13}{'diff':>14}  note"]
        previous = None
        for stage in self.stages:
            diff = "" if previous is None else f"{stage.events - previous:+,d}"
            cells = f"{stage.name:<20}{stage.events:>13,d}{diff:>14}  "
            note = textwrap.wrap(stage.note, max(20, width - head), break_on_hyphens=False) or [""]
            rows += [(cells if i == 0 else " " * head) + part for i, part in enumerate(note)]
            previous = stage.events
        return "\n".join([row.rstrip() for row in rows] + self.notes)

    def write(self, path: str | Path) -> None:
        data = {"stages": [vars(s) for s in self.stages], "notes": self.notes, **self.details}
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
