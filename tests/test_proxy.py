"""`streamflow proxy`: M producers -> K scorers with every event accounted for, and the proxy's own rules.

The end-to-end test runs real processes (two producers, the proxy, two scorers)
and checks with the scorers' ledgers that every event each producer sent was
processed by exactly one scorer. The others drive :func:`run_proxy` in a thread
with in-process senders and receivers on loopback tcp.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from consumers.sink import SinkConfig, run_sink
from producers.proxy import ProxyConfig, ProxyError, ProxyStats, run_proxy
from streamflow.cli.main import build_parser
from streamflow.cli.main import main as streamflow_main
from streamflow.events import GaussianToy
from streamflow.events.batch import EventBatch
from streamflow.stream.ledger import stream_totals
from streamflow.stream.selections import read_selections
from streamflow.stream.transport import Curve, Receiver, Sender
from streamflow.stream.wire import Kind, decode, encode_data, encode_selection
from tests.helpers import REPO, STREAMFLOW, free_port_block
from tests.test_faults import start, wait_for

pytestmark = pytest.mark.timeout(120)


def endpoints(n: int) -> list[str]:
    """``n`` loopback data endpoints, each with its control port (port + 1) free."""
    base = free_port_block(2 * n)
    return [f"tcp://127.0.0.1:{base + 2 * i}" for i in range(n)]


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


class ProxyThread:
    """:func:`run_proxy` in a thread; ``join`` returns its stats or its ProxyError."""

    def __init__(self, config: ProxyConfig, stop: threading.Event | None = None) -> None:
        self.result: ProxyStats | ProxyError | None = None
        self.thread = threading.Thread(target=self._run, args=(config, stop), daemon=True)
        self.thread.start()

    def _run(self, config: ProxyConfig, stop: threading.Event | None) -> None:
        try:
            self.result = run_proxy(config, stop)
        except ProxyError as exc:
            self.result = exc

    def join(self, timeout: float = 20) -> ProxyStats | ProxyError:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the proxy did not end"
        assert self.result is not None
        return self.result


def frame(seq: int, stream_id: int, n: int = 7) -> list[bytes]:
    """An encoded DATA message with recognisable contents (and labels, so every part kind travels)."""
    rng = np.random.default_rng(1000 * stream_id + seq)
    batch = EventBatch(ids=np.arange(seq * n, seq * n + n, dtype=np.uint64),
                       features=rng.normal(size=(n, 3)).astype(np.float32), names=("a", "b", "c"),
                       labels=(rng.random(n) < 0.5).astype(np.int8))
    return [bytes(p) for p in encode_data(batch, seq=seq, stream_id=stream_id, send_ns=123_456_789 + seq)]


def drain(receiver: Receiver, timeout_s: float = 20) -> tuple[list[list[bytes]], dict[str, Any]]:
    """Every event message's raw parts until END_OF_STREAM (acknowledged), and that END_OF_STREAM's meta."""
    received = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not receiver.data.poll(100):
            continue
        parts = receiver.data.recv_multipart()
        msg = receiver.handle(parts)
        assert msg is not None, receiver.last_error
        if msg.kind == Kind.END_OF_STREAM:
            return received, msg.meta
        received.append(parts)
    raise AssertionError(f"no END_OF_STREAM within {timeout_s} s")


def end_in_thread(sender: Sender, results: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(sender.end_stream(timeout_s=20)), daemon=True)
    thread.start()
    return thread


def test_frames_are_forwarded_byte_for_byte_and_end_of_stream_carries_each_stream(ctx) -> None:
    up1, up2, down = endpoints(3)
    proxy = ProxyThread(ProxyConfig(upstream=(up1, up2), endpoint=down, stream_id=9, idle_timeout=20))
    sent: dict[tuple[int, int], list[bytes]] = {}
    eos_results: list = []
    with Sender(ctx, up1, stream_id=1) as p1, Sender(ctx, up2, stream_id=2) as p2, \
            Receiver(ctx, down, name="scorer") as scorer:
        for sender, sid, count in ((p1, 1, 12), (p2, 2, 5)):
            for seq in range(count):
                sent[sid, seq] = frame(seq, sid)
                assert sender.send(sent[sid, seq], 7)
            # The first producer is done and acknowledged while the second has yet to send: the proxy goes on.
            eos_results.append(sender.end_stream(timeout_s=20))
        received, meta = drain(scorer)
    stats = proxy.join()
    assert isinstance(stats, ProxyStats)
    # Byte-exact, in order per stream: header (stream id, seq, send time) and arrays are the producer's.
    order = [(m.stream_id, m.seq) for m in map(decode, received)]
    assert dict(zip(order, received)) == sent and len(received) == len(sent)
    for sid in (1, 2):
        assert [seq for s, seq in order if s == sid] == list(range(12 if sid == 1 else 5))
    # One END_OF_STREAM after both producers ended, with each stream's totals and the proxy's own.
    assert meta["frames"] == 17 and meta["events"] == 17 * 7
    assert stream_totals(meta, 9) == {1: (12, 84), 2: (5, 35)}
    assert [[(name.split(" (")[0], a["events"]) for name, a in r.acks.items()] for r in eos_results] == [
        [("proxy", 84)], [("proxy", 35)]]
    ledger = stats.ledger()
    assert [(s.name, s.events) for s in ledger.stages] == [("received", 119), ("forwarded", 119),
                                                            ("acknowledged", 119)]
    assert f"stream 1 from {up1}: sent 84 events in 12 frames, received 84 in 12, forwarded 84 in 12" in ledger.notes
    assert ledger.details["streams"] == {"1": {"frames": 12, "events": 84}, "2": {"frames": 5, "events": 35}}


def test_two_producers_with_one_stream_id_end_the_proxy_with_a_one_line_error(ctx) -> None:
    up1, up2, down = endpoints(3)
    proxy = ProxyThread(ProxyConfig(upstream=(up1, up2), endpoint=down, idle_timeout=20))
    with Sender(ctx, up1, stream_id=7) as p1, Sender(ctx, up2, stream_id=7) as p2, \
            Receiver(ctx, down, name="scorer") as scorer:
        assert p1.send(frame(0, 7), 7)
        assert scorer.data.poll(10_000), "the first producer's frame did not come through"
        first = scorer.data.recv_multipart()
        scorer.handle(first)  # counted, so its END_OF_STREAM acknowledgement says 7 events
        assert p2.send(frame(0, 7), 7)
        rest, meta = drain(scorer)  # the proxy ends its receivers cleanly before reporting the error
        error = proxy.join()
    assert isinstance(error, ProxyError)
    message = str(error)
    assert "\n" not in message and message.endswith("give each producer its own --stream-id")
    assert f"stream id 7 comes from both {up1} and {up2}" in message
    # Only the first producer's frame went through, and the END_OF_STREAM said so.
    assert first == frame(0, 7) and rest == []
    assert stream_totals(meta, 0) == {7: (1, 7)}
    ledger = error.stats.ledger()
    assert [(s.name, s.events, s.note) for s in ledger.stages[1:]] == [
        ("forwarded", 7, "1 frames not forwarded: received as the proxy ended"),
        ("acknowledged", 7, "END_OF_STREAM acknowledged by 1 receivers")]
    assert ledger.notes[-1] == f"ended: {message}"


def test_data_and_selection_streams_do_not_mix(ctx) -> None:
    up1, up2, down = endpoints(3)
    proxy = ProxyThread(ProxyConfig(upstream=(up1, up2), endpoint=down, idle_timeout=20))
    batch = next(GaussianToy(seed=0).chunks(4))
    with Sender(ctx, up1, stream_id=1) as producer, Sender(ctx, up2) as scorer_selections, \
            Receiver(ctx, down, name="scorer") as scorer:
        assert producer.send(frame(0, 1), 7)
        assert scorer.data.poll(10_000)
        assert scorer_selections.send(encode_selection(batch, np.ones(4, np.uint64), np.zeros((4, 1), np.float32),
                                                       ["ae"], seq=0, stream_id=1, send_ns=0), 4)
        rest, meta = drain(scorer)
        error = proxy.join()
    assert len(rest) == 1 and stream_totals(meta, 0) == {1: (1, 7)}
    assert str(error) == (f"{up2} sends SELECTION after DATA from the others: a proxy forwards producers' DATA "
                          f"or scorers' SELECTION streams, not both")


def test_idle_upstreams_end_the_proxy_and_its_receivers_get_end_of_stream(ctx) -> None:
    up, down = endpoints(2)
    proxy = ProxyThread(ProxyConfig(upstream=(up,), endpoint=down, idle_timeout=0.3))
    with Receiver(ctx, down, name="scorer") as scorer:
        received, meta = drain(scorer)
        error = proxy.join()
    assert received == [] and stream_totals(meta, 0) == {}
    assert isinstance(error, ProxyError)
    assert str(error) == (f"no message from any upstream for 0.3 s; no END_OF_STREAM yet from {up}: "
                          "are those producers running?")


def test_selection_streams_of_two_scorers_merge_into_one_sink(ctx, tmp_path: Path) -> None:
    """Two scorers that split streams 1 and 2 send disjoint sequence numbers of each; one sink gets them all
    and accounts for every stream from the proxy's per-stream totals."""
    up1, up2, down = endpoints(3)
    proxy = ProxyThread(ProxyConfig(upstream=(up1, up2), endpoint=down, idle_timeout=20))
    sink: list = []
    sink_thread = threading.Thread(target=lambda: sink.append(run_sink(
        SinkConfig(endpoint=down, run_dir=str(tmp_path), idle_timeout=20))), daemon=True)
    sink_thread.start()
    source = GaussianToy(seed=3).chunks(64)
    eos_results: list = []
    with Sender(ctx, up1) as scorer_a, Sender(ctx, up2) as scorer_b:
        for sid in (1, 2):
            for seq in range(10):
                batch = next(source).take(np.arange(seq))  # frame seq accepted seq events
                parts = encode_selection(batch, np.ones(seq, np.uint64), np.zeros((seq, 1), np.float32), ["ae"],
                                         seq=seq, stream_id=sid, send_ns=time.time_ns())
                assert (scorer_a if (seq + sid) % 2 else scorer_b).send(parts, seq)
        enders = [end_in_thread(scorer_a, eos_results), end_in_thread(scorer_b, eos_results)]
        sink_thread.join(30)
        for ender in enders:
            ender.join(25)
    stats = proxy.join()
    assert isinstance(stats, ProxyStats) and stats.streams() == {1: (10, 45), 2: (10, 45)}
    assert sink and sink[0][0].written == 90
    rows, _ = read_selections(tmp_path / "selections.h5")
    assert np.unique(rows.seq).tolist() == list(range(1, 10))  # frame 0 accepted nothing
    ledger = json.loads((tmp_path / "ledger-sink.json").read_text())
    assert ledger["stream"] is None  # more than one stream: see "streams"
    for account in (ledger["streams"][sid] for sid in ("1", "2")):
        assert (account["sent_frames"], account["processed_frames"], account["processed_events"]) == (10, 10, 45)
        assert account["unaccounted_frames"] == 0 and not account["lost_in_flight"]["frames"]
        assert account["taken_by_other_receivers"]["receivers"] == 0  # the sink is the proxy's only receiver


