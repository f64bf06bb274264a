"""Endpoints, binding errors and the END_OF_STREAM handshake between one sender and its receivers."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import zmq

from streamflow.errors import ConfigError
from streamflow.events.batch import EventBatch
from streamflow.stream.transport import (
    HandshakeError,
    Receiver,
    Sender,
    bind,
    check_endpoint,
    connect,
    control_endpoint,
)
from streamflow.stream.wire import Kind, decode, encode_data


def batch(start: int, n: int) -> EventBatch:
    return EventBatch(ids=np.arange(start, start + n, dtype=np.uint64),
                      features=np.full((n, 2), start, dtype=np.float32), names=("a", "b"))


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def test_control_endpoint_is_derived_from_the_data_endpoint() -> None:
    assert control_endpoint("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5556"
    assert control_endpoint("tcp://[::1]:7000") == "tcp://[::1]:7001"
    assert control_endpoint("ipc:///tmp/sf.sock") == "ipc:///tmp/sf.sock.ctl"
    assert control_endpoint("inproc://x") == "inproc://x.ctl"
    with pytest.raises(ConfigError, match="no port for the control"):
        control_endpoint("tcp://127.0.0.1:65535")


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5555", "tcp://127.0.0.1", "tcp://127.0.0.1:0",
                                      "tcp://127.0.0.1:70000", "tcp://:5555", "udp://127.0.0.1:5555",
                                      "tcp://127.0.0.1:http", "ipc://"])
def test_malformed_endpoints_are_config_errors(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="bad endpoint"):
        check_endpoint(endpoint)


def test_bind_turns_address_in_use_into_a_config_error(ctx: zmq.Context) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match="address already in use") as info:
            bind(ctx, zmq.PUSH, endpoint)
    assert "\n" not in str(info.value)


def test_bind_and_connect_errors_name_the_endpoint(ctx: zmq.Context, tmp_path) -> None:
    missing_dir = f"ipc://{tmp_path}/no/such/dir/sock"
    with pytest.raises(ConfigError, match=f"cannot bind {missing_dir}"):
        bind(ctx, zmq.PUSH, missing_dir)
    with pytest.raises(ConfigError, match="cannot connect to tcp://bad host:5555: Invalid argument"):
        connect(ctx, zmq.PULL, "tcp://bad host:5555")


def test_a_failed_control_bind_releases_the_data_socket(ctx: zmq.Context, tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/data"
    blocker = bind(ctx, zmq.PUSH, endpoint + ".ctl")
    with pytest.raises(ConfigError, match="already in use"):
        Sender(ctx, endpoint)
    blocker.close()
    deadline = time.monotonic() + 2  # ZeroMQ closes listeners asynchronously
    while True:
        try:
            Sender(ctx, endpoint).close()  # the data endpoint was not left bound
            break
        except ConfigError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def consume(receiver: Receiver, got: list[EventBatch], ends: list[dict]) -> None:
    while True:
        msg = receiver.recv(timeout_ms=5000)
        assert msg is not None, "receiver starved"
        if msg.kind == Kind.END_OF_STREAM:
            ends.append(msg.meta)
            return
        got.append(EventBatch(msg.batch.ids.copy(), msg.batch.features.copy(), msg.batch.names))


def test_every_receiver_gets_and_acknowledges_end_of_stream(ctx: zmq.Context) -> None:
    endpoint = "inproc://stream"
    sender = Sender(ctx, endpoint, stream_id=4, hwm=4)
    receivers = [Receiver(ctx, endpoint, name=f"r{i}") for i in range(3)]
    got: list[list[EventBatch]] = [[] for _ in receivers]
    ends: list[dict] = []
    threads = [threading.Thread(target=consume, args=(r, g, ends)) for r, g in zip(receivers, got)]
    for t in threads:
        t.start()
    for i in range(30):
        assert sender.send_batch(batch(10 * i, 10))
    eos = sender.end_stream(timeout_s=10)
    for t in threads:
        t.join(5)
    assert sorted(name.split()[0] for name in eos.acks) == ["r0", "r1", "r2"]
    assert eos.acked_events == sender.events == 300
    assert ends == [{"frames": 30, "events": 300, "receivers": 3}] * 3  # each knows the stream was shared
    ids = np.sort(np.concatenate([b.ids for g in got for b in g]))
    np.testing.assert_array_equal(ids, np.arange(300))
    for r, g in zip(receivers, got):
        assert (r.frames, r.events) == (len(g), 10 * len(g))
        r.close()
    sender.close()


def test_end_of_stream_counts_the_receivers_that_said_hello_so_far(ctx: zmq.Context) -> None:
    """The repeated END_OF_STREAM is encoded afresh: a HELLO that arrives during the handshake is counted."""
    endpoint = "inproc://late"
    sender = Sender(ctx, endpoint, stream_id=2)
    silent = ctx.socket(zmq.PULL)  # takes its share of the messages but never says HELLO
    silent.connect(endpoint)
    assert sender.send_batch(batch(0, 5))
    assert silent.poll(5000) and decode(silent.recv_multipart()).kind == Kind.DATA
    results: list = []
    ender = threading.Thread(target=lambda: results.append(sender.end_stream(timeout_s=10)))
    ender.start()
    assert silent.poll(5000)
    first = decode(silent.recv_multipart()).meta
    late = [Receiver(ctx, endpoint, name=f"late{i}") for i in range(2)]
    time.sleep(1.0)  # ten rounds of the handshake: the sender has read the HELLOs
    metas = []
    while silent.poll(0):
        metas.append(decode(silent.recv_multipart()).meta)
    msgs = [receiver.recv(timeout_ms=5000) for receiver in late]
    ender.join(10)
    assert first == {"frames": 1, "events": 5, "receivers": 1}  # no HELLO yet: at least the one it sends to
    assert metas and metas[-1] == {"frames": 1, "events": 5, "receivers": 2}
    assert all(msg is not None and msg.kind == Kind.END_OF_STREAM for msg in msgs) and len(results[0].acks) == 2
    for receiver in late:
        receiver.close()
    silent.close(linger=0)
    sender.close()


def test_a_silent_receiver_is_named_in_the_timeout_error(ctx: zmq.Context) -> None:
    sender = Sender(ctx, "inproc://silent")
    mute = Receiver(ctx, "inproc://silent", name="stuck-scorer")  # says HELLO, never reads
    sender.send_batch(batch(0, 3))
    start = time.monotonic()
    with pytest.raises(HandshakeError, match=r"by 1 of 1 receivers: stuck-scorer \(pid \d+\)"):
        sender.end_stream(timeout_s=0.5)
    assert time.monotonic() - start < 3
    mute.close()
    sender.close()


def test_no_receiver_at_all_is_a_clear_error(ctx: zmq.Context) -> None:
    sender = Sender(ctx, "inproc://nobody")
    with pytest.raises(HandshakeError, match="no receiver said HELLO on inproc://nobody.ctl"):
        sender.end_stream(timeout_s=0.3)
    sender.close()


def test_a_blocked_send_returns_when_stopped(ctx: zmq.Context) -> None:
    sender = Sender(ctx, "inproc://blocked")  # no receiver: PUSH cannot send
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert not sender.send_batch(batch(0, 1), stop)
    assert sender.frames == 0 and sender.blocked_s >= 0.1
    sender.close()


def test_receiver_counts_and_skips_bad_frames(ctx: zmq.Context) -> None:
    push = bind(ctx, zmq.PUSH, "inproc://bad")
    receiver = Receiver(ctx, "inproc://bad")
    push.send_multipart([b"garbage"])
    push.send_multipart(encode_data(batch(0, 5), seq=0, stream_id=0, send_ns=0))
    msg = receiver.recv(timeout_ms=2000)
    assert msg is not None and msg.batch.ids.tolist() == [0, 1, 2, 3, 4]
    assert receiver.rejected == 1 and "header part" in receiver.last_error
    assert receiver.recv(timeout_ms=50) is None
    receiver.close()
    push.close()


def test_a_sender_waits_for_the_receivers_it_expects_before_its_first_frame(ctx) -> None:
    from tests.helpers import free_port_block

    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    with Sender(ctx, endpoint) as sender:
        started = time.monotonic()
        assert sender.wait_for_receivers(1, timeout_s=0.3) == 0  # nobody there: gives up at the timeout
        assert time.monotonic() - started >= 0.3
        with Receiver(ctx, endpoint, name="a"), Receiver(ctx, endpoint, name="b"):
            assert sender.wait_for_receivers(2, timeout_s=10) == 2
            stop = threading.Event()
            stop.set()
            assert sender.wait_for_receivers(3, timeout_s=10, stop_event=stop) == 2  # a stop ends the wait
