"""Acknowledged delivery over real sockets: a killed scorer's frames go to another, bad peers are survived."""

from __future__ import annotations

import json
import signal
import threading
from contextlib import ExitStack

import numpy as np
import zmq

from streamflow.events.batch import EventBatch
from streamflow.stream.acked_transport import AckedReceiver, AckedSender
from streamflow.stream.delivery import DeliveryConfig
from streamflow.stream.ledger import _expand_runs
from streamflow.stream.selections import read_selections
from streamflow.stream.wire import Kind, decode, encode_control
from tests.helpers import free_port_block, streamflow
from tests.test_faults import (
    finish,
    journal_lines,
    journalled_after_checkpoint,
    scorer_args,
    sink_written,
    start,
    wait_for,
)


def _seen(ledger: dict) -> set[int]:
    return _expand_runs(ledger["frames_seen"].get("0", []))


def _only_unacknowledged_tail_twice(seen: set[int], doomed_order: list[int], window: int, redelivered: int) -> None:
    """At-least-once across scorers: a frame the killed scorer journalled is handled again by the survivor only
    if its acknowledgement had not left (kill -9 drops the acknowledgements still queued in the dead scorer's
    socket). So the frames handled twice are among the last ``window`` the dead one journalled (it held at most
    ``window`` unacknowledged), and each came to the survivor by a redelivery."""
    twice = seen & set(doomed_order)
    assert twice <= set(doomed_order[-window:]), f"frames acknowledged by the dead scorer handled again: {twice}"
    assert len(twice) <= redelivered, "a frame handled twice that the sender never redelivered"


def test_two_scorers_share_a_stream_and_the_frames_of_the_one_killed_are_processed_by_the_other(tmp_path) -> None:
    events, frame = 200_000, 500
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    with ExitStack() as stack:
        producer = start(stack, "replay", "gaussian", "--events", str(events), "--frame-size", str(frame),
                         "--endpoint", endpoint, "--eos-timeout", "90", "--acked",
                         log=tmp_path / "producer.log")
        doomed_dir, survivor_dir = tmp_path / "doomed", tmp_path / "survivor"
        common = ("--checkpoint-every", "0", "--idle-timeout", "60", "--acked")
        doomed = start(stack, *scorer_args(tmp_path, endpoint, doomed_dir, *common, "--name", "doomed"),
                       log=tmp_path / "doomed.log")
        survivor = start(stack, *scorer_args(tmp_path, endpoint, survivor_dir, *common, "--name", "survivor"),
                         log=tmp_path / "survivor.log")
        journal = doomed_dir / "doomed.journal"
        wait_for(lambda: journal.exists() and journal.read_text().count("\n") >= 3, 90,
                 "the first scorer to handle some frames")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        # checkpoint only at exit: the journal holds every frame it handled
        doomed_order = [int(line.split()[1]) for line in journal.read_text().splitlines()]
        handled_by_doomed = set(doomed_order)
        assert producer.poll() is None, "the stream ended before the kill: make it longer"
        output = finish(survivor, tmp_path / "survivor.log", timeout=120)
        assert survivor.returncode == 0, output
        producer_log = finish(producer, tmp_path / "producer.log")
        assert producer.returncode == 0, producer_log

    ledger = json.loads((survivor_dir / "ledger-survivor.json").read_text())
    delivery = ledger["delivery"]
    n_frames = events // frame
    assert delivery["sent"] == delivery["acked"] == n_frames, "every frame acknowledged: none lost"
    assert delivery["receivers_lost"] == 1 and delivery["redelivered"] >= 1, "the dead scorer held frames"
    seen = _seen(ledger)
    assert seen | handled_by_doomed == set(range(n_frames)), "every frame handled by one scorer or the other"
    _only_unacknowledged_tail_twice(seen, doomed_order, DeliveryConfig().window, delivery["redelivered"])
    assert "acknowledged 400 of 400 frames" in producer_log
    account = ledger["streams"]["0"]
    assert account["taken_by_other_receivers"]["receivers"] == 1 and account["unaccounted_frames"] == 0


