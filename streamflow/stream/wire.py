"""The wire format: one versioned, self-describing multipart ZeroMQ message per frame.

Part 0 is a fixed little-endian header (:data:`HEADER`) followed by a small UTF-8
JSON "meta" object; the array parts follow, raw and C-contiguous:

========  ============================  ======================================
kind      parts after the header        meta
========  ============================  ======================================
DATA      ids uint64[n], features       {"names": [f feature names]}
          float32[n, f], [labels int8]
SELECTION as DATA, then bits uint64[n],  {"names": [...], "lines": [L names]}
          passed uint64[n],
          scores float32[n, L]
RAW       ids uint64[n], counts          {"names": ["pt", "eta", "phi"]}
          uint32[n], pt, eta, phi
          float64[P], [labels int8[n]]
control   none                          a small dict of counts (EOS, HELLO, ACK, FRAME_ACK,
                                        HEARTBEAT)
========  ============================  ======================================

RAW frames carry particle events, ragged: event i owns particles
``sum(counts[:i]) .. sum(counts[:i+1])`` of the flat arrays, P = sum(counts) is the
header's feature-count field, and the dtype code says float64 (the precision jet
masses need). The counts are checked against P before any particle array is built.

Labels ride along only when the header flag bit ``HAS_LABELS`` is set. The header's
schema hash is a stable 64-bit hash of the feature-name list, so a consumer can
check a stream's schema without reading the names.

:func:`decode` trusts nothing: it checks the magic, version, kind, dtype, flags,
the part count and every part's size against the header's counts, and the meta
JSON against the counts, *before* it makes any array, and it never unpickles.
Every problem is a :class:`~streamflow.errors.WireError`; arrays are zero-copy
``np.frombuffer`` views of the received buffers (read-only for ``zmq.Frame``).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamflow.errors import WireError
from streamflow.events.batch import EventBatch
from streamflow.events.particles import ParticleBatch
from streamflow.trigger.selection import MAX_LINES

MAGIC = b"SFLW"
FORMAT_VERSION = 2  # 2: SELECTION carries passed bits beside the recorded ones
MAX_META_BYTES = 64 * 1024

#: magic, version u16, kind u8, dtype u8, flags u16, stream id u32, seq u64,
#: send time ns u64, event count u32, feature count u32, schema hash u64, meta length u32.
HEADER = struct.Struct("<4sHBBHIQQIIQI")
_SEND_NS = struct.Struct("<Q")
_SEND_NS_OFFSET = struct.calcsize("<4sHBBHIQ")  # where the send time sits in the header


class Kind(enum.IntEnum):
    """What a message carries."""

    DATA = 1  #: a frame of events
    END_OF_STREAM = 2  #: the sender has sent its last frame (meta: frames, events)
    SELECTION = 3  #: accepted events with their trigger bits and every line's score
    HELLO = 4  #: receiver -> sender control socket: "I am here" (meta: name, pid)
    ACK = 5  #: receiver -> sender: END_OF_STREAM received (meta: name, frames, events)
    RAW = 7  #: a frame of particle events (ragged pT, eta, phi), before reconstruction
    FRAME_ACK = 8  #: receiver -> sender (acknowledged delivery): frame (stream id, seq) fully handled
    HEARTBEAT = 9  #: sender -> receiver (acknowledged delivery): a liveness probe, ignored by the receiver


#: header flag bits
HAS_LABELS = 1


#: dtype code on the wire -> value dtype: float32 features (DATA, SELECTION), float64 particles (RAW);
#: 0 is never valid.
DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype(np.float32), 2: np.dtype(np.float64)}
_FLOAT32 = 1
_FLOAT64 = 2
_EVENT_KINDS = (Kind.DATA, Kind.SELECTION, Kind.RAW)
RAW_NAMES = ("pt", "eta", "phi")
_RAW_META = json.dumps({"names": list(RAW_NAMES)}, separators=(",", ":")).encode()
_KINDS = {int(kind): kind for kind in Kind}


@dataclass(slots=True)  # not frozen: a frozen dataclass costs microseconds per frame to build
class Message:
    """One decoded message.

    ``batch`` is set for DATA and SELECTION, ``particles`` for RAW; ``bits`` (uint64[n], recorded),
    ``passed`` (uint64[n]), ``scores`` (float32[n, L]) and ``line_names`` for SELECTION; ``meta`` (a dict) for control
    kinds. ``send_ns`` is the sender's ``time.time_ns()`` when it sent the frame.
    """

    kind: Kind
    stream_id: int
    seq: int
    send_ns: int
    schema_hash: int
    batch: EventBatch | None = None
    bits: np.ndarray | None = None
    passed: np.ndarray | None = None
    scores: np.ndarray | None = None
    line_names: tuple[str, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    particles: ParticleBatch | None = None

    @property
    def n_events(self) -> int:
        """Events the message carries (0 for control kinds)."""
        if self.batch is not None:
            return len(self.batch)
        return len(self.particles) if self.particles is not None else 0


def schema_hash(names: Sequence[str]) -> int:
    """A stable 64-bit hash of an ordered feature-name list (blake2b of its JSON)."""
    digest = hashlib.blake2b(json.dumps(list(names)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@functools.lru_cache(maxsize=64)
def _event_meta(names: tuple[str, ...], lines: tuple[str, ...] | None) -> bytes:
    meta: dict[str, Any] = {"names": list(names)}
    if lines is not None:
        meta["lines"] = list(lines)
    return _meta_bytes(meta)


def _meta_bytes(meta: dict[str, Any]) -> bytes:
    raw = json.dumps(meta, separators=(",", ":")).encode()
    if len(raw) > MAX_META_BYTES:
        raise ValueError(f"meta of {len(raw)} bytes exceeds {MAX_META_BYTES}")
    return raw


def _header(kind: Kind, flags: int, stream_id: int, seq: int, send_ns: int, n: int, f: int,
            hash_: int, meta: bytes) -> bytes:
    dtype = _FLOAT64 if kind == Kind.RAW else _FLOAT32
    try:
        head = HEADER.pack(MAGIC, FORMAT_VERSION, kind, dtype, flags, stream_id, seq, send_ns,
                           n, f, hash_, len(meta))
    except struct.error as exc:
        raise ValueError(f"header field out of range: {exc}") from None
    return head + meta


def _event_parts(batch: EventBatch, kind: Kind, seq: int, stream_id: int, send_ns: int,
                 lines: tuple[str, ...] | None) -> list[Any]:
    n, f = batch.features.shape
    flags = HAS_LABELS if batch.labels is not None else 0
    meta = _event_meta(tuple(batch.names), lines)
    parts: list[Any] = [
        _header(kind, flags, stream_id, seq, send_ns, n, f, _cached_hash(tuple(batch.names)), meta),
        np.ascontiguousarray(batch.ids),
        np.ascontiguousarray(batch.features),
    ]
    if batch.labels is not None:
        parts.append(np.ascontiguousarray(batch.labels))
    return parts


@functools.lru_cache(maxsize=64)
def _cached_hash(names: tuple[str, ...]) -> int:
    return schema_hash(names)


def restamp(parts: list[Any], send_ns: int) -> list[Any]:
    """The encoded message ``parts`` with its header's send time set to ``send_ns`` (the rest shared)."""
    head = bytearray(parts[0])
    _SEND_NS.pack_into(head, _SEND_NS_OFFSET, send_ns)
    return [bytes(head), *parts[1:]]


