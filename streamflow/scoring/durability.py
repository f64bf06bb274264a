"""What survives a scorer process: its checkpoint, resume, and crash recovery from the frame journal.

A checkpoint (every ``checkpoint_every`` frames and at the end) holds the
learners and counters, the stream's sequence account, the streamed mjj histogram,
the crash window carried forward ("lost after processing", below) and the
SELECTION frames and events each scorer (or rank) sent to its sink over all its
lifetimes ("selections_sent": {scorer name: {stream id: [frames, events]}}), so that
a resumed scorer's END_OF_STREAM tells the sink the totals of every lifetime.

Crashes: every handled frame is appended to a journal (streamflow.stream.journal),
emptied at each checkpoint; with a sink, a frame is journalled (with the events
it selected) just before its SELECTION goes: a kill between the two leaves the sink
one frame short, counted lost in flight, where the other order would leave it one
frame over that its account cannot place. A scorer restarted with ``resume`` after ``kill -9``
reads the journal: those frames were scored (their selections sent) but the
learning from them died with the process -- "lost after processing". The frames
that were still queued in the dead process show up as a sequence gap -- "lost in
flight". The checkpoint carries both forward, and at END_OF_STREAM the ledger
accounts for every frame and event the producer sent (streamflow.stream.ledger.account_stream).

Under acknowledged delivery (``--acked``, streamflow.stream.delivery) nothing is lost in
flight: the frames a dead scorer held unacknowledged are sent again to its resumed
successor. A frame is acknowledged once journalled -- with an acknowledged sink, once
the sink committed its selection, and only then journalled, and every checkpoint first
waits until the sink has committed every selection sent -- so a redelivered frame that
the checkpoint or the journal holds was handled, its selection is in the sink's file,
and it is acknowledged without being scored again. Learning after a resume starts from
the checkpoint: the frames in the journal (scored, their selections sent, by the killed
process after its checkpoint) are not learnt again; the ledger counts them "lost after
processing" (their learning is what was lost).

Data-parallel, there is one checkpoint for all ranks: rank 0 writes the union of
every rank's account (:func:`streamflow.scoring.rank_merge.ranks_checkpoint`), all
ranks resume from it, and rank 0 reads every rank's journal. No rank empties its
journal before rank 0 has saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamflow.errors import ConfigError
from streamflow.scoring.checkpoint import load_checkpoint, save_checkpoint
from streamflow.scoring.context_histogram import HISTOGRAM_KEY, ContextHistogram
from streamflow.scoring.rank_merge import ranks_checkpoint
from streamflow.scoring.stream_scorer import StreamScorer, add_lost, lost_json
from streamflow.stream.journal import FrameJournal

CHECKPOINT_SUFFIX = ".ckpt.pt"
SELECTIONS_KEY = "selections_sent"
"""The checkpoint's {scorer name: {stream id: [SELECTION frames, events]}} sent to the sink(s)."""


def sent_selections(saved: dict[str, Any], name: str, journal: Path) -> dict[int, tuple[int, int]]:
    """stream id -> (SELECTION frames, events) that the earlier lifetimes of scorer ``name`` sent:
    the checkpoint's count, plus the frames of the crash window, from the journal."""
    counts = {int(sid): (int(frames), int(events))
              for sid, (frames, events) in saved.get(SELECTIONS_KEY, {}).get(name, {}).items()}
    for sid, sent in FrameJournal.read_file(journal, column=3).items():
        frames, events = counts.get(sid, (0, 0))
        counts[sid] = (frames + len(sent), events + sum(sent.values()))
    return counts


def selections_json(name: str, by_stream: dict[int, tuple[int, int]]) -> dict[str, dict[str, list[int]]]:
    """One scorer's SELECTION counts as the checkpoint keeps them under :data:`SELECTIONS_KEY`."""
    return {name: {str(sid): list(counts) for sid, counts in by_stream.items()}}