def test_through_a_proxy_a_killed_scorer_loses_nothing(tmp_path) -> None:
    """Producer -> proxy -> two scorers, all acknowledged; one scorer killed with kill -9: the proxy sends its
    frames to the other, and acknowledges upstream only what a scorer acknowledged, so none is lost."""
    events, frame = 200_000, 500
    port = free_port_block(4)
    producer_endpoint, proxy_endpoint = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 2}"
    with ExitStack() as stack:
        producer = start(stack, "replay", "gaussian", "--events", str(events), "--frame-size", str(frame),
                         "--endpoint", producer_endpoint, "--eos-timeout", "90", "--acked",
                         log=tmp_path / "producer.log")
        proxy = start(stack, "proxy", "--acked", "--from", producer_endpoint, "--endpoint", proxy_endpoint,
                      "--eos-timeout", "90", "--run-dir", str(tmp_path / "proxy"), log=tmp_path / "proxy.log")
        doomed_dir, survivor_dir = tmp_path / "doomed", tmp_path / "survivor"
        common = ("--checkpoint-every", "0", "--idle-timeout", "60", "--acked", "--ack-window", "16")
        doomed = start(stack, *scorer_args(tmp_path, proxy_endpoint, doomed_dir, *common, "--name", "doomed"),
                       log=tmp_path / "doomed.log")
        survivor = start(stack, *scorer_args(tmp_path, proxy_endpoint, survivor_dir, *common, "--name", "survivor"),
                         log=tmp_path / "survivor.log")
        journal = doomed_dir / "doomed.journal"
        wait_for(lambda: journal.exists() and journal.read_text().count("\n") >= 3, 90,
                 "the first scorer to handle some frames")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        doomed_order = [int(line.split()[1]) for line in journal.read_text().splitlines()]
        handled_by_doomed = set(doomed_order)
        assert producer.poll() is None, "the stream ended before the kill: make it longer"
        output = finish(survivor, tmp_path / "survivor.log", timeout=120)
        assert survivor.returncode == 0, output
        proxy_log = finish(proxy, tmp_path / "proxy.log")
        assert proxy.returncode == 0, proxy_log
        producer_log = finish(producer, tmp_path / "producer.log")
        assert producer.returncode == 0, producer_log

    n_frames = events // frame
    assert f"acknowledged {n_frames} of {n_frames} frames" in producer_log, "every frame acknowledged upstream"
    proxy_ledger = json.loads((tmp_path / "proxy" / "ledger-proxy.json").read_text())
    delivery = proxy_ledger["delivery"]
    assert delivery["sent"] == delivery["acked"] == n_frames, "every frame acknowledged downstream"
    assert delivery["receivers_lost"] == 1 and delivery["redelivered"] >= 1, "the dead scorer held frames"
    ledger = json.loads((survivor_dir / "ledger-survivor.json").read_text())
    seen = _seen(ledger)
    assert seen | handled_by_doomed == set(range(n_frames)), "every frame handled by one scorer or the other"
    _only_unacknowledged_tail_twice(seen, doomed_order, 16, delivery["redelivered"])
    assert ledger["streams"]["0"]["unaccounted_frames"] == 0


def test_a_scorer_killed_and_resumed_loses_nothing_in_flight(tmp_path) -> None:
    """Resumed after kill -9, the scorer gets again the frames the dead one held: no gap, no duplicate scoring."""
    events, frame = 150_000, 500
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    run_dir = tmp_path / "run"
    with ExitStack() as stack:
        producer = start(stack, "replay", "gaussian", "--events", str(events), "--frame-size", str(frame),
                         "--endpoint", endpoint, "--eos-timeout", "90", "--acked", log=tmp_path / "producer.log")
        args = scorer_args(tmp_path, endpoint, run_dir, "--checkpoint-every", "5", "--idle-timeout", "60", "--acked")
        first = start(stack, *args, log=tmp_path / "scorer-1.log")
        wait_for(lambda: (run_dir / "scorer.ckpt.pt").exists() and journal_lines(run_dir), 60,
                 "a checkpoint and a frame scored after it")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        scored_after_checkpoint = set(journalled_after_checkpoint(run_dir))
        assert producer.poll() is None, "the stream ended before the kill: make it longer"
        second = start(stack, *args, "--resume", log=tmp_path / "scorer-2.log")
        output = finish(second, tmp_path / "scorer-2.log", timeout=90)
        assert second.returncode == 0, output
        assert finish(producer, tmp_path / "producer.log") and producer.returncode == 0

    ledger = json.loads((run_dir / "ledger-scorer.json").read_text())
    account = ledger["streams"]["0"]
    assert account["lost_in_flight"] == {"frames": [], "events": 0}
    assert account["lost_after_processing"]["frames"] == sorted(scored_after_checkpoint)
    assert account["unaccounted_frames"] == 0
    assert account["processed_events"] + account["lost_after_processing"]["events"] == events
    assert ledger["delivery"]["redelivered"] >= 1 and ledger["delivery"]["acked"] == events // frame
    assert ledger["sequence"]["duplicates"] == 0, "no frame scored twice"
    assert "acknowledged delivery: 300 of 300 frames acknowledged" in output


