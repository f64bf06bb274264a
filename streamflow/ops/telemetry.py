"""Telemetry: counters, log-bucket latency histograms and the JSON stats message.

Every process (producer, scorer, sink) keeps a :class:`LatencyHistogram` and plain
counters, and about twice a second turns them into one small JSON message: sent on
a PUB socket for the live monitor and appended as a JSON line to the run folder.

Latencies are never kept as a list: a histogram with ``BUCKETS_PER_DECADE``
logarithmic buckets per decade from 1 us to 1000 s has a relative bucket width of
10**(1/40) - 1 = 5.9 %, so any percentile it reports is within 6 % of the exact
one, in fixed memory, and two histograms merge by adding their counts.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

BUCKETS_PER_DECADE = 40
LOWEST_NS = 1_000.0  # 1 us
DECADES = 9  # up to 1000 s
N_BUCKETS = BUCKETS_PER_DECADE * DECADES + 2  # + underflow and overflow


class LatencyHistogram:
    """Fixed-memory histogram of latencies in nanoseconds with log-spaced buckets."""

    def __init__(self) -> None:
        self.counts = np.zeros(N_BUCKETS, dtype=np.int64)

    @staticmethod
    def bucket_of(latency_ns: np.ndarray) -> np.ndarray:
        """Bucket index: 0 below 1 us, then 40 per decade, the last one above 1000 s."""
        decades = np.log10(np.maximum(np.asarray(latency_ns, dtype=np.float64), 1.0) / LOWEST_NS)
        index = np.floor(decades * BUCKETS_PER_DECADE).astype(np.int64) + 1
        return np.clip(index, 0, N_BUCKETS - 1)

    @staticmethod
    def upper_edge_ns(index: np.ndarray | int) -> np.ndarray:
        """Upper edge of bucket ``index`` in ns (what a percentile reports: a bound, not an underestimate)."""
        return LOWEST_NS * 10.0 ** (np.asarray(index, dtype=np.float64) / BUCKETS_PER_DECADE)

    def record(self, latency_ns: np.ndarray | float) -> None:
        """Add one latency or an array of them."""
        np.add.at(self.counts, self.bucket_of(np.atleast_1d(latency_ns)), 1)

    def merge(self, other: "LatencyHistogram") -> None:
        self.counts += other.counts

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0-100) in seconds, as the upper edge of its bucket; NaN if empty."""
        total = self.total
        if total == 0:
            return float("nan")
        rank = max(1, int(np.ceil(p / 100.0 * total)))
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        return float(self.upper_edge_ns(index)) * 1e-9

    def summary(self) -> dict[str, float]:
        """p50/p90/p99 in milliseconds and the number of samples."""
        return {
            "n": self.total,
            "p50_ms": self.percentile(50) * 1e3,
            "p90_ms": self.percentile(90) * 1e3,
            "p99_ms": self.percentile(99) * 1e3,
        }


@dataclass
class RateMeter:
    """Events and frames per second since the previous report."""

    events: int = 0
    frames: int = 0
    _last_events: int = 0
    _last_frames: int = 0
    _last_time: float = field(default_factory=time.monotonic)

    def add(self, events: int, frames: int = 1) -> None:
        self.events += events
        self.frames += frames

    def rates(self) -> dict[str, float]:
        """Rates over the interval since the last call, then start a new interval."""
        now = time.monotonic()
        dt = max(now - self._last_time, 1e-9)
        out = {
            "events_per_s": (self.events - self._last_events) / dt,
            "frames_per_s": (self.frames - self._last_frames) / dt,
        }
        self._last_events, self._last_frames, self._last_time = self.events, self.frames, now
        return out


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def encode_stats(stats: dict[str, Any]) -> bytes:
    """One stats message as compact JSON (NaN becomes null so any JSON reader accepts it)."""
    return json.dumps(_nan_to_none(stats), default=_json_default, separators=(",", ":")).encode()


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


class TelemetryReporter:
    """Emits a process's stats message every ``interval`` seconds.

    ``publish`` is a callable that sends bytes (a PUB socket's ``send``, owned by
    the process); ``jsonl_path`` a file in the run folder that gets every message
    as a line. Either may be None. The process calls :meth:`maybe_report` from its
    loop with a function that builds the current stats; :meth:`report` forces one
    (at the end of a run).
    """

    def __init__(
        self,
        role: str,
        publish: Callable[[bytes], Any] | None = None,
        jsonl_path: str | Path | None = None,
        interval: float = 0.5,
    ) -> None:
        self.role = role
        self.publish = publish
        self.interval = interval
        self._file = open(jsonl_path, "a", buffering=1) if jsonl_path else None
        self._next = time.monotonic() + interval
        self._start = time.time()
        self._sent = 0  # the message counter "n": a gap seen by a subscriber is a message PUB dropped

    def maybe_report(self, build: Callable[[], dict[str, Any]]) -> bool:
        if time.monotonic() < self._next:
            return False
        self.report(build())
        return True

    def report(self, stats: dict[str, Any]) -> None:
        self._next = time.monotonic() + self.interval
        message = {"role": self.role, "pid": os.getpid(), "n": self._sent, "time": time.time(),
                   "uptime_s": time.time() - self._start, **stats}
        self._sent += 1
        payload = encode_stats(message)
        if self.publish is not None:
            self.publish(payload)
        if self._file is not None:
            self._file.write(payload.decode() + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All stats messages of a telemetry file (a torn last line from a crash is skipped)."""
    messages = []
    with open(path) as handle:
        for line in handle:
            try:
                messages.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return messages