def encode_data(batch: EventBatch, *, seq: int, stream_id: int, send_ns: int) -> list[Any]:
    """The parts of a DATA message (header bytes, then the batch's arrays, not copied).

    Send with ``socket.send_multipart(parts, copy=False)``; the arrays must not be
    modified until ZeroMQ has sent them.
    """
    return _event_parts(batch, Kind.DATA, seq, stream_id, send_ns, None)


def encode_selection(batch: EventBatch, bits: np.ndarray, scores: np.ndarray,
                     line_names: Sequence[str], *, seq: int, stream_id: int,
                     send_ns: int, passed: np.ndarray | None = None) -> list[Any]:
    """The parts of a SELECTION message: recorded events, their trigger bits, all lines' scores.

    bits: uint64[n], bit i set when line ``line_names[i]`` recorded the event.
    passed: uint64[n], bit i set when the event passed line i's threshold (a
    prescaled line records only every N-th pass); a superset of ``bits``. None:
    ``bits`` (a menu without prescales).
    scores: float32[n, L], every line's score of every accepted event (NaN = not scored).
    """
    lines = tuple(line_names)
    n = len(batch)
    if len(lines) > MAX_LINES:
        raise ValueError(f"{len(lines)} trigger lines exceed the {MAX_LINES} bits of the mask")
    bits = np.ascontiguousarray(bits, dtype=np.uint64)
    passed = bits if passed is None else np.ascontiguousarray(passed, dtype=np.uint64)
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    if bits.shape != (n,) or passed.shape != (n,) or scores.shape != (n, len(lines)):
        raise ValueError(f"bits {list(bits.shape)} / passed {list(passed.shape)} / scores {list(scores.shape)} "
                         f"do not fit {n} events x {len(lines)} lines")
    if np.any(bits & ~passed):
        raise ValueError("a recorded bit without its passed bit: a line records only events that passed it")
    return _event_parts(batch, Kind.SELECTION, seq, stream_id, send_ns, lines) + [bits, passed, scores]


