"""Metering a stream out at a target event rate.

The frames come from a source's ``chunks(size)`` (exact size, events.chunking);
:class:`TokenBucket` paces them: tokens (events) accrue at
``rate`` per second up to a small burst capacity; taking ``n`` events when fewer
are available puts the bucket in debt and sleeps until the debt is repaid, so
over any long run the average rate is ``rate`` exactly, whatever the frame size,
and the sleep overshoot of one frame is credited to the next (up to the burst).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from streamflow.errors import ConfigError


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
        if self.rate is None or self.capacity is None:
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
