"""Accounting: frame sequence numbers checked on arrival, and the end-of-run ledger.

Every sender numbers its frames 0, 1, 2, ... per stream. A receiver feeds each
arriving sequence number to a :class:`SequenceTracker`, which counts

- gaps: frames skipped over (seq jumped ahead) and never seen since,
- reordered: frames that arrived after a later one (a gap that filled in),
- duplicates: frames seen twice.

The :class:`Ledger` is the end-of-run account, stage by stage, with the reason
for every difference; it is written to the run folder and printed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_TRACKED_MISSING = 1_000_000
"""Missing sequence numbers remembered per stream (for telling reordering from loss)."""


@dataclass
class _StreamState:
    next_seq: int = 0
    missing: set[int] = field(default_factory=set)
    lost_ranges: list[tuple[int, int]] = field(default_factory=list)


class SequenceTracker:
    """Counts gaps, reordering and duplicates of frame sequence numbers, per stream id."""

    def __init__(self) -> None:
        self._streams: dict[int, _StreamState] = {}
        self.frames = 0
        self.reordered = 0
        self.duplicates = 0

    def observe(self, stream_id: int, seq: int) -> str:
        """Record one arrival; returns "ok", "gap", "reordered" or "duplicate"."""
        state = self._streams.setdefault(stream_id, _StreamState())
        self.frames += 1
        if seq == state.next_seq:
            state.next_seq += 1
            return "ok"
        if seq > state.next_seq:
            state.lost_ranges.append((state.next_seq, seq))
            if len(state.missing) + seq - state.next_seq <= MAX_TRACKED_MISSING:
                state.missing.update(range(state.next_seq, seq))
            state.next_seq = seq + 1
            return "gap"
        if seq in state.missing:
            state.missing.discard(seq)
            self.reordered += 1
            return "reordered"
        self.duplicates += 1
        return "duplicate"

    @property
    def gaps(self) -> int:
        """Frames skipped over and not (yet) arrived."""
        return sum(len(s.missing) for s in self._streams.values())

    def missing_frames(self) -> dict[int, list[int]]:
        """stream id -> the sorted sequence numbers still missing."""
        return {sid: sorted(s.missing) for sid, s in self._streams.items() if s.missing}

    def state_dict(self) -> dict[str, Any]:
        return {str(sid): {"next_seq": s.next_seq, "missing": sorted(s.missing)} for sid, s in self._streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._streams = {
            int(sid): _StreamState(next_seq=int(s["next_seq"]), missing=set(int(m) for m in s["missing"]))
            for sid, s in state.items()
        }

    def summary(self) -> dict[str, int]:
        return {"frames": self.frames, "gaps": self.gaps, "reordered": self.reordered,
                "duplicates": self.duplicates}


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

    def add(self, name: str, events: int, note: str = "") -> None:
        self.stages.append(Stage(name, int(events), note))

    def render(self) -> str:
        """A fixed-width table: stage, events, difference to the previous stage, reason."""
        lines = [f"{'stage':<22}{'events':>14}{'diff':>12}  note"]
        previous = None
        for stage in self.stages:
            diff = "" if previous is None else f"{stage.events - previous:+,d}"
            lines.append(f"{stage.name:<22}{stage.events:>14,d}{diff:>12}  {stage.note}")
            previous = stage.events
        return "\n".join(lines)

    def write(self, path: str | Path) -> None:
        data = {"stages": [vars(s) for s in self.stages], **self.details}
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