def encode_raw(particles: ParticleBatch, *, seq: int, stream_id: int, send_ns: int) -> list[Any]:
    """The parts of a RAW message: ids, per-event particle counts, flat pT/eta/phi (not copied)."""
    n, total = len(particles), len(particles.pt)
    flags = HAS_LABELS if particles.labels is not None else 0
    parts: list[Any] = [
        _header(Kind.RAW, flags, stream_id, seq, send_ns, n, total, _cached_hash(RAW_NAMES), _RAW_META),
        np.ascontiguousarray(particles.ids), np.ascontiguousarray(particles.counts),
        np.ascontiguousarray(particles.pt), np.ascontiguousarray(particles.eta), np.ascontiguousarray(particles.phi),
    ]
    if particles.labels is not None:
        parts.append(np.ascontiguousarray(particles.labels))
    return parts


def encode_control(kind: Kind, *, stream_id: int, seq: int, meta: dict[str, Any] | None = None,
                   send_ns: int = 0) -> list[bytes]:
    """The single part of a control message (END_OF_STREAM, HELLO, ACK)."""
    kind = Kind(kind)
    if kind in _EVENT_KINDS:
        raise ValueError(f"{kind.name} is not a control kind")
    return [_header(kind, 0, stream_id, seq, send_ns, 0, 0, 0, _meta_bytes(meta or {}))]


_EMPTY_META = _meta_bytes({})


_ACK_TEMPLATE = _header(Kind.FRAME_ACK, 0, 0, 0, 0, 0, 0, 0, _EMPTY_META)
_ACK_IDS = struct.Struct("<IQ")  # stream id, seq: the header's only fields that differ between FRAME_ACKs
_ACK_IDS_OFFSET = struct.calcsize("<4sHBBH")


def encode_frame_ack(stream_id: int, seq: int) -> list[bytes]:
    """A FRAME_ACK (:func:`encode_control` with no meta), built without JSON: one per frame received."""
    return [_header(Kind.FRAME_ACK, 0, stream_id, seq, 0, 0, 0, 0, _EMPTY_META)]


def decode_frame_ack(parts: Sequence[bytes]) -> tuple[int, int] | None:
    """(stream id, seq) if ``parts`` is exactly what :func:`encode_frame_ack` makes, else None (then
    :func:`decode` it): the sender of acknowledged delivery reads one per frame, so this skips the JSON."""
    if len(parts) != 1:
        return None
    head = parts[0]
    end = _ACK_IDS_OFFSET + _ACK_IDS.size
    if (len(head) != len(_ACK_TEMPLATE) or head[:_ACK_IDS_OFFSET] != _ACK_TEMPLATE[:_ACK_IDS_OFFSET]
            or head[end:] != _ACK_TEMPLATE[end:]):
        return None
    stream_id, seq = _ACK_IDS.unpack_from(head, _ACK_IDS_OFFSET)
    return stream_id, seq


