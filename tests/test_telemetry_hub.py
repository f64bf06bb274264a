"""The telemetry hub: publishers in separate processes, two subscribers side by side, each hears every record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import zmq

from consumers.telemetry_hub import TelemetryHub
from streamflow.errors import ConfigError
from tests.helpers import REPO, free_port_block, streamflow

RECORDS = 40
PUBLISH = """
import sys, time, zmq
from streamflow.stream.telemetry import TelemetryReporter
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub.connect(sys.argv[1])
time.sleep(2.0)  # the subscriptions reach a new PUB connection a moment after it connects
reporter = TelemetryReporter(sys.argv[2], publish=pub.send)
for i in range(int(sys.argv[3])):
    reporter.report({"events": 100 * (i + 1), "frames": i + 1})
    time.sleep(0.01)
pub.close(linger=2000)
ctx.term()
"""


def _subscriber(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def _drain(sock: zmq.Socket, until: float, expected: int) -> list[dict]:
    got: list[dict] = []
    while len(got) < expected and time.monotonic() < until:
        if sock.poll(100):
            got.append(json.loads(sock.recv()))
    return got


def test_two_subscribers_receive_the_same_records_from_publishers_in_other_processes() -> None:
    base = free_port_block(2)
    publish, subscribe = f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"
    ctx = zmq.Context()
    with TelemetryHub(publish, subscribe):
        subscribers = [_subscriber(ctx, subscribe) for _ in range(2)]
        time.sleep(0.3)  # both subscriptions reach the hub before anything is published
        publishers = [subprocess.Popen([sys.executable, "-c", PUBLISH, publish, role, str(RECORDS)], cwd=REPO,
                                       env={**os.environ, "PYTHONPATH": str(REPO)}) for role in ("producer", "scorer")]
        until = time.monotonic() + 30
        heard = [_drain(sock, until, 2 * RECORDS) for sock in subscribers]
        assert [p.wait(timeout=30) for p in publishers] == [0, 0]
    for sock in subscribers:
        sock.close(linger=0)
    ctx.term()
    assert heard[0] == heard[1]  # the same records, in the same order
    for role in ("producer", "scorer"):
        mine = [record for record in heard[0] if record["role"] == role]
        assert [record["n"] for record in mine] == list(range(RECORDS)), role  # none lost, none doubled
        assert mine[-1]["events"] == 100 * RECORDS


def test_a_busy_endpoint_is_a_config_error_and_leaves_nothing_bound() -> None:
    base = free_port_block(2)
    publish, subscribe = f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"
    with TelemetryHub(publish, subscribe), pytest.raises(ConfigError, match="cannot bind"):
        TelemetryHub(f"tcp://127.0.0.1:{free_port_block(1)}", subscribe)
    TelemetryHub(publish, subscribe).close()  # both ports free again


@pytest.mark.timeout(200)
def test_a_second_monitor_watches_a_run_beside_the_runs_own_monitor(tmp_path) -> None:
    """`streamflow run` (its monitor printing plain lines) and `streamflow monitor --connect` on its hub."""
    base = free_port_block()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "streamflow.cli.main", "monitor", "--connect", f"tcp://127.0.0.1:{base + 5}",
         "--plain", "--interval", "0.5", "--exit-after-idle", "5", "--duration", "150"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    result = streamflow("run", "--source", "synthetic", "--events", "40000", "--frame-size", "2000", "--preset",
                        "lhco", "--learners", "ae", "--device", "cpu", "--plain", "--no-report",
                        "--run-dir", str(tmp_path / "run"), "--base-port", str(base), timeout=180)
    out, err = watcher.communicate(timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert watcher.returncode == 0, err[-2000:]
    for monitor_output in (result.stdout, out):
        seen = [line for line in monitor_output.splitlines() if line.startswith("t=") and "scorer" in line]
        assert seen and "ae " in seen[-1], monitor_output[-2000:]  # each heard the scorer and its line


def test_streamflow_hub_forwards_until_sigterm_and_refuses_a_bad_endpoint_in_one_line() -> None:
    base = free_port_block(2)
    publish, subscribe = f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"
    hub = subprocess.Popen([sys.executable, "-m", "streamflow.cli.main", "hub", "--publish", publish,
                            "--subscribe", subscribe], cwd=REPO, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    ctx = zmq.Context()
    sub = _subscriber(ctx, subscribe)
    pub = ctx.socket(zmq.PUB)
    pub.connect(publish)
    heard = []
    until = time.monotonic() + 20
    while not heard and time.monotonic() < until:  # the hub starts, then the subscription reaches the PUB
        pub.send(b'{"role": "scorer", "n": 0}')
        heard = _drain(sub, time.monotonic() + 0.2, 1)
    hub.send_signal(signal.SIGTERM)
    _, err = hub.communicate(timeout=10)
    for sock in (sub, pub):
        sock.close(linger=0)
    ctx.term()
    assert heard == [{"role": "scorer", "n": 0}] and hub.returncode == 0, err
    bad = streamflow("hub", "--publish", "bogus")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "streamflow hub: error: bad endpoint 'bogus': expected tcp://HOST:PORT or ipc://PATH"]