def test_a_blocked_downstream_blocks_the_producer_and_nothing_is_dropped(ctx) -> None:
    """While no receiver reads, the proxy stops reading upstream, so the producer's sends block."""
    up, down = endpoints(2)
    proxy = ProxyThread(ProxyConfig(upstream=(up,), endpoint=down, hwm=1, kernel_buffer=65536, idle_timeout=20))
    big = np.zeros((65536, 4), np.float32)  # 1 MiB frames: a few fill every queue and socket buffer
    stop = threading.Event()
    with Sender(ctx, up, stream_id=1, hwm=1, kernel_buffer=65536) as producer, \
            Receiver(ctx, down, name="slow", hwm=1, kernel_buffer=65536) as scorer:
        timer = threading.Timer(1.5, stop.set)
        timer.start()
        for seq in range(64):
            batch = EventBatch(ids=np.full(65536, seq, np.uint64), features=big, names=("a", "b", "c", "d"))
            if not producer.send_batch(batch, stop):
                break
        timer.cancel()
        assert stop.is_set() and producer.frames < 16, "the producer was never held back"
        results: list = []
        ender = end_in_thread(producer, results)
        received, meta = drain(scorer)
        ender.join(25)
    stats = proxy.join()
    assert isinstance(stats, ProxyStats)
    assert [decode(parts).seq for parts in received] == list(range(producer.frames))
    assert stream_totals(meta, 0) == {1: (producer.frames, 65536 * producer.frames)}