def _view(part: Any, index: int) -> memoryview:
    """A flat byte view of one received part: zmq.Frame, bytes, bytearray or memoryview."""
    buffer = getattr(part, "buffer", part)  # zmq.Frame exposes its data as .buffer
    try:
        view = memoryview(buffer)
        return view if view.format == "B" and view.ndim == 1 and view.c_contiguous else view.cast("B")
    except (TypeError, ValueError):
        raise WireError(f"part {index} is a {type(part).__name__}, not a byte buffer") from None


def _parse_meta(raw: memoryview) -> Any:
    try:
        return json.loads(bytes(raw).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise WireError(f"meta is not valid UTF-8 JSON ({type(exc).__name__})") from None


def _names(meta: dict[str, Any], key: str, count: int, what: str) -> tuple[str, ...]:
    names = meta.get(key)
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        raise WireError(f"meta[{key!r}] must be a list of strings")
    if len(names) != count:
        raise WireError(f"meta[{key!r}] has {len(names)} names for {count} {what}")
    if len(set(names)) != len(names):
        raise WireError(f"meta[{key!r}] repeats a name")
    return tuple(names)


@functools.lru_cache(maxsize=64)
def _event_meta_checked(
    raw: bytes, selection: bool, f: int, hash_: int
) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """Names (and line names) of an event message's meta, validated; cached per distinct meta."""
    meta = _parse_meta(memoryview(raw))
    if not isinstance(meta, dict):
        raise WireError("meta must be a JSON object")
    names = _names(meta, "names", f, "feature columns")
    if schema_hash(names) != hash_:
        raise WireError(f"schema hash {hash_:#x} does not match the feature names")
    lines = None
    if selection:
        lines = meta.get("lines")
        if not isinstance(lines, list) or not 1 <= len(lines) <= MAX_LINES:
            raise WireError(f"meta['lines'] must list 1 to {MAX_LINES} trigger lines")
        lines = _names(meta, "lines", len(lines), "trigger lines")
    return names, lines


def _expect_size(view: memoryview, nbytes: int, index: int, what: str) -> None:
    if view.nbytes != nbytes:
        raise WireError(f"part {index} ({what}) has {view.nbytes} bytes, the header implies {nbytes}")


def decode(parts: Sequence[Any]) -> Message:
    """Validate and decode one received multipart message; raise WireError if anything is off."""
    if not isinstance(parts, (list, tuple)) or not parts:
        raise WireError("a message needs at least a header part")
    views = [_view(p, i) for i, p in enumerate(parts)]
    head = views[0]
    if head.nbytes < HEADER.size:
        raise WireError(f"header part has {head.nbytes} bytes, needs at least {HEADER.size}")
    (magic, version, kind_code, dtype, flags, stream_id, seq, send_ns, n, f, hash_,
     meta_len) = HEADER.unpack_from(head)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}: not a streamflow message")
    if version != FORMAT_VERSION:
        raise WireError(f"wire format version {version}, this build reads version {FORMAT_VERSION}")
    kind = _KINDS.get(kind_code)
    if kind is None:
        raise WireError(f"unknown message kind {kind_code}")
    if dtype not in DTYPES:
        raise WireError(f"unknown dtype code {dtype}")
    if kind in _EVENT_KINDS and dtype != (_FLOAT64 if kind == Kind.RAW else _FLOAT32):
        raise WireError(f"{kind.name} message with dtype {DTYPES[dtype]}, expected "
                        f"{'float64' if kind == Kind.RAW else 'float32'}")
    if flags & ~HAS_LABELS:
        raise WireError(f"unknown flags {flags:#x}")
    if meta_len > MAX_META_BYTES:
        raise WireError(f"meta of {meta_len} bytes exceeds the {MAX_META_BYTES}-byte limit")
    if head.nbytes != HEADER.size + meta_len:
        raise WireError(f"header part has {head.nbytes} bytes, expected {HEADER.size + meta_len}")
    raw_meta = head[HEADER.size:]

    if kind not in _EVENT_KINDS:
        if len(parts) != 1:
            raise WireError(f"{kind.name} message has {len(parts)} parts, expected 1")
        if n or f or flags:
            raise WireError(f"{kind.name} message declares events, features or flags")
        meta = _parse_meta(raw_meta)
        if not isinstance(meta, dict):
            raise WireError("meta must be a JSON object")
        return Message(kind, stream_id, seq, send_ns, hash_, meta=meta)

    labelled = bool(flags & HAS_LABELS)
    if kind == Kind.RAW:
        return _decode_raw(views, labelled, stream_id, seq, send_ns, n, f, hash_, bytes(raw_meta))
    expected = 3 + labelled + (3 if kind == Kind.SELECTION else 0)
    if len(parts) != expected:
        raise WireError(f"{kind.name} message has {len(parts)} parts, expected {expected}")
    names, lines = _event_meta_checked(bytes(raw_meta), kind == Kind.SELECTION, f, hash_)
    itemsize = DTYPES[dtype].itemsize
    _expect_size(views[1], 8 * n, 1, "ids")
    _expect_size(views[2], itemsize * n * f, 2, "features")
    if labelled:
        _expect_size(views[3], n, 3, "labels")
    if lines is not None:
        _expect_size(views[-3], 8 * n, expected - 3, "trigger bits")
        _expect_size(views[-2], 8 * n, expected - 2, "passed bits")
        _expect_size(views[-1], 4 * n * len(lines), expected - 1, "scores")

    batch = EventBatch(
        ids=np.frombuffer(views[1], dtype=np.uint64),
        features=np.frombuffer(views[2], dtype=DTYPES[dtype]).reshape(n, f),
        names=names,
        labels=np.frombuffer(views[3], dtype=np.int8) if labelled else None,
    )
    if lines is None:
        return Message(kind, stream_id, seq, send_ns, hash_, batch=batch)
    bits = np.frombuffer(views[-3], dtype=np.uint64)
    passed = np.frombuffer(views[-2], dtype=np.uint64)
    if len(lines) < MAX_LINES and np.any(passed >> np.uint64(len(lines))):
        raise WireError(f"trigger bits set beyond the {len(lines)} lines")
    if np.any(bits & ~passed):
        raise WireError("a recorded trigger bit without its passed bit")
    scores = np.frombuffer(views[-1], dtype=np.float32).reshape(n, len(lines))
    return Message(kind, stream_id, seq, send_ns, hash_, batch=batch, bits=bits, passed=passed, scores=scores,
                   line_names=lines)