class Durability:
    """A scorer's checkpoint file (one for all ranks) and this process's frame journal.

    ``name`` is this process's scorer name (a rank's carries ``-rank<r>``), under which the
    checkpoint keeps its selections count; by default the journal's file name without suffix."""

    def __init__(self, checkpoint_path: Path, journal_path: Path, name: str | None = None) -> None:
        self.checkpoint_path = checkpoint_path
        self.journal = FrameJournal(journal_path)
        self.name = name or journal_path.stem

    def journals(self, ranks: int) -> list[Path]:
        """The journals of the scorer's processes: this one's, or data-parallel every rank's."""
        if ranks == 1:
            return [self.journal.path]
        base = self.checkpoint_path.name.removesuffix(CHECKPOINT_SUFFIX)
        return sorted(self.journal.path.parent.glob(f"{base}-rank*.journal"))

    def start(self, state: StreamScorer, resume: bool) -> None:
        """Resume ``state`` from the checkpoint if asked and one exists; else start with an empty journal.

        Asked to resume with no checkpoint but a journal (a lone scorer killed before its first
        checkpoint), the journal's frames are carried forward as lost after processing all the same."""
        if resume and self._checkpoint_exists(state):
            self._resume(state)
        elif resume and state.collective.world_size == 1 and self.journal.read():
            state.stats.selections_by_stream = sent_selections({}, self.name, self.journal.path)
            self._adopt_journal(state)
            self.checkpoint(state)
        else:
            self.journal.clear()

    def _checkpoint_exists(self, state: StreamScorer) -> bool:
        exists = self.checkpoint_path.exists()
        views = state.collective.gather_json(exists)
        if len(set(views)) > 1:
            raise ConfigError(f"--resume: {self.checkpoint_path} is visible to ranks "
                              f"{[r for r, v in enumerate(views) if v]} only: the run folder must be shared")
        return exists

    def _resume(self, state: StreamScorer) -> None:
        saved = load_checkpoint(self.checkpoint_path, state.scorer.device)
        state.scorer.load_state_dict(saved["scorer"])
        state.resumed()
        state.stats.resumed_from_frame = state.scorer.frames
        state.stats.selections_by_stream = sent_selections(saved, self.name, self.journal.path)
        if not state.leader:  # rank 0 carries the stream's account (and reads this rank's journal)
            self.checkpoint(state)
            return
        state.tracker.load_state_dict(saved["sequence"])
        if HISTOGRAM_KEY in saved:
            state.mjj = ContextHistogram.from_state(saved[HISTOGRAM_KEY])
        add_lost(state.stats.lost_after_processing, saved.get("lost_after_processing", {}))
        self._adopt_journal(state)
        self.checkpoint(state)  # carries the crash window forward before the journal is emptied

    def _adopt_journal(self, state: StreamScorer) -> None:
        """Count the frames the dead process(es) handled after the checkpoint as lost after processing."""
        lost = state.stats.lost_after_processing
        missing = state.tracker.missing_frames()
        for path in self.journals(state.collective.world_size):
            for sid, frames in FrameJournal.read_file(path).items():
                next_seq, _, _ = state.tracker.segment(sid)
                gaps = set(missing.get(sid, []))
                lost.setdefault(sid, {}).update(
                    {seq: n for seq, n in frames.items() if seq >= next_seq or seq in gaps})

    def record(self, stream_id: int, seq: int, events: int, selected: int = 0) -> None:
        """Journal one handled frame (scored; with a sink, ``selected`` events about to be sent to it)."""
        self.journal.record(stream_id, seq, events, selected)

    def checkpoint(self, state: StreamScorer) -> None:
        """Save learners, the stream's account and the crash window; empty the journal.

        Data-parallel this is collective: rank 0 saves the union of every rank's account."""
        scorer, sequence, mjj = state.scorer.state_dict(), state.tracker.state_dict(), state.mjj.state_dict()
        selections = selections_json(self.name, state.stats.selections_by_stream)
        if state.collective.world_size > 1:  # the stream's account, counts and mjj are those of all ranks
            sequence, counters, mjj, selections = ranks_checkpoint(state, selections)
            scorer["counters"] = counters.to_dict()
        if state.leader:
            save_checkpoint(self.checkpoint_path, {
                "scorer": scorer, "sequence": sequence, HISTOGRAM_KEY: mjj,
                "lost_after_processing": lost_json(state.stats.lost_after_processing),
                SELECTIONS_KEY: selections,
            })
        state.collective.barrier()  # no rank forgets its frames before rank 0 has saved them
        self.journal.clear()
        state.stats.checkpoints += 1

    def close(self) -> None:
        self.journal.close()
