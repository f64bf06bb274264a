"""Wire format: round trips, zero-copy views, and clear WireErrors on every kind of bad message."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import zmq

from streamflow.errors import WireError
from streamflow.events.batch import EventBatch
from streamflow.stream.wire import (
    HEADER,
    MAX_META_BYTES,
    Kind,
    decode,
    encode_control,
    encode_data,
    encode_selection,
    restamp,
    schema_hash,
)

NAMES = ("mjj", "mj1", "tau21_jmin")


def make_batch(n: int = 5, labels: bool = True, seed: int = 0) -> EventBatch:
    rng = np.random.default_rng(seed)
    return EventBatch(
        ids=np.arange(100, 100 + n, dtype=np.uint64),
        features=rng.normal(size=(n, len(NAMES))).astype(np.float32),
        names=NAMES,
        labels=rng.integers(0, 2, n).astype(np.int8) if labels else None,
    )


def as_bytes(parts: list) -> list[bytes]:
    return [bytes(memoryview(p)) for p in parts]


def assert_same_batch(a: EventBatch, b: EventBatch) -> None:
    assert a.names == b.names
    assert a.ids.tobytes() == b.ids.tobytes()
    assert a.features.tobytes() == b.features.tobytes()
    assert (a.labels is None) == (b.labels is None)
    if a.labels is not None:
        assert a.labels.tobytes() == b.labels.tobytes()


@pytest.mark.parametrize("labels", [True, False])
def test_data_round_trip(labels: bool) -> None:
    batch = make_batch(labels=labels)
    parts = encode_data(batch, seq=7, stream_id=3, send_ns=123456789)
    assert len(parts) == (4 if labels else 3)
    msg = decode(as_bytes(parts))
    assert (msg.kind, msg.seq, msg.stream_id, msg.send_ns) == (Kind.DATA, 7, 3, 123456789)
    assert msg.schema_hash == schema_hash(NAMES)
    assert_same_batch(msg.batch, batch)
    assert msg.batch.features.shape == (5, 3) and msg.batch.features.flags.c_contiguous


def test_restamp_changes_only_the_send_time() -> None:
    batch = make_batch()
    parts = encode_data(batch, seq=7, stream_id=3, send_ns=1)
    msg = decode(as_bytes(restamp(parts, 2**63 + 5)))
    assert (msg.kind, msg.seq, msg.stream_id, msg.send_ns) == (Kind.DATA, 7, 3, 2**63 + 5)
    assert_same_batch(msg.batch, batch)
    assert decode(as_bytes(parts)).send_ns == 1  # the original is untouched


def test_selection_round_trip() -> None:
    batch = make_batch(4)
    bits = np.array([1, 2, 3, 1], dtype=np.uint64)
    scores = np.array([[0.5, np.nan], [1, 2], [3, 4], [5, 6]], dtype=np.float32)
    parts = encode_selection(batch, bits, scores, ["flow_log_mass", "cwola"], seq=1, stream_id=0, send_ns=9)
    msg = decode(as_bytes(parts))
    assert msg.kind == Kind.SELECTION
    assert msg.line_names == ("flow_log_mass", "cwola")
    assert_same_batch(msg.batch, batch)
    assert msg.bits.tolist() == [1, 2, 3, 1]
    assert msg.passed.tolist() == [1, 2, 3, 1]  # no passed bits given: a menu without prescales
    np.testing.assert_array_equal(msg.scores, scores)  # NaN included


def test_selection_carries_passed_and_recorded_bits() -> None:
    batch = make_batch(3)
    recorded = np.array([1, 2, 2], dtype=np.uint64)
    passed = np.array([3, 2, 3], dtype=np.uint64)  # events 0 and 2 passed line 0 (prescaled), not recorded by it
    msg = decode(as_bytes(encode_selection(batch, recorded, np.zeros((3, 2), np.float32), ["ps", "b"],
                                           seq=0, stream_id=0, send_ns=0, passed=passed)))
    assert msg.bits.tolist() == [1, 2, 2] and msg.passed.tolist() == [3, 2, 3]
    with pytest.raises(ValueError, match="recorded bit without its passed bit"):
        encode_selection(batch, passed, np.zeros((3, 2), np.float32), ["ps", "b"], seq=0, stream_id=0, send_ns=0,
                         passed=recorded)
    parts = as_bytes(encode_selection(batch, recorded, np.zeros((3, 2), np.float32), ["ps", "b"], seq=0,
                                      stream_id=0, send_ns=0, passed=passed))
    parts[-3], parts[-2] = parts[-2], parts[-3]  # recorded and passed swapped in transit
    with pytest.raises(WireError, match="recorded trigger bit without its passed bit"):
        decode(parts)


def test_control_round_trip() -> None:
    parts = encode_control(Kind.END_OF_STREAM, stream_id=2, seq=15, meta={"frames": 15, "events": 60000})
    msg = decode(parts)
    assert (msg.kind, msg.stream_id, msg.seq, msg.batch) == (Kind.END_OF_STREAM, 2, 15, None)
    assert msg.meta == {"frames": 15, "events": 60000}


def test_empty_frame_round_trip() -> None:
    batch = make_batch(0)
    assert len(decode(as_bytes(encode_data(batch, seq=0, stream_id=0, send_ns=0))).batch) == 0


def test_decode_is_zero_copy() -> None:
    parts = [bytearray(p) for p in as_bytes(encode_data(make_batch(), seq=0, stream_id=0, send_ns=0))]
    msg = decode(parts)
    parts[2][:4] = np.float32(42.0).tobytes()  # the received buffer, not a copy, backs the array
    assert msg.batch.features[0, 0] == 42.0


def test_decode_zmq_frames_over_a_socket() -> None:
    ctx = zmq.Context()
    try:
        push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        push.bind("inproc://wire-test")
        pull.connect("inproc://wire-test")
        batch = make_batch(20_000)  # large enough for ZeroMQ's zero-copy path
        push.send_multipart(encode_data(batch, seq=5, stream_id=1, send_ns=1), copy=False)
        msg = decode(pull.recv_multipart(copy=False))
        assert_same_batch(msg.batch, batch)
        assert not msg.batch.features.flags.owndata
        push.close(0)
        pull.close(0)
    finally:
        ctx.term()


def test_schema_hash_is_stable_and_order_sensitive() -> None:
    assert schema_hash(NAMES) == schema_hash(list(NAMES))
    assert schema_hash(NAMES) != schema_hash(NAMES[::-1])
    assert schema_hash(["a"]) == 0x25CF537F4B635727  # never changes across runs or versions


# --- targeted bad messages: each must be a WireError with a message naming the problem ----

def good_parts() -> list[bytes]:
    return as_bytes(encode_data(make_batch(), seq=1, stream_id=0, send_ns=0))


def with_header(**fields: int | bytes) -> list[bytes]:
    parts = good_parts()
    names = ("magic", "version", "kind", "dtype", "flags", "stream_id", "seq", "send_ns", "n", "f",
             "hash", "meta_len")
    values = dict(zip(names, HEADER.unpack_from(parts[0]), strict=True))
    values.update(fields)
    parts[0] = HEADER.pack(*values.values()) + parts[0][HEADER.size:]
    return parts


@pytest.mark.parametrize(
    "parts, problem",
    [
        ([], "at least a header"),
        ("not a list", "at least a header"),
        ([b"\x00" * 10], "needs at least"),
        ([np.random.default_rng(1).bytes(300)], "magic"),
        (with_header(magic=b"ZMQ!"), "bad magic"),
        (with_header(version=3), "version 3"),
        (with_header(kind=99), "unknown message kind"),
        (with_header(dtype=0), "dtype"),
        (with_header(dtype=7), "dtype"),
        (with_header(flags=0x80), "unknown flags"),
        (with_header(n=2**32 - 1), "header implies"),
        (with_header(f=100_000), "names for 100000"),
        (with_header(meta_len=2**32 - 1), "exceeds"),
        (with_header(meta_len=3), "header part has"),
        (with_header(hash=1), "schema hash"),
        (with_header(flags=0), "parts, expected 3"),
        (with_header(kind=int(Kind.SELECTION)), "parts, expected 7"),
        (with_header(kind=int(Kind.ACK)), "parts, expected 1"),
        (good_parts()[:3], "parts, expected 4"),
        (good_parts() + [b""], "parts, expected 4"),
        (good_parts()[:2] + [good_parts()[2][:-1]] + good_parts()[3:], "features"),
        (good_parts()[:1] + [b""] + good_parts()[2:], "ids"),
        (good_parts()[:3] + [b"\x01" * 6], "labels"),
        ([good_parts()[0][:-1]] + good_parts()[1:], "header part has"),
        (good_parts()[:1] + [None] + good_parts()[2:], "not a byte buffer"),
        (good_parts()[:1] + ["text"] + good_parts()[2:], "not a byte buffer"),
    ],
)
def test_bad_messages_raise_wire_error(parts: list, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        decode(parts)


def replace_meta(parts: list[bytes], meta: bytes) -> list[bytes]:
    values = list(HEADER.unpack_from(parts[0]))
    values[-1] = len(meta)
    return [HEADER.pack(*values) + meta] + parts[1:]


@pytest.mark.parametrize(
    "meta, problem",
    [
        (b"\xff\xfe", "UTF-8 JSON"),
        (b"{not json", "UTF-8 JSON"),
        (b"[" * 50_000 + b"]" * 10_000, "UTF-8 JSON"),  # nesting deep enough to blow the parser's stack
        (b"[1, 2]", "JSON object"),
        (b'{"names": "mjj"}', "list of strings"),
        (b'{"names": ["mjj", 1, "x"]}', "list of strings"),
        (b'{"names": ["mjj", "mj1"]}', "2 names for 3"),
        (b'{"names": ["mjj", "mjj", "x"]}', "repeats"),
    ],
)
def test_bad_meta_raises_wire_error(meta: bytes, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        decode(replace_meta(good_parts(), meta))


def test_selection_validation() -> None:
    batch = make_batch(3)
    parts = as_bytes(encode_selection(batch, np.array([1, 1, 4], dtype=np.uint64), np.zeros((3, 2), np.float32),
                                      ["a", "b"], seq=0, stream_id=0, send_ns=0))
    with pytest.raises(WireError, match="beyond the 2 lines"):
        decode(parts)
    parts[-1] = parts[-1][:-4]
    with pytest.raises(WireError, match="scores"):
        decode(parts)


def test_control_meta_is_bounded_and_control_has_no_events() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_control(Kind.HELLO, stream_id=0, seq=0, meta={"x": "y" * MAX_META_BYTES})
    parts = encode_control(Kind.HELLO, stream_id=0, seq=0, meta={})
    values = list(HEADER.unpack_from(parts[0]))
    values[8] = 5  # event count
    with pytest.raises(WireError, match="declares events"):
        decode([HEADER.pack(*values) + parts[0][HEADER.size:]])


def test_header_layout_is_fixed() -> None:
    # 4s magic, H version, B kind, B dtype, H flags, I stream, Q seq, Q send_ns, I n, I f, Q hash, I meta
    assert HEADER.size == 50
    assert HEADER.format == "<4sHBBHIQQIIQI"
    assert struct.unpack_from("<4sH", good_parts()[0]) == (b"SFLW", 2)


def test_a_frame_ack_is_read_without_json_and_anything_else_is_left_to_decode() -> None:
    from streamflow.stream.wire import decode_frame_ack, encode_frame_ack

    parts = encode_frame_ack(3, 2**40 + 7)
    assert decode_frame_ack(parts) == (3, 2**40 + 7)
    msg = decode(parts)
    assert (msg.kind, msg.stream_id, msg.seq, msg.meta) == (Kind.FRAME_ACK, 3, 2**40 + 7, {})
    with_meta = encode_control(Kind.FRAME_ACK, stream_id=3, seq=7, meta={"x": 1})
    other_kind = encode_control(Kind.ACK, stream_id=3, seq=7)
    for bad in (with_meta, other_kind, [parts[0][:-1]], [parts[0], b""], [b"X" + parts[0][1:]]):
        assert decode_frame_ack(bad) is None