def _batch(n: int) -> EventBatch:
    return EventBatch(np.arange(n, dtype=np.uint64), np.zeros((n, 2), np.float32), ("x0", "x1"))


def test_bad_peers_are_counted_and_survived_and_a_good_receiver_gets_every_frame(tmp_path) -> None:
    """A receiver that never acknowledges, one that acknowledges unknown frames and every frame twice:
    the sender counts them, evicts the silent one after the ack timeout, and ends with every frame
    acknowledged by someone -- no exception, nothing left in its buffer."""
    endpoint = f"ipc://{tmp_path}/acked"
    ctx = zmq.Context()
    frames = 60
    delivery = DeliveryConfig(window=4, max_unacked=16, ack_timeout_s=1.0, heartbeat_s=0.2)
    stop = threading.Event()
    silent = ctx.socket(zmq.DEALER)
    silent.connect(endpoint)
    silent.send_multipart(encode_control(Kind.HELLO, stream_id=0, seq=0, meta={"name": "silent", "window": 4}))
    got: dict[str, list[int]] = {"good": [], "noisy": []}

    def noisy() -> None:
        sock = ctx.socket(zmq.DEALER)
        sock.connect(endpoint)
        sock.send_multipart(encode_control(Kind.HELLO, stream_id=0, seq=0, meta={"name": "noisy", "window": 2}))
        while not stop.is_set():
            if not sock.poll(50):
                continue
            msg = decode(sock.recv_multipart())
            if msg.kind == Kind.DATA:
                got["noisy"].append(msg.seq)
                for seq in (msg.seq, msg.seq, 10_000 + msg.seq):  # twice, and a frame never sent
                    sock.send_multipart(encode_control(Kind.FRAME_ACK, stream_id=0, seq=seq))
                sock.send_multipart([b"not a streamflow message"])
            elif msg.kind == Kind.END_OF_STREAM:
                sock.send_multipart(encode_control(Kind.ACK, stream_id=0, seq=msg.seq, meta={"name": "noisy"}))
        sock.close(linger=0)

    def good() -> None:
        with AckedReceiver(ctx, endpoint, name="good", window=4) as receiver:
            while (msg := receiver.recv(20_000)) is not None and msg.kind != Kind.END_OF_STREAM:
                got["good"].append(msg.seq)
                stop.wait(0.01)
                receiver.acknowledge(msg.stream_id, msg.seq)

    with AckedSender(ctx, endpoint, delivery=delivery) as sender:
        threads = [threading.Thread(target=noisy), threading.Thread(target=good)]
        for thread in threads:
            thread.start()
        sender.wait_for_receivers(3, 10)
        for _ in range(frames):
            assert sender.send_batch(_batch(10))
        eos = sender.end_stream(timeout_s=20)
        stop.set()
        for thread in threads:
            thread.join(30)
        counts = sender.dispatcher.counts
        assert counts.acked == counts.sent == frames and sender.dispatcher.done
        assert counts.receivers_timed_out == 1, "the receiver that never acknowledges is evicted"
        assert counts.redelivered >= 4, "the frames it held went to the others"
        assert counts.duplicate_acks >= len(got["noisy"]) and counts.unknown_acks >= len(got["noisy"])
        assert sender.bad_messages >= len(got["noisy"])
        assert set(got["good"]) | set(got["noisy"]) == set(range(frames))
        assert not sender.dispatcher.ever_sent and not sender.dispatcher.frames, "nothing left behind"
        assert len(eos.acks) == 2  # the live, non-evicted receivers answered END_OF_STREAM
    silent.close(linger=0)
    ctx.term()