def test_curve_on_both_sides(ctx, tmp_path: Path) -> None:
    """A CURVE producer -> proxy (client upstream, server downstream) -> a CURVE receiver."""
    keys = tmp_path / "keys"
    for name in ("producer", "proxy", "scorer"):
        assert streamflow_main(["keys", str(keys), "--name", name]) == 0
    for folder, admitted in (("admits-proxy", "proxy"), ("admits-scorer", "scorer")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{admitted}.key").write_bytes((keys / f"{admitted}.key").read_bytes())
    up, down = endpoints(2)
    proxy_secret = str(keys / "proxy.key_secret")
    proxy = ProxyThread(ProxyConfig(
        upstream=(up,), endpoint=down, idle_timeout=20,
        upstream_curve=Curve(proxy_secret, server_public_key_file=str(keys / "producer.key")),
        curve=Curve(proxy_secret, authorized_dir=str(tmp_path / "admits-scorer"))))
    producer_curve = Curve(str(keys / "producer.key_secret"), authorized_dir=str(tmp_path / "admits-proxy"))
    scorer_curve = Curve(str(keys / "scorer.key_secret"), server_public_key_file=str(keys / "proxy.key"))
    results: list = []
    with Sender(ctx, up, stream_id=4, curve=producer_curve) as producer, \
            Receiver(ctx, down, name="scorer", curve=scorer_curve) as scorer:
        for seq in range(3):
            assert producer.send(frame(seq, 4), 7)
        ender = end_in_thread(producer, results)
        received, meta = drain(scorer)
        ender.join(25)
    assert isinstance(proxy.join(), ProxyStats)
    assert received == [frame(seq, 4) for seq in range(3)] and stream_totals(meta, 0) == {4: (3, 21)}


def test_stop_ends_the_downstream_cleanly(ctx) -> None:
    up, down = endpoints(2)
    stop = threading.Event()
    proxy = ProxyThread(ProxyConfig(upstream=(up,), endpoint=down, idle_timeout=20), stop)
    with Sender(ctx, up, stream_id=3) as producer, Receiver(ctx, down, name="scorer") as scorer:
        assert producer.send(frame(0, 3), 7)
        assert scorer.data.poll(10_000)
        stop.set()
        rest, meta = drain(scorer)
    stats = proxy.join()
    assert isinstance(stats, ProxyStats) and stats.stopped and stats.error is None
    assert rest == [frame(0, 3)] and stream_totals(meta, 0) == {3: (1, 7)}
    assert f"{up}: no END_OF_STREAM (the stream did not end)" in stats.ledger().notes


def run_cli(ctx: zmq.Context, args: list[str], signal_when_connected: int | None = None) -> tuple[
        subprocess.CompletedProcess, dict[str, Any]]:
    """`streamflow proxy ARGS` as a process with a receiver on its ``--endpoint`` (the last arg), which
    drains it to END_OF_STREAM; with ``signal_when_connected``, the proxy gets that signal once it is up."""
    proc = subprocess.Popen([*STREAMFLOW, "proxy", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        with Receiver(ctx, args[-1], name="scorer") as scorer:
            connected = scorer.data.get_monitor_socket(zmq.EVENT_CONNECTED)
            assert connected.poll(20_000), "the proxy did not bind its endpoint"
            if signal_when_connected is not None:
                proc.send_signal(signal_when_connected)
            _, meta = drain(scorer)
            scorer.data.disable_monitor()
            connected.close(linger=0)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), meta


def test_cli_sigterm_ends_cleanly_and_writes_the_ledger(ctx, tmp_path: Path) -> None:
    up, down = endpoints(2)
    done, meta = run_cli(ctx, ["--from", up, "--run-dir", str(tmp_path), "--endpoint", down], signal.SIGTERM)
    assert done.returncode == 130 and meta["streams"] == {}
    assert done.stderr == "streamflow proxy: interrupted; the downstream stream was ended cleanly\n"
    assert "acknowledged" in done.stdout and "downstream scorer (pid " in done.stdout
    ledger = json.loads((tmp_path / "ledger-proxy.json").read_text())
    assert ledger["stopped"] and ledger["error"] is None


def test_cli_idle_timeout_prints_the_ledger_then_one_line(ctx, tmp_path: Path) -> None:
    up, down = endpoints(2)
    done, _ = run_cli(ctx, ["--from", up, "--idle-timeout", "0.5", "--run-dir", str(tmp_path), "--endpoint", down])
    assert done.returncode == 2
    assert done.stderr == (f"streamflow proxy: error: no message from any upstream for 0.5 s; no END_OF_STREAM yet "
                           f"from {up}: are those producers running?\n")
    assert done.stdout.startswith("stage") and "ended: no message from any upstream" in done.stdout
    assert json.loads((tmp_path / "ledger-proxy.json").read_text())["error"].startswith("no message")


@pytest.mark.parametrize("args, message", [
    ([], "a proxy needs at least one upstream endpoint (--from ENDPOINT)"),
    (["--from", "tcp://127.0.0.1"], "bad endpoint 'tcp://127.0.0.1': tcp needs HOST:PORT with a port in 1-65535"),
    (["--from", "tcp://127.0.0.1:5555", "--from", "tcp://127.0.0.1:5555"],
     "upstream tcp://127.0.0.1:5555 is given twice: each sender is read once"),
    (["--from", "tcp://127.0.0.1:5565"], "the proxy cannot bind tcp://127.0.0.1:5565: it is also one of its upstreams"),
    (["--from", "tcp://127.0.0.1:5555", "--idle-timeout", "0"], "idle timeout must be positive seconds, got 0.0"),
    (["--from", "tcp://127.0.0.1:5555", "--curve-authorized", "keys"],
     "--curve-server-key and --curve-authorized need --curve-secret FILE (this process's key)"),
])
def test_bad_options_are_one_line_errors(args: list[str], message: str, capsys) -> None:
    assert streamflow_main(["proxy", *args]) == 2
    assert capsys.readouterr().err == f"streamflow proxy: error: {message}\n"


def test_help_documents_every_option() -> None:
    parser = build_parser("proxy")
    proxy = parser._subparsers._group_actions[0].choices["proxy"]
    options = [a for a in proxy._actions if a.option_strings and a.dest != "help"]
    assert {o for a in options for o in a.option_strings} >= {"--from", "--endpoint", "--hwm", "--kernel-buffer",
                                                            "--eos-timeout", "--idle-timeout", "--run-dir"}
    assert all(a.help and len(a.help) > 20 for a in options)


def scorer_ledgers(run_dirs: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(next(d.glob("ledger-*.json")).read_text()) for d in run_dirs]


def processed_seqs(account: dict[str, Any]) -> set[int]:
    """The sequence numbers a scorer processed: all it was told were sent, less those it did not get."""
    gone = {seq for key in ("lost_in_flight", "lost_after_processing", "taken_by_other_receivers")
            for seq in account[key]["frames"]}
    return set(range(account["sent_frames"])) - gone


def test_two_producers_through_a_proxy_into_two_scorers_account_for_every_event(tmp_path: Path) -> None:
    """The issue's "done when": every process exits 0 by itself, every event is processed exactly once."""
    p1, p2, down = endpoints(3)
    produced = {1: (30, 100), 2: (24, 80)}  # stream id -> (frames, events per frame)
    run_dirs = [tmp_path / "a", tmp_path / "b"]
    with ExitStack() as stack:
        proxy = start(stack, "proxy", "--from", p1, "--from", p2, "--endpoint", down, "--run-dir",
                      str(tmp_path / "proxy"), "--idle-timeout", "90", "--eos-timeout", "60",
                      log=tmp_path / "proxy.log")
        scorers = [start(stack, "consume", "--preset", "gaussian", "--window", "200", "--warmup", "100",
                         "--threads", "1", "--device", "cpu", "--checkpoint-every", "0", "--idle-timeout", "90",
                         "--endpoint", down, "--run-dir", str(d), "--name", d.name, log=tmp_path / f"{d.name}.log")
                   for d in run_dirs]
        # Both scorers connected before the first frame, so PUSH shares the frames between them.
        wait_for(lambda: all((d / f"{d.name}.journal").exists() for d in run_dirs), 60, "both scorers to start")
        time.sleep(0.5)
        producers = [start(stack, "replay", "gaussian", "--events", str(frames * size), "--frame-size", str(size),
                           "--stream-id", str(sid), "--seed", str(sid), "--endpoint", endpoint, "--eos-timeout", "60",
                           log=tmp_path / f"producer-{sid}.log")
                     for (sid, (frames, size)), endpoint in zip(produced.items(), (p1, p2))]
        deadline = time.monotonic() + 100
        for proc in [*producers, proxy, *scorers]:
            proc.wait(max(1.0, deadline - time.monotonic()))
        logs = {path.name: path.read_text() for path in tmp_path.glob("*.log")}
        assert [p.returncode for p in [*producers, proxy, *scorers]] == [0] * 5, logs

    for sid, (frames, size) in produced.items():
        assert f"replayed {frames * size} events in {frames} frames" in logs[f"producer-{sid}.log"]
        assert "END_OF_STREAM acknowledged by proxy (pid" in logs[f"producer-{sid}.log"]
    proxy_ledger = json.loads((tmp_path / "proxy" / "ledger-proxy.json").read_text())
    assert proxy_ledger["streams"] == {str(sid): {"frames": f, "events": f * n} for sid, (f, n) in produced.items()}
    assert len(proxy_ledger["acks"]) == 2
    ledgers = scorer_ledgers(run_dirs)
    for ledger in ledgers:
        assert ledger["sequence"]["duplicates"] == 0 and ledger["rejected"] == 0
        assert ledger["sequence"]["frames"] > 0, "PUSH gave one scorer nothing"
    for sid, (frames, size) in produced.items():
        accounts = [ledger["streams"][str(sid)] for ledger in ledgers]
        assert all(a["sent_frames"] == frames and a["sent_events"] == frames * size for a in accounts)
        assert all(a["unaccounted_frames"] == 0 for a in accounts)
        assert sum(a["processed_frames"] for a in accounts) == frames
        assert sum(a["processed_events"] for a in accounts) == frames * size
        seqs = [processed_seqs(a) for a in accounts]
        assert [len(s) for s in seqs] == [a["processed_frames"] for a in accounts]
        assert not seqs[0] & seqs[1] and seqs[0] | seqs[1] == set(range(frames))
        # Neither scorer calls the other's share lost: each says the other receiver took it.
        for mine, theirs, their_seqs in zip(accounts, accounts[::-1], seqs[::-1]):
            assert mine["lost_in_flight"] == {"frames": [], "events": 0}
            assert mine["taken_by_other_receivers"] == {"receivers": 1, "frames": sorted(their_seqs),
                                                        "events": theirs["processed_events"]}
    for ledger in ledgers:
        assert any("taken by the other 1 receiver(s)" in note for note in ledger["notes"])
