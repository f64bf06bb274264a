"""Decoder fuzz: thousands of malformed messages, and the only thing decode() ever raises is WireError."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamflow.errors import WireError
from streamflow.events.batch import EventBatch
from streamflow.events.particles import ParticleBatch
from streamflow.stream.wire import (
    HEADER,
    Kind,
    decode,
    encode_control,
    encode_data,
    encode_raw,
    encode_selection,
)

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def valid_messages() -> list[list[bytes]]:
    rng = np.random.default_rng(0)
    batch = EventBatch(ids=np.arange(6, dtype=np.uint64), features=rng.normal(size=(6, 4)).astype(np.float32),
                       names=("a", "b", "c", "d"), labels=np.array([0, 1, 0, 0, 1, 0], dtype=np.int8))
    plain = EventBatch(batch.ids, batch.features, batch.names)
    counts = np.array([3, 0, 5, 1], dtype=np.uint32)  # an empty event included
    particles = ParticleBatch(ids=np.arange(4, dtype=np.uint64), counts=counts, pt=rng.exponential(size=9),
                              eta=rng.normal(size=9), phi=rng.uniform(-3, 3, size=9),
                              labels=np.array([0, 1, 0, 0], dtype=np.int8))
    messages = [
        encode_data(batch, seq=3, stream_id=1, send_ns=5),
        encode_data(plain, seq=4, stream_id=1, send_ns=6),
        encode_selection(plain, np.arange(6, dtype=np.uint64) % 4, np.ones((6, 2), np.float32), ["l0", "l1"],
                         seq=0, stream_id=0, send_ns=0),
        encode_control(Kind.END_OF_STREAM, stream_id=1, seq=7, meta={"frames": 7, "events": 42}),
        encode_control(Kind.ACK, stream_id=1, seq=7, meta={"name": "scorer", "frames": 7}),
        encode_raw(particles, seq=2, stream_id=1, send_ns=7),
        encode_raw(ParticleBatch(particles.ids, counts, particles.pt, particles.eta, particles.phi), seq=3,
                   stream_id=1, send_ns=8),
    ]
    return [[bytes(memoryview(p)) for p in m] for m in messages]


VALID = valid_messages()
RAW = [i for i, m in enumerate(VALID) if HEADER.unpack_from(m[0])[2] == Kind.RAW]


def decode_or_wire_error(parts: object) -> None:
    """decode() either succeeds with a consistent message or raises WireError; anything else fails the test."""
    try:
        msg = decode(parts)  # type: ignore[arg-type]
    except WireError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    if msg.batch is not None:  # whatever got through is internally consistent
        n = len(msg.batch)
        assert msg.batch.features.shape == (n, len(msg.batch.names))
        assert msg.batch.ids.shape == (n,)
    if msg.particles is not None:  # ragged: the counts cover the flat arrays exactly
        particles = msg.particles
        assert particles.counts.shape == particles.ids.shape
        assert int(particles.counts.sum(dtype=np.uint64)) == len(particles.pt) == len(particles.eta)
        assert particles.offsets[-1] == len(particles.phi)


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_random_bytes(parts: list[bytes]) -> None:
    decode_or_wire_error(parts)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=6), st.binary(max_size=120))
def test_random_parts_behind_a_valid_magic_and_version(rest: list[bytes], tail: bytes) -> None:
    decode_or_wire_error([b"SFLW\x01\x00" + tail] + rest)


@FUZZ
@given(
    st.sampled_from(range(len(VALID))),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_byte_flips_in_valid_messages(which: int, flips: list[tuple[int, int]]) -> None:
    parts = [bytearray(p) for p in VALID[which]]
    for position, value in flips:
        part = parts[position % len(parts)]
        if part:
            part[position % len(part)] = value
    decode_or_wire_error(parts)


@FUZZ
@given(
    st.sampled_from(range(len(VALID))),
    st.lists(st.integers(0, 2**64 - 1), min_size=12, max_size=12),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_arbitrary_header_fields(which: int, values: list[int], keep: list[bool]) -> None:
    parts = list(VALID[which])
    fields = list(HEADER.unpack_from(parts[0]))
    limits = [None, 2**16, 2**8, 2**8, 2**16, 2**32, 2**64, 2**64, 2**32, 2**32, 2**64, 2**32]
    for i, limit in enumerate(limits):
        if limit is not None and not keep[i]:
            fields[i] = values[i] % limit  # huge declared counts and lengths included
    parts[0] = HEADER.pack(*fields) + parts[0][HEADER.size:]
    decode_or_wire_error(parts)


@FUZZ
@given(st.sampled_from(range(len(VALID))), st.data())
def test_truncated_dropped_and_extra_parts(which: int, data: st.DataObject) -> None:
    parts = list(VALID[which])
    op = data.draw(st.sampled_from(["truncate", "drop", "extra", "swap"]))
    i = data.draw(st.integers(0, len(parts) - 1))
    if op == "truncate":
        parts[i] = parts[i][: data.draw(st.integers(0, max(0, len(parts[i]) - 1)))]
    elif op == "drop":
        del parts[i]
    elif op == "extra":
        parts.insert(i + 1, data.draw(st.binary(max_size=64)))
    elif len(parts) > 1:
        j = data.draw(st.integers(0, len(parts) - 1))
        parts[i], parts[j] = parts[j], parts[i]
    decode_or_wire_error(parts)


@FUZZ
@given(st.sampled_from([0, 1, *RAW]), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
))
def test_arbitrary_meta_json(which: int, meta: object) -> None:
    parts = list(VALID[which])
    raw = json.dumps(meta).encode()
    fields = list(HEADER.unpack_from(parts[0]))
    fields[-1] = len(raw)
    parts[0] = HEADER.pack(*fields) + raw
    decode_or_wire_error(parts)


@FUZZ
@given(st.sampled_from(RAW), st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=4))
def test_raw_counts_that_do_not_cover_the_particles(which: int, counts: list[int]) -> None:
    """Any per-event particle counts: decoded only when they sum to the header's particle total."""
    parts = list(VALID[which])
    parts[2] = np.array(counts, dtype=np.uint32).tobytes()
    try:
        msg = decode(parts)
    except WireError as exc:
        assert sum(counts) != 9 and "counts sum to" in str(exc)
        return
    assert sum(counts) == 9 and msg.particles is not None


def test_raw_round_trip_is_zero_copy_and_exact() -> None:
    msg = decode(VALID[RAW[0]])
    assert msg.kind == Kind.RAW and msg.n_events == 4 and msg.batch is None
    assert msg.particles.counts.tolist() == [3, 0, 5, 1]
    assert msg.particles.pt.dtype == np.float64 and not msg.particles.pt.flags.owndata
    assert msg.particles.labels.tolist() == [0, 1, 0, 0]
    assert decode(VALID[RAW[1]]).particles.labels is None


def test_raw_with_the_feature_dtype_is_refused() -> None:
    parts = list(VALID[RAW[0]])
    fields = list(HEADER.unpack_from(parts[0]))
    fields[3] = 1  # float32
    parts[0] = HEADER.pack(*fields) + parts[0][HEADER.size:]
    try:
        decode(parts)
    except WireError as exc:
        assert "RAW message with dtype float32" in str(exc)
    else:
        raise AssertionError("a RAW frame declaring float32 decoded")
