"""The replay producer end to end: a `streamflow replay` process -> a receiver in the test, byte for byte."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from producers.replay import ReplayConfig, run_replay
from streamflow.cli.main import build_parser, main
from streamflow.cli.replay import config_from_args
from streamflow.config import load_toml
from streamflow.errors import ConfigError
from streamflow.events import EventBatch, open_source
from streamflow.stream.transport import Receiver
from streamflow.stream.wire import Kind, Message


def free_tcp_endpoint() -> str:
    """A loopback endpoint whose port and port + 1 (the control socket) are both free."""
    while True:
        with socket.socket() as data, socket.socket() as control:
            data.bind(("127.0.0.1", 0))
            port = data.getsockname()[1]
            try:
                control.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return f"tcp://127.0.0.1:{port}"


def streamflow(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamflow.cli.main", "replay", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def receive_all(endpoint: str, producer: subprocess.Popen | threading.Thread, timeout_s: float = 60,
                on_first: Callable[[], None] = lambda: None) -> tuple[list[Message], Message]:
    """Every DATA message until END_OF_STREAM (arrays copied out of the ZeroMQ frames).

    ``on_first`` runs once the first frame has arrived.
    """
    ctx = zmq.Context()
    messages = []
    deadline = time.monotonic() + timeout_s
    try:
        with Receiver(ctx, endpoint, name="test") as receiver:
            while True:
                msg = receiver.recv(timeout_ms=200)
                if msg is None:
                    running = producer.is_alive() if isinstance(producer, threading.Thread) else producer.poll() is None
                    assert running, f"producer ended without END_OF_STREAM: {producer.communicate()}"
                    assert time.monotonic() < deadline, "no END_OF_STREAM in time"
                    continue
                if msg.kind != Kind.DATA:
                    break
                b = msg.batch
                msg.batch = EventBatch(b.ids.copy(), b.features.copy(), b.names,
                                       None if b.labels is None else b.labels.copy())
                messages.append(msg)
                if len(messages) == 1:
                    on_first()
            assert msg.kind == Kind.END_OF_STREAM
            assert (receiver.frames, receiver.rejected) == (len(messages), 0)
            return messages, msg
    finally:
        ctx.destroy(linger=0)


def expected(spec: str, n: int | None = None, **options) -> EventBatch:
    source = open_source(spec, **options)
    batches, total = [], 0
    for batch in source.chunks(1 << 16):
        batches.append(batch)
        total += len(batch)
        if n is not None and total >= n:
            break
    return EventBatch.concatenate(batches).take(slice(0, n))


def assert_stream(messages: list[Message], eos: Message, want: EventBatch, frame_size: int, stream_id: int) -> None:
    assert [m.seq for m in messages] == list(range(len(messages)))
    assert {m.stream_id for m in messages} == {stream_id} and eos.stream_id == stream_id
    assert all(len(m.batch) == frame_size for m in messages[:-1]) and 0 < len(messages[-1].batch) <= frame_size
    send_times = [m.send_ns for m in messages]
    assert send_times == sorted(send_times)
    got = EventBatch.concatenate([m.batch for m in messages])
    assert got.names == want.names
    assert got.ids.tobytes() == want.ids.tobytes()
    assert got.features.tobytes() == want.features.tobytes()
    assert got.labels is not None and got.labels.tobytes() == want.labels.tobytes()
    assert eos.meta == {"frames": len(messages), "events": len(want), "receivers": 1}


def test_file_replay_over_tcp_is_byte_exact(features_file: Path) -> None:
    endpoint = free_tcp_endpoint()
    producer = streamflow(str(features_file), "--frame-size", "4096", "--signal-fraction", "0.02",
                          "--seed", "5", "--endpoint", endpoint, "--stream-id", "7", "--eos-timeout", "60")
    messages, eos = receive_all(endpoint, producer)
    out, err = producer.communicate(timeout=60)
    assert producer.returncode == 0, err
    assert_stream(messages, eos, expected(str(features_file), signal_fraction=0.02, seed=5), 4096, 7)
    assert "END_OF_STREAM acknowledged by test" in out and err == ""


def test_generator_replay_over_ipc_is_byte_exact(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/stream"
    producer = streamflow("gaussian", "--events", "10000", "--frame-size", "999", "--seed", "3",
                          "--endpoint", endpoint, "--rate", "max")
    messages, eos = receive_all(endpoint, producer)
    out, err = producer.communicate(timeout=60)
    assert producer.returncode == 0, err
    assert len(messages) == 11
    assert_stream(messages, eos, expected("gaussian", 10_000, seed=3), 999, 0)


def test_stop_event_ends_the_stream_cleanly_and_rate_is_held(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/paced"
    config = ReplayConfig(source="synthetic", rate=40_000, frame_size=500, endpoint=endpoint)
    stop = threading.Event()
    result = {}
    producer = threading.Thread(target=lambda: result.update(stats=run_replay(config, stop)))
    producer.start()
    threading.Timer(1.0, stop.set).start()
    messages, eos = receive_all(endpoint, producer, timeout_s=20)
    producer.join(10)
    stats = result["stats"]
    assert stats.stopped
    assert stats.events == sum(len(m.batch) for m in messages) == eos.meta["events"]
    assert list(stats.eos.acks.values())[0]["events"] == stats.events
    assert 0.8 * 40_000 < stats.rate < 1.05 * 40_000


def test_looped_file_continues_the_ids(features_file: Path, tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/looped"
    config = ReplayConfig(source=str(features_file), loop=True, events=61_000, frame_size=8192, endpoint=endpoint)
    producer = threading.Thread(target=run_replay, args=(config,))
    producer.start()
    messages, eos = receive_all(endpoint, producer)
    producer.join(10)
    got = EventBatch.concatenate([m.batch for m in messages])
    np.testing.assert_array_equal(got.ids, np.arange(61_000))
    assert got.features[60_000:].tobytes() == got.features[:1000].tobytes()  # pass 2 starts again at row 0
    assert [len(m.batch) for m in messages] == [8192] * 7 + [61_000 - 7 * 8192]


def test_sigint_ends_the_stream_cleanly(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/interrupted"
    producer = streamflow("synthetic", "--endpoint", endpoint, "--rate", "20000", "--frame-size", "1000")
    messages, eos = receive_all(endpoint, producer, on_first=lambda: producer.send_signal(signal.SIGINT))
    assert eos.meta["events"] == sum(len(m.batch) for m in messages) > 0
    out, err = producer.communicate(timeout=30)
    assert producer.returncode == 130, err
    assert err == "streamflow replay: interrupted; the stream was ended cleanly\n"
    assert "END_OF_STREAM acknowledged by test" in out


@pytest.fixture(scope="module")
def busy_endpoint():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield f"tcp://127.0.0.1:{taken.getsockname()[1]}"


def assert_one_line_error(code: int, err: str, problem: str) -> None:
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("streamflow replay: error: "), err
    assert "Traceback" not in err
    assert re.search(problem, err), err


@pytest.mark.parametrize(
    "args, problem",
    [
        (["gaussian", "--frame-size", "0"], "frame size must be 1 to 1,048,576 events, got 0"),
        (["gaussian", "--endpoint", "BUSY"], "cannot bind tcp://127.0.0.1:\\d+: address already in use"),
        (["/no/such/file.h5"], "/no/such/file.h5: no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], problem: str, busy_endpoint: str) -> None:
    args = [busy_endpoint if a == "BUSY" else a for a in args]
    result = subprocess.run([sys.executable, "-m", "streamflow.cli.main", "replay", *args],
                            capture_output=True, text=True, timeout=60)
    assert_one_line_error(result.returncode, result.stderr, problem)


@pytest.mark.parametrize(
    "args, problem",
    [
        (["gaussian", "--frame-size", "-5"], "frame size must be 1 to 1,048,576 events"),
        (["gaussian", "--signal-fraction", "1.5"], r"signal fraction must be in \[0, 1\]"),
        (["synthetic", "--signal-fraction", "-0.1"], r"signal fraction must be in \[0, 1\]"),
        (["gaussian", "--rate", "fast"], "bad --rate 'fast'"),
        (["gaussian", "--rate", "-3"], "rate must be a positive number"),
        (["gaussian", "--events", "0"], "events must be at least 1"),
        (["gaussian", "--endpoint", "localhost:5555"], "bad endpoint 'localhost:5555'"),
        (["gaussian", "--loop"], "unknown option 'loop' for source 'gaussian'"),
        (["JUNK"], "junk.h5"),
    ],
)
def test_more_bad_input_in_process(args: list[str], problem: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_text("not an HDF5 file\n")
    code = main(["replay", *[str(junk) if a == "JUNK" else a for a in args]])
    assert_one_line_error(code, capsys.readouterr().err, problem)


def test_config_file_and_options_combine(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('[replay]\nsource = "gaussian"\nrate = 1000\nframe_size = 128\nevents = 5000\n')
    args = build_parser().parse_args(["replay", "--config", str(toml), "--frame-size", "256", "--rate", "max"])
    config = config_from_args(args)
    assert (config.source, config.rate, config.frame_size, config.events) == ("gaussian", None, 256, 5000)
    assert load_toml(ReplayConfig, toml, "replay").frame_size == 128
    toml.write_text("[replay]\nframe_sise = 12\n")
    with pytest.raises(ConfigError, match="unknown key 'frame_sise'"):
        load_toml(ReplayConfig, toml, "replay")
