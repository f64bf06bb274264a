"""Stream accounts (streamflow.stream.ledger): a stream shared by several receivers is not called lost.

PUSH fair-queues a sender's frames between its receivers, so each sees only its
share; the sender's END_OF_STREAM says how many receivers there were, and a
receiver's account puts the frames it never saw on the other receivers' side.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamflow.stream.ledger import SequenceTracker, account_stream, merge_sequence_states, stream_receivers

EVENTS = [100 + seq for seq in range(12)]  # frame seq carried 100 + seq events


def tracker_of(seqs: list[int]) -> SequenceTracker:
    tracker = SequenceTracker()
    for seq in seqs:
        tracker.observe(0, seq, EVENTS[seq])
    return tracker


def test_a_shared_stream_puts_the_unseen_frames_on_the_other_receivers() -> None:
    mine = [0, 2, 3, 7, 8]  # the sender sent 0-11; the other receiver took the rest, 9-11 included
    account = account_stream(tracker_of(mine), 0, sent_frames=12, sent_events=sum(EVENTS), other_receivers=1)
    others = [seq for seq in range(12) if seq not in mine]
    assert account.lost_in_flight == [] and account.lost_in_flight_events == 0
    assert account.elsewhere == others and account.elsewhere_events == sum(EVENTS[seq] for seq in others)
    assert account.processed_events == sum(EVENTS[seq] for seq in mine) and account.unaccounted_frames == 0
    assert account.to_dict()["taken_by_other_receivers"] == {
        "receivers": 1, "frames": others, "events": account.elsewhere_events}
    assert account.render(0) == (
        "stream 0: sent 1,266 events in 12 frames = processed 520 + lost after processing 0 (0 frames) + "
        "taken by the other 1 receiver(s) 746 events (7 frames); unaccounted frames 0")


def test_a_lone_receiver_still_calls_unseen_frames_lost_in_flight() -> None:
    account = account_stream(tracker_of([0, 1, 2, 5]), 0, sent_frames=7, sent_events=sum(EVENTS[:7]))
    assert account.lost_in_flight == [3, 4, 6] and account.lost_in_flight_events == EVENTS[3] + EVENTS[4] + EVENTS[6]
    assert account.elsewhere == [] and account.elsewhere_events == 0
    assert account.to_dict()["taken_by_other_receivers"] == {"receivers": 0, "frames": [], "events": 0}
    assert "lost in flight 313 (3 frames)" in account.render(0) and "taken by" not in account.render(0)


def test_a_crash_window_stays_lost_after_processing_on_a_shared_stream() -> None:
    """Frames a crashed incarnation journaled are its own loss, not the other receiver's share."""
    account = account_stream(tracker_of([0, 1, 6]), 0, sent_frames=8, sent_events=sum(EVENTS[:8]),
                             lost_after_processing={2: EVENTS[2], 3: EVENTS[3]}, other_receivers=2)
    assert sorted(account.lost_after_processing) == [2, 3] and account.elsewhere == [4, 5, 7]
    assert account.elsewhere_events == EVENTS[4] + EVENTS[5] + EVENTS[7] and account.unaccounted_frames == 0
    assert "taken by the other 2 receiver(s) 316 events (3 frames)" in account.render(0)


def test_the_union_of_ranks_leaves_only_a_third_receivers_share_elsewhere() -> None:
    """Two ranks' merged account beside a third receiver of the same sender: only its frames are elsewhere."""
    ranks = [tracker_of([0, 3, 6, 9]), tracker_of([1, 4, 7, 10])]
    merged, _ = merge_sequence_states([rank.state_dict() for rank in ranks])
    union = SequenceTracker()
    union.load_state_dict(merged)
    account = account_stream(union, 0, sent_frames=12, sent_events=sum(EVENTS), other_receivers=1)
    assert account.processed_frames == 8 and account.elsewhere == [2, 5, 8, 11] and account.lost_in_flight == []
    assert account.elsewhere_events == sum(EVENTS[2::3]) and account.unaccounted_frames == 0


@pytest.mark.parametrize("meta, receivers", [
    ({"frames": 3, "events": 30, "receivers": 4}, 4),
    ({"frames": 3, "events": 30}, 1),  # a sender from before the count
    ({"receivers": 0}, 1),  # sent before any HELLO was read: the reader is one
    ({"receivers": "2"}, 1),
])
def test_stream_receivers_reads_the_count_with_one_as_the_default(meta: dict[str, Any], receivers: int) -> None:
    assert stream_receivers(meta) == receivers
