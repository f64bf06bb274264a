"""Telemetry: counters, log-bucket latency histograms and the typed JSON stats records.

Every process (producer, scorer, sink) keeps a :class:`LatencyHistogram` and plain
counters, and about twice a second turns them into one small record -- a
:class:`ProducerRecord`, :class:`ScorerRecord` or :class:`SinkRecord` -- sent as
JSON on a PUB socket for the live monitor and appended as a JSON line to the run
folder. A record's JSON is its fields plus ``"kind"`` (the record type) and the
reporter's header (``role``, ``pid``, the message counter ``n``, ``time``,
``uptime_s``). Readers tell the kinds apart by ``"kind"``; lines written before
records carried it are told apart by their fields (:func:`record_kind`), so old
run folders stay readable. Every field is optional to a reader and may be null
(NaN travels as null).

Latencies are never kept as a list: a histogram with ``BUCKETS_PER_DECADE``
logarithmic buckets per decade from 1 us to 1000 s has a relative bucket width of
10**(1/40) - 1 = 5.9 %, so any percentile it reports is within 6 % of the exact
one, in fixed memory, and two histograms merge by adding their counts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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

    def merge(self, other: LatencyHistogram) -> None:
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

    def rates(self) -> tuple[float, float]:
        """(events/s, frames/s) over the interval since the last call, then start a new interval."""
        now = time.monotonic()
        dt = max(now - self._last_time, 1e-9)
        out = (self.events - self._last_events) / dt, (self.frames - self._last_frames) / dt
        self._last_events, self._last_frames, self._last_time = self.events, self.frames, now
        return out


@dataclass
class TelemetryRecord:
    """The fields every process reports: its counts so far and its rates since the last record."""

    KIND: ClassVar[str] = "process"

    events: int | None = None
    frames: int | None = None
    events_per_s: float | None = None
    frames_per_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this record: ``"kind"`` and every field (None as null)."""
        return {"kind": self.KIND, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


@dataclass
class ProducerRecord(TelemetryRecord):
    """A producer's record: what it replays, whether its last frame is out (``sent_all``) and
    the record after its END_OF_STREAM handshake (``final``)."""

    KIND: ClassVar[str] = "producer"

    source: str | None = None
    sent_all: bool = False
    final: bool = False
    blocked_s: float | None = None


@dataclass
class ScorerRecord(TelemetryRecord):
    """A scorer's record: latency from the producer's send (:meth:`LatencyHistogram.summary`),
    the sequence account, rejected messages, accepted events, seconds blocked on the sink,
    per learner its running learning figures (with the events it scored and learnt from in this run and
    their ratio, ``learned_fraction``), per trigger line its figures, the device and the learning policy
    (ScorerConfig.learn)."""

    KIND: ClassVar[str] = "scorer"

    latency: dict[str, float] = field(default_factory=dict)
    rejected: int = 0
    sequence: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    blocked_s: float = 0.0
    learners: dict[str, dict[str, float]] = field(default_factory=dict)
    lines: list[dict[str, Any]] = field(default_factory=list)
    device: str = ""
    learn: str = "all"


@dataclass
class SinkRecord(TelemetryRecord):
    """A sink's record: rows committed to the file (``written``), rows waiting for the next
    flush (``pending``), latency from the producer's send, the sequence account, rejected messages."""

    KIND: ClassVar[str] = "sink"

    written: int = 0
    pending: int = 0
    latency: dict[str, float] = field(default_factory=dict)
    sequence: dict[str, int] = field(default_factory=dict)
    rejected: int = 0


@dataclass
class RecoRecord(TelemetryRecord):
    """A reco worker's record: events reconstructed, events rejected (fewer than two jets, bad
    input), malformed messages (``rejected``), seconds spent clustering, latency from the
    producer's send, seconds blocked on the scorer, and the record after its END_OF_STREAM (``final``)."""

    KIND: ClassVar[str] = "reco"

    reconstructed: int = 0
    rejected_events: int = 0
    rejected: int = 0
    reco_s: float = 0.0
    latency: dict[str, float] = field(default_factory=dict)
    blocked_s: float = 0.0
    final: bool = False


RECORD_TYPES: dict[str, type[TelemetryRecord]] = {
    record.KIND: record for record in (ProducerRecord, ScorerRecord, SinkRecord, RecoRecord)}


def record_kind(message: Mapping[str, Any]) -> str:
    """The kind of process a decoded message comes from: "producer", "scorer", "sink", or its role.

    A record's ``"kind"`` says it. A line written before records carried one is told
    apart by its fields (scorers may carry any name): trigger ``lines`` make a scorer,
    a ``source`` a producer, ``written`` rows a sink.
    """
    kind = message.get("kind")
    if isinstance(kind, str) and kind in RECORD_TYPES:
        return kind
    role = str(message.get("role") or "")
    if role == "producer" or "source" in message:
        return "producer"
    if "lines" in message or role == "scorer":
        return "scorer"
    if role == "sink" or "written" in message:
        return "sink"
    return role or "process"


def read_record(message: Mapping[str, Any]) -> TelemetryRecord:
    """The typed record of a decoded message: its kind's fields, each as sent (null: the field's
    default), unknown keys and the reporter's header left out; any other kind a bare record."""
    record = RECORD_TYPES.get(record_kind(message), TelemetryRecord)
    values = {f.name: message[f.name] for f in dataclasses.fields(record) if message.get(f.name) is not None}
    return record(**values)


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
    loop with a function that builds the current record; :meth:`report` forces one
    (at the end of a run). A record is a :class:`TelemetryRecord` (what streamflow's
    processes send) or a plain mapping of fields (a process of another program).
    ``observers`` get every message as a dict too (a Prometheus exporter).
    """

    def __init__(
        self,
        role: str,
        publish: Callable[[bytes], Any] | None = None,
        jsonl_path: str | Path | None = None,
        interval: float = 0.5,
        observers: Sequence[Callable[[dict[str, Any]], Any]] = (),
    ) -> None:
        self.role = role
        self.publish = publish
        self.observers = tuple(observers)
        self.interval = interval
        self._file = open(jsonl_path, "a", buffering=1) if jsonl_path else None
        self._next = time.monotonic() + interval
        self._start = time.time()
        self._sent = 0  # the message counter "n": a gap seen by a subscriber is a message PUB dropped

    def maybe_report(self, build: Callable[[], TelemetryRecord | Mapping[str, Any]]) -> bool:
        if time.monotonic() < self._next:
            return False
        self.report(build())
        return True

    def report(self, record: TelemetryRecord | Mapping[str, Any]) -> None:
        self._next = time.monotonic() + self.interval
        fields = record.to_json() if isinstance(record, TelemetryRecord) else record
        message = {"role": self.role, "pid": os.getpid(), "n": self._sent, "time": time.time(),
                   "uptime_s": time.time() - self._start, **fields}
        self._sent += 1
        for observe in self.observers:
            observe(message)
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
