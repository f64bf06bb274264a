"""The producer's frames (events.chunking: exact size, an event limit) and the token bucket that paces them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from streamflow.errors import ConfigError
from streamflow.events.batch import EventBatch
from streamflow.events.chunking import first_events, rebatch
from streamflow.stream.pacing import TokenBucket


def batches(sizes: list[int]) -> list[EventBatch]:
    out, start = [], 0
    for n in sizes:
        out.append(EventBatch(ids=np.arange(start, start + n, dtype=np.uint64),
                              features=np.arange(start, start + n, dtype=np.float32).reshape(n, 1),
                              names=("x",), labels=np.ones(n, np.int8)))
        start += n
    return out


@pytest.mark.parametrize("sizes", [[10] * 5, [3, 7, 1, 25, 4], [1] * 23, [50], [0, 9, 0, 12]])
@pytest.mark.parametrize("size", [1, 4, 10, 64])
def test_frames_have_the_exact_size_and_keep_every_event_in_order(sizes: list[int], size: int) -> None:
    out = list(rebatch(batches(sizes), size))
    total = sum(sizes)
    assert [len(f) for f in out] == [size] * (total // size) + ([total % size] if total % size else [])
    joined = EventBatch.concatenate(out)
    np.testing.assert_array_equal(joined.ids, np.arange(total))
    np.testing.assert_array_equal(joined.features[:, 0], np.arange(total))
    assert joined.labels is not None and len(joined.labels) == total


@pytest.mark.parametrize("limit", [0, 1, 9, 10, 11, 37])
def test_frames_stop_after_the_event_limit_without_drawing_more(limit: int) -> None:
    drawn = []

    def endless():
        start = 0
        while True:
            drawn.append(start)
            yield batches([start + 10])[0].take(slice(start, start + 10))
            start += 10

    out = list(first_events(endless(), limit))
    assert sum(len(f) for f in out) == limit
    assert (EventBatch.concatenate(out).ids.tolist() if out else []) == list(range(limit))
    assert len(drawn) == -(-limit // 10)  # not one batch more than the limit needs


def test_first_events_without_a_limit_is_every_batch() -> None:
    source = batches([3, 5])
    assert list(first_events(source, None)) == source


def test_frames_of_the_right_size_pass_through_uncopied() -> None:
    source = batches([8, 8])
    out = list(rebatch(source, 8))
    assert [np.shares_memory(f.features, s.features) for f, s in zip(out, source, strict=True)] == [True, True]


def test_frame_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="chunk size must be a positive integer"):
        next(rebatch(batches([3]), 0))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("frame", [1, 100, 5000])
def test_token_bucket_average_rate_is_exact(frame: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(10_000, clock=clock, sleep=clock.sleep)
    for _ in range(200):
        bucket.acquire(frame)
    assert clock.now == pytest.approx(200 * frame / 10_000)


def test_token_bucket_credits_oversleep_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst_s=0.05, clock=clock, sleep=lambda s: clock.sleep(s + 0.01))
    for _ in range(100):
        bucket.acquire(10)  # 10 ms per frame, each sleep overshoots by 10 ms
    # the overshoot is repaid by the next frames, so 1000 events take about 1 s, not 2 s
    assert clock.now == pytest.approx(1.0, abs=0.03)
    clock.now += 10.0  # a long idle stretch earns at most 50 ms of burst
    start = clock.now
    for _ in range(10):
        bucket.acquire(10)
    assert clock.now - start == pytest.approx(0.1 - 0.05, abs=0.011)


def test_token_bucket_without_rate_never_sleeps() -> None:
    bucket = TokenBucket(None, sleep=lambda s: pytest.fail("slept"))
    assert sum(bucket.acquire(10**6) for _ in range(10)) == 0


def test_token_bucket_holds_a_real_rate() -> None:
    bucket = TokenBucket(40_000)
    start = time.perf_counter()
    for _ in range(40):
        bucket.acquire(500)  # 20k events: 0.5 s at 40k/s
    rate = 20_000 / (time.perf_counter() - start)
    assert 0.85 * 40_000 < rate < 1.02 * 40_000


def test_token_bucket_rejects_a_bad_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