def test_a_killed_sink_loses_no_selection_and_writes_none_twice(tmp_path) -> None:
    """Scorer and sink acknowledged: the sink killed mid-stream and restarted; every frame's selection is in
    the file once, and the scorer's journal holds only frames whose selection the sink committed."""
    events, frame = 150_000, 500
    port = free_port_block(4)
    endpoint, selections = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 2}"
    run_dir, sink_dir = tmp_path / "run", tmp_path / "sink"
    sink_args = ("sink", "--endpoint", selections, "--run-dir", str(sink_dir), "--acked", "--idle-timeout", "60")
    with ExitStack() as stack:
        producer = start(stack, "replay", "gaussian", "--events", str(events), "--frame-size", str(frame),
                         "--endpoint", endpoint, "--eos-timeout", "90", "--acked", log=tmp_path / "producer.log")
        first_sink = start(stack, *sink_args, log=tmp_path / "sink-1.log")
        scorer = start(stack, *scorer_args(tmp_path, endpoint, run_dir, "--checkpoint-every", "10", "--acked",
                                           "--selections", selections, "--idle-timeout", "60"),
                       log=tmp_path / "scorer.log")
        telemetry = sink_dir / "telemetry-sink.jsonl"
        wait_for(lambda: sink_written(telemetry) > 0, 90, "the sink to commit selections")
        first_sink.send_signal(signal.SIGKILL)
        first_sink.wait(10)
        assert producer.poll() is None and scorer.poll() is None, "the stream ended before the kill: make it longer"
        second_sink = start(stack, *sink_args, log=tmp_path / "sink-2.log")
        output = finish(scorer, tmp_path / "scorer.log", timeout=120)
        assert scorer.returncode == 0, output
        sink_output = finish(second_sink, tmp_path / "sink-2.log")
        assert second_sink.returncode == 0, sink_output
        assert finish(producer, tmp_path / "producer.log") and producer.returncode == 0

    selected, _ = read_selections(sink_dir / "selections.h5")
    ids, counts = np.unique(selected.ids, return_counts=True)
    assert counts.max() == 1, "no event written twice"
    sink_ledger = json.loads((sink_dir / "ledger-sink.json").read_text())
    account = sink_ledger["streams"]["0"]
    assert account["unaccounted_frames"] == 0 and account["lost_in_flight"]["frames"] == []
    scorer_ledger = json.loads((run_dir / "ledger-scorer.json").read_text())
    assert len(ids) == scorer_ledger["stages"][4]["events"] > 0, "every selection the scorer sent is in the file"
    assert "appended to" in sink_output


def test_bad_acknowledged_delivery_options_are_one_line_errors(tmp_path) -> None:
    cases = [
        (("replay", "gaussian", "--acked", "--ack-window", "0"), "delivery window must be 1 to"),
        (("replay", "gaussian", "--acked", "--ack-window", "300", "--max-unacked", "100"),
         "unacknowledged-frame buffer must be 300"),
        (("replay", "gaussian", "--acked", "--ack-timeout", "0"), "ack timeout must be positive"),
        (("consume", "--acked", "--ack-window", "5000", "--run-dir", str(tmp_path)), "ack window must be 1 to"),
        (("consume", "--acked", "--ranks", "2", "--run-dir", str(tmp_path)), "--acked is for a lone scorer"),
        (("run", "--acked", "--ack-window", "0", "--run-dir", str(tmp_path / "r1")), "ack window must be 1 to"),
        (("run", "--acked", "--reco-workers", "2", "--run-dir", str(tmp_path / "r2")),
         "--acked with --reco-workers is not supported"),
    ]
    for args, message in cases:
        result = streamflow(*args, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