def _decode_raw(views: list[memoryview], labelled: bool, stream_id: int, seq: int, send_ns: int, n: int,
                total: int, hash_: int, raw_meta: bytes) -> Message:
    """A RAW message's particles, every size checked (counts against the particle total) first."""
    expected = 6 + labelled
    if len(views) != expected:
        raise WireError(f"RAW message has {len(views)} parts, expected {expected}")
    names, _ = _event_meta_checked(raw_meta, False, len(RAW_NAMES), hash_)
    if names != RAW_NAMES:
        raise WireError(f"RAW meta names {list(names)}, expected {list(RAW_NAMES)}")
    _expect_size(views[1], 8 * n, 1, "ids")
    _expect_size(views[2], 4 * n, 2, "particle counts")
    for index, what in ((3, "pt"), (4, "eta"), (5, "phi")):
        _expect_size(views[index], 8 * total, index, what)
    if labelled:
        _expect_size(views[6], n, 6, "labels")
    counts = np.frombuffer(views[2], dtype=np.uint32)
    if int(counts.sum(dtype=np.uint64)) != total:
        raise WireError(f"particle counts sum to {int(counts.sum(dtype=np.uint64))}, the header says {total}")
    particles = ParticleBatch(
        ids=np.frombuffer(views[1], dtype=np.uint64), counts=counts,
        pt=np.frombuffer(views[3], dtype=np.float64), eta=np.frombuffer(views[4], dtype=np.float64),
        phi=np.frombuffer(views[5], dtype=np.float64),
        labels=np.frombuffer(views[6], dtype=np.int8) if labelled else None,
    )
    return Message(Kind.RAW, stream_id, seq, send_ns, hash_, particles=particles)
