"""Acknowledged delivery's protocol, driven directly (no sockets): credit, redelivery, bad peers."""

from __future__ import annotations

import pytest

from streamflow.errors import ConfigError
from streamflow.stream.delivery import DeliveryConfig, Dispatcher, SeqSet


def _drain(d: Dispatcher[str], now: float = 0.0) -> list[tuple[str, int]]:
    sends = []
    while (item := d.next_send(now)) is not None:
        sends.append((item[0], item[1]))
    return sends


def _offer(d: Dispatcher[str], n: int) -> None:
    for _ in range(n):
        d.offer(d.next_seq, f"frame{d.next_seq}", 10)


def test_a_receiver_holds_at_most_its_window_and_each_ack_returns_one_credit() -> None:
    d: Dispatcher[str] = Dispatcher(DeliveryConfig(window=3, max_unacked=10))
    d.hello("a", 100, now=0)  # asks for more than the sender allows: capped
    _offer(d, 5)
    assert _drain(d) == [("a", 0), ("a", 1), ("a", 2)]
    assert d.ack("a", 1, now=1) == "ok"
    assert _drain(d) == [("a", 3)]
    assert d.unacked == 4 and d.held_by("a") == 3


def test_the_buffer_is_bounded_and_offering_past_it_is_refused() -> None:
    d: Dispatcher[str] = Dispatcher(DeliveryConfig(window=2, max_unacked=4))
    _offer(d, 4)
    assert not d.has_room
    with pytest.raises(RuntimeError, match="full"):
        d.offer(4, "x", 1)
    d.hello("a", 2, now=0)
    _drain(d)
    d.ack("a", 0, now=0)
    assert d.has_room


def test_frames_of_a_receiver_that_died_go_first_to_the_next_receiver_with_credit() -> None:
    d: Dispatcher[str] = Dispatcher(DeliveryConfig(window=4, max_unacked=16))
    d.hello("a", 4, now=0)
    d.hello("b", 4, now=0)
    _offer(d, 8)
    sends = _drain(d)
    held_by_a = sorted(seq for peer, seq in sends if peer == "a")
    for peer, seq in sends:
        if peer == "b":
            d.ack("b", seq, now=1)
    assert d.gone("a") == len(held_by_a) == 4
    _offer(d, 2)
    assert _drain(d) == [("b", seq) for seq in held_by_a]  # redeliveries first, in order
    assert d.counts.redelivered == 4 and d.counts.receivers_lost == 1
    for seq in held_by_a:
        d.ack("b", seq, now=2)
    assert _drain(d) == [("b", 8), ("b", 9)]
    d.ack("b", 8, now=3)
    d.ack("b", 9, now=3)
    assert d.done and d.counts.acked == 10


def test_a_receiver_that_never_acknowledges_is_evicted_and_its_frames_redelivered() -> None:
    d: Dispatcher[str] = Dispatcher(DeliveryConfig(window=2, max_unacked=8, ack_timeout_s=5, heartbeat_s=1))
    d.hello("silent", 2, now=0)
    _offer(d, 2)
    assert _drain(d, now=0) == [("silent", 0), ("silent", 1)]
    assert d.expire(now=4) == []
    assert d.expire(now=6) == ["silent"]
    d.hello("silent", 2, now=6)  # an evicted receiver is not taken back
    d.hello("good", 2, now=6)
    assert _drain(d, now=6) == [("good", 0), ("good", 1)]
    assert d.counts.receivers_timed_out == 1 and d.counts.redelivered == 2
    # the silent one finishes one of them after all: settled, and the good one's later ack is a duplicate
    assert d.ack("silent", 0, now=7) == "late"
    assert d.ack("good", 0, now=7) == "duplicate"
    assert d.ack("good", 1, now=7) == "ok"
    assert d.done and d.held_by("good") == 0


def test_unknown_and_repeated_acknowledgements_are_counted_and_change_nothing() -> None:
    d: Dispatcher[str] = Dispatcher(DeliveryConfig(window=2, max_unacked=8))
    d.hello("a", 2, now=0)
    _offer(d, 2)
    _drain(d)
    assert d.ack("a", 0, now=1) == "ok"
    assert d.ack("a", 0, now=1) == "duplicate"
    assert d.ack("a", 999, now=1) == "unknown"
    assert d.ack("stranger", 1, now=1) == "late"  # a frame that is outstanding, acknowledged by someone else
    assert d.ack("stranger", 12345, now=1) == "unknown"
    counts = d.counts
    assert (counts.acked, counts.duplicate_acks, counts.unknown_acks, counts.late_acks) == (2, 1, 2, 1)
    assert d.done and d.held_by("a") == 0
    _offer(d, 2)
    assert len(_drain(d)) == 2, "the credit of the frame someone else settled came back"


def test_memory_stays_bounded_over_a_long_stream_with_bad_peers() -> None:
    d: Dispatcher[str] = Dispatcher(DeliveryConfig(window=4, max_unacked=8))
    d.hello("a", 4, now=0)
    for _ in range(20_000):
        _offer(d, 1)
        for peer, seq in _drain(d):
            d.ack(peer, seq, now=0)
            d.ack(peer, seq, now=0)  # acknowledges twice
            d.ack(peer, seq + 10**6, now=0)  # acknowledges an unknown frame
    assert d.done and d.settled.spread == 0 and len(d.settled) == 20_000
    assert not d.ever_sent and not d.queue and not d.frames
    assert d.counts.duplicate_acks == d.counts.unknown_acks == 20_000


def test_seq_set_keeps_only_the_members_above_its_watermark() -> None:
    s = SeqSet()
    for seq in (0, 2, 3, 1, 5):
        s.add(seq)
    assert s.watermark == 4 and s.spread == 1 and len(s) == 5
    assert 1 in s and 5 in s and 4 not in s


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"window": 8, "max_unacked": 4}, {"ack_timeout_s": 0},
                                    {"heartbeat_s": 10, "ack_timeout_s": 5}, {"heartbeat_s": float("nan")}])
def test_bad_delivery_bounds_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        DeliveryConfig(**kwargs)
