"""Metering a stream out: frames of an exact size, at a target event rate.

:func:`frames` cuts any sequence of event batches into frames of exactly
``size`` events (the last one may be short), optionally stopping after a total
number of events. :class:`TokenBucket` paces them: tokens (events) accrue at
``rate`` per second up to a small burst capacity; taking ``n`` events when fewer
are available puts the bucket in debt and sleeps until the debt is repaid, so
over any long run the average rate is ``rate`` exactly, whatever the frame size,
and the sleep overshoot of one frame is credited to the next (up to the burst).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

from streamflow.errors import ConfigError
from streamflow.events.batch import EventBatch


class TokenBucket:
    """Blocks ``acquire(n)`` so that events leave at ``rate`` per second (None: no limit).

    ``burst_s`` is the capacity in seconds' worth of events: how much of an idle or
    oversleeping stretch may be made up by sending faster afterwards.
    ``sleep`` may be ``threading.Event.wait`` so that a stop request cuts a long wait short.
    """

    def __init__(self, rate: float | None, *, burst_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be positive events/s or None, got {rate}")
        self.rate = rate
        self.capacity = None if rate is None else max(rate * burst_s, 1.0)
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._last = clock()

    def acquire(self, n: int) -> float:
        """Take ``n`` events' worth of tokens, sleeping as needed; returns the seconds slept."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate) - n
        self._last = now
        if self._tokens >= 0:
            return 0.0
        delay = -self._tokens / self.rate
        self._sleep(delay)
        return delay


MAX_FRAME_EVENTS = 1 << 20
"""The largest frame, in events (1,048,576): about 60 MB of LHCO features, and a sender and its
receiver each queue up to a high-water mark of them; larger frames buy no speed."""


def check_frame_size(size: int) -> None:
    """ConfigError unless ``size`` is in [1, MAX_FRAME_EVENTS]."""
    if not 1 <= size <= MAX_FRAME_EVENTS:
        raise ConfigError(f"frame size must be 1 to {MAX_FRAME_EVENTS:,d} events, got {size:,d}")


def frames(batches: Iterable[EventBatch], size: int, limit: int | None = None) -> Iterator[EventBatch]:
    """Re-cut ``batches`` into frames of exactly ``size`` events, ``limit`` events in all (None: all).

    Batches that already have the right size pass through uncopied; only the last
    frame may be shorter.
    """
    if size < 1:
        raise ValueError(f"frame size must be at least 1, got {size}")
    pending: list[EventBatch] = []
    held = 0
    left = limit
    for batch in batches:
        if left is not None and len(batch) > left:
            batch = batch.take(slice(0, left))
        if left is not None:
            left -= len(batch)
        start = 0
        if held:  # complete the pending frame first
            need = min(size - held, len(batch))
            pending.append(batch.take(slice(0, need)))
            held += need
            start = need
            if held == size:
                yield EventBatch.concatenate(pending)
                pending, held = [], 0
        while len(batch) - start >= size:
            yield batch if start == 0 and len(batch) == size else batch.take(slice(start, start + size))
            start += size
        if start < len(batch):
            pending.append(batch.take(slice(start, len(batch))))
            held += len(batch) - start
        if left == 0:
            break
    if held:
        yield EventBatch.concatenate(pending)
