"""Data-parallel ranks merged into one scorer's account: the checkpoint and the ledger of all ranks.

Every rank pulls its own frames, so each rank's SequenceTracker sees the other
ranks' frames as gaps: the stream's account is the union of the ranks' trackers
(:func:`streamflow.stream.ledger.merge_sequence_states`), and a frame in more than
one rank's union is a duplicate. A tracker remembers up to MAX_TRACKED_MISSING
missing frames (streamflow.stream.ledger; 1M frames, about 4 billion events at
4096 a frame, per stream) -- beyond that the merged account can no longer tell
other ranks' frames from losses.

Rank 0 writes the one checkpoint (:func:`ranks_checkpoint`: the union of the
accounts, the summed counters and mjj histogram, every rank's selections count) and the merged ledger
(:func:`merge_rank_views`: every stage summed with each rank's share, every
stream accounted across the ranks, the trigger lines' figures combined, and
whether the ranks' weights agree bit for bit). A rank's contribution to the
ledger is a JSON view (:func:`rank_view`) gathered by the collective, so the
merge itself is a plain function of those views.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from streamflow.scoring.frame_scorer import line_figures
from streamflow.scoring.stream_scorer import Counters, StreamScorer, add_lost, events_per_second, lost_json
from streamflow.stream.ledger import Ledger, SequenceTracker, account_stream, merge_sequence_states, seen_runs
from streamflow.trigger import LineStats


def ranks_checkpoint(state: StreamScorer, selections: dict[str, Any],
                     ) -> tuple[dict[str, Any], Counters, dict[str, Any], dict[str, Any]]:
    """(sequence account, counters, mjj histogram state, selections sent) of all ranks together (collective).

    ``selections`` is this rank's {scorer name: {stream id: [frames, events]}}; the merged one holds every rank's."""
    views = state.collective.gather_json({"sequence": state.tracker.state_dict(), "selections": selections,
                                          "counted": state.counted().to_dict()})
    selections = {name: counts for view in views for name, counts in view["selections"].items()}
    sequence, _ = merge_sequence_states([view["sequence"] for view in views])
    counters = state.base
    for view in views:
        counters = counters + Counters.from_dict(view["counted"])
    summed = state.collective.sum_counts(np.append(state.mjj.counts, state.mjj.outside))
    mjj = state.mjj.state_dict()
    mjj.update(counts=torch.from_numpy(summed[:-1]), outside=int(summed[-1]))
    return sequence, counters, mjj, selections


def rank_view(state: StreamScorer, ledger: Ledger) -> dict[str, Any]:
    """What one rank contributes to the merged ledger (JSON): its stages, account, weights and lines."""
    return {
        "stages": [[stage.name, stage.events] for stage in ledger.stages],
        "sequence": state.tracker.state_dict(), "weights": ledger.details["weights_sha256"],
        "lost": lost_json(state.stats.lost_after_processing),
        "sent": {str(sid): list(totals) for sid, totals in state.stats.sent_totals.items()},
        "receivers": state.stats.receivers, "busy": state.stats.busy, "lines": state.scorer.line_stats(),
    }


def merged_ledger(state: StreamScorer, ledger: Ledger) -> Ledger:
    """Rank 0's account of the whole stream from every rank's ledger (collective; others get theirs back)."""
    views = state.collective.gather_json(rank_view(state, ledger))
    return merge_rank_views(views, ledger) if state.leader else ledger


def merge_rank_views(views: list[dict[str, Any]], ledger: Ledger) -> Ledger:
    """One ledger of the ranks whose :func:`rank_view` are ``views`` (rank order); ``ledger`` is rank 0's own."""
    ranks = len(views)
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
        add_lost(lost, view["lost"])
        sent.update({int(sid): (frames, events) for sid, (frames, events) in view["sent"].items()})
    others = max(view["receivers"] for view in views) - ranks  # receivers beside the ranks
    accounts = {sid: account_stream(tracker, sid, frames, events, lost.get(sid), max(0, others))
                for sid, (frames, events) in sent.items()}
    digests = [view["weights"] for view in views]
    identical = len(set(digests)) == 1
    spans = [view["busy"] for view in views if view["busy"]]
    busy = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None
    merged.details.update(
        ranks=ranks, duplicate_frames=duplicates, weights_identical=identical,
        weights_sha256=digests, missing_frames=tracker.missing_frames(),
        streams={sid: a.to_dict() for sid, a in accounts.items()},
        lines=[line_figures(LineStats.combined([LineStats.from_dict(view["lines"][i]) for view in views]),
                            any(view["lines"][i].get("learner_warming_up", False) for view in views),
                            views[0]["lines"][i].get("kind", "score"))
               for i in range(len(views[0]["lines"]))],
        learners=ledger.details["learners"],
        frames_seen=[seen_runs(view["sequence"]) for view in views],
        busy=busy, rate=events_per_second(merged.stages[0].events, busy),
    )
    merged.notes += [account.render(sid) for sid, account in accounts.items()]
    merged.notes.append(f"{ranks} ranks; frames seen by more than one rank: {duplicates}; "
                        f"weights identical on all ranks: {'yes' if identical else 'NO'}")
    merged.notes += [note for note in ledger.notes if not note.startswith("stream ")]
    return merged
