"""Acknowledged delivery's protocol, driven directly (no sockets): credit, redelivery, bad peers."""

from __future__ import annotations

import pytest

from streamflow.errors import ConfigError
from streamflow.stream.delivery import DeliveryConfig, Dispatcher, RecentKeys


def _drain(d: Dispatcher[str], now: float = 0.0) -> list[tuple[str, int]]:
    """(receiver, seq) of every frame the dispatcher sends now (all on stream 7)."""
    sends = []
    while (item := d.next_send(now)) is not None:
        sends.append((item[0], item[1][1]))
    return sends


def _offer(d: Dispatcher[str], n: int) -> None:
    for _ in range(n):
        seq = d.counts.sent
        d.offer((7, seq), f"frame{seq}", 10)


def _ack(d: Dispatcher[str], peer: str, seq: int, now: float) -> str:
    return d.ack(peer, (7, seq), now)


def test_a_receiver_holds_at_most_its_window_and_each_ack_returns_one_credit() -> None:
    d: Dispatcher[str] = Dispatcher(DeliveryConfig(window=3, max_unacked=10))
    d.hello("a", 100, now=0)  # asks for more than the sender allows: capped
    _offer(d, 5)
    assert _drain(d) == [("a", 0), ("a", 1), ("a", 2)]
    assert _ack(d, "a", 1, now=1) == "ok"
    assert _drain(d) == [("a", 3)]
    assert d.unacked == 4 and d.held_by("a") == 3


def test_the_buffer_is_bounded_and_offering_past_it_is_refused() -> None:
    d: Dispatcher[str] = Dispatcher(DeliveryConfig(window=2, max_unacked=4))
    _offer(d, 4)
    assert not d.has_room
    with pytest.raises(RuntimeError, match="full"):
        d.offer((7, 4), "x", 1)
    d.hello("a", 2, now=0)
    _drain(d)
    _ack(d, "a", 0, now=0)
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
            _ack(d, "b", seq, now=1)
    assert d.gone("a") == len(held_by_a) == 4
    _offer(d, 2)
    assert _drain(d) == [("b", seq) for seq in held_by_a]  # redeliveries first, in order
    assert d.counts.redelivered == 4 and d.counts.receivers_lost == 1
    for seq in held_by_a:
        _ack(d, "b", seq, now=2)
    assert _drain(d) == [("b", 8), ("b", 9)]
    _ack(d, "b", 8, now=3)
    _ack(d, "b", 9, now=3)
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
    assert _ack(d, "silent", 0, now=7) == "late"
    assert _ack(d, "good", 0, now=7) == "duplicate"
    assert _ack(d, "good", 1, now=7) == "ok"
    assert d.done and d.held_by("good") == 0


def test_unknown_and_repeated_acknowledgements_are_counted_and_change_nothing() -> None:
    d: Dispatcher[str] = Dispatcher(DeliveryConfig(window=2, max_unacked=8))
    d.hello("a", 2, now=0)
    _offer(d, 2)
    _drain(d)
    assert _ack(d, "a", 0, now=1) == "ok"
    assert _ack(d, "a", 0, now=1) == "duplicate"
    assert _ack(d, "a", 999, now=1) == "unknown"
    assert _ack(d, "stranger", 1, now=1) == "late"  # a frame that is outstanding, acknowledged by someone else
    assert _ack(d, "stranger", 12345, now=1) == "unknown"
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
            _ack(d, peer, seq, now=0)
            _ack(d, peer, seq, now=0)  # acknowledges twice
            _ack(d, peer, seq + 10**6, now=0)  # acknowledges an unknown frame
    assert d.done and d.settled.total == 20_000 and len(d.settled) == 4 * 8, "settled frames remembered: bounded"
    assert not d.ever_sent and not d.queue and not d.frames
    assert d.counts.duplicate_acks == d.counts.unknown_acks == 20_000


def test_a_frame_is_offered_once_and_an_ack_older_than_the_memory_counts_unknown() -> None:
    d: Dispatcher[str] = Dispatcher(DeliveryConfig(window=1, max_unacked=1))
    d.hello("a", 1, now=0)
    for seq in range(6):
        _offer(d, 1)
        _drain(d)
        _ack(d, "a", seq, now=0)
    with pytest.raises(ValueError, match="offered before"):
        d.offer((7, 5), "again", 1)
    assert _ack(d, "a", 5, now=0) == "duplicate" and _ack(d, "a", 0, now=0) == "unknown"
    keys = RecentKeys(2)
    for key in ((0, 1), (0, 2), (0, 3)):
        keys.add(key)
    assert (0, 1) not in keys and (0, 3) in keys and len(keys) == 2


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"window": 8, "max_unacked": 4}, {"ack_timeout_s": 0},
                                    {"heartbeat_s": 10, "ack_timeout_s": 5}, {"heartbeat_s": float("nan")}])
def test_bad_delivery_bounds_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        DeliveryConfig(**kwargs)
