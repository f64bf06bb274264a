"""Fault injection: processes killed mid-stream, a full disk, a busy port, garbage on the wire.

Each test runs real `streamflow` processes, injects one fault and checks what the
ledger says about it: every event the producer sent is processed or named as
lost, with the reason. Every wait has a timeout and every process started here
is killed on the way out.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zmq

from bench.fuzz import MUTATIONS, SMALL_SCORER_TOML, valid_frame
from streamflow.errors import ConfigError
from streamflow.events import GaussianToy
from streamflow.events.batch import EventBatch
from streamflow.scoring.checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from streamflow.stream.journal import FrameJournal
from streamflow.stream.ledger import SequenceTracker, account_stream
from streamflow.stream.selections import read_selections
from streamflow.stream.transport import Sender
from streamflow.stream.wire import encode_selection
from tests.helpers import REPO, STREAMFLOW, free_port_block, streamflow

pytestmark = pytest.mark.timeout(120)


def start(stack: ExitStack, *args: str, log: Path, preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    """`streamflow ARGS` in the background, output to ``log``; killed when ``stack`` closes."""
    out = stack.enter_context(open(log, "w"))
    proc = subprocess.Popen([*STREAMFLOW, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=preexec_fn)

    def reap() -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)

    stack.callback(reap)
    return proc


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 60) -> str:
    proc.wait(timeout)
    return log.read_text()


def journal_lines(run_dir: Path) -> list[tuple[int, int, int]]:
    path = run_dir / "scorer.journal"
    text = path.read_text() if path.exists() else ""
    return [tuple(map(int, line.split()[:3])) for line in text.splitlines()]  # stream, seq, events


def journalled_after_checkpoint(run_dir: Path) -> dict[int, int]:
    """{seq: events} of the frames a killed scorer journalled that its checkpoint on disk does not hold.

    A kill between saving a checkpoint and emptying the journal leaves journalled frames the checkpoint
    already holds: those are not lost, and the resumed scorer's account rightly leaves them out."""
    covered = SequenceTracker()
    covered.load_state_dict(load_checkpoint(run_dir / "scorer.ckpt.pt", "cpu")["sequence"])
    next_seq = covered.segment(0)[0]
    return {seq: n for _, seq, n in journal_lines(run_dir) if seq >= next_seq}


def scorer_args(tmp_path: Path, endpoint: str, run_dir: Path, *extra: str) -> list[str]:
    toml = tmp_path / "scorer.toml"
    toml.write_text(SMALL_SCORER_TOML)
    return ["consume", "--config", str(toml), "--endpoint", endpoint, "--run-dir", str(run_dir), *extra]


def test_scorer_killed_mid_stream_resumes_and_names_every_lost_frame(tmp_path) -> None:
    """kill -9 of the scorer, restart with --resume: every frame is processed or named as lost.

    Lost after processing: frames the dead scorer scored (and sent selections for)
    after its last checkpoint, read from its journal -- the learning from them is
    gone. Lost in flight: frames in the dead scorer's receive queue and socket
    buffers, which the resumed scorer sees as a sequence gap.
    """
    events, frame = 200_000, 500
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    run_dir = tmp_path / "run"
    with ExitStack() as stack:
        producer = start(stack, "replay", "gaussian", "--events", str(events), "--frame-size", str(frame),
                         "--endpoint", endpoint, "--eos-timeout", "90", log=tmp_path / "producer.log")
        args = scorer_args(tmp_path, endpoint, run_dir, "--checkpoint-every", "5", "--idle-timeout", "60")
        first = start(stack, *args, log=tmp_path / "scorer-1.log")
        wait_for(lambda: (run_dir / "scorer.ckpt.pt").exists() and journal_lines(run_dir), 60,
                 "a checkpoint and a frame scored after it")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        scored_after_checkpoint = journalled_after_checkpoint(run_dir)
        assert producer.poll() is None, "the stream ended before the kill: make it longer"
        second = start(stack, *args, "--resume", log=tmp_path / "scorer-2.log")
        output = finish(second, tmp_path / "scorer-2.log", timeout=90)
        assert second.returncode == 0, output
        assert finish(producer, tmp_path / "producer.log") and producer.returncode == 0

    ledger = json.loads((run_dir / "ledger-scorer.json").read_text())
    account = ledger["streams"]["0"]
    checkpointed = ledger["resumed_from_frame"]
    assert account["sent_frames"] == events // frame and account["sent_events"] == events
    after, in_flight = account["lost_after_processing"], account["lost_in_flight"]
    assert after["frames"] == sorted(scored_after_checkpoint)
    assert after["events"] == sum(scored_after_checkpoint.values())
    assert in_flight["frames"], "an unpaced producer fills the dead scorer's queue"
    assert in_flight["events"] == frame * len(in_flight["frames"])  # from the producer's total, checked per frame
    # The lost frames are one run of sequence numbers right after the checkpoint.
    lost = after["frames"] + in_flight["frames"]
    assert lost == list(range(checkpointed, checkpointed + len(lost)))
    # Nothing unaccounted: sent = processed + lost, frames and events.
    assert account["unaccounted_frames"] == 0
    assert account["processed_frames"] + len(lost) == account["sent_frames"]
    assert account["processed_events"] + after["events"] + in_flight["events"] == events
    stages = {stage["name"]: stage["events"] for stage in ledger["stages"]}
    assert stages["scored"] == account["processed_events"] - checkpointed * frame  # the resumed run's share
    assert "lost in flight" in output and "unaccounted frames 0" in output


def selection_frames(n_frames: int, accepted: Callable[[int], int], rng_seed: int = 0) -> list[list[bytes]]:
    """SELECTION messages as a scorer sends them: frame i accepts ``accepted(i)`` events."""
    source = GaussianToy(seed=rng_seed).chunks(512)
    messages = []
    for seq in range(n_frames):
        batch = next(source)
        k = accepted(seq)
        taken = EventBatch(batch.ids[:k], batch.features[:k], batch.names, batch.labels[:k])
        messages.append(encode_selection(taken, np.ones(k, np.uint64), np.zeros((k, 1), np.float32), ["ae"],
                                         seq=seq, stream_id=0, send_ns=time.time_ns()))
    return messages


def sink_written(telemetry: Path) -> int:
    """Rows the sink last reported written (its telemetry file), 0 before its first report."""
    lines = telemetry.read_text().splitlines() if telemetry.exists() else []
    try:
        return int(json.loads(lines[-1])["written"]) if lines else 0
    except ValueError:  # a line being written
        return 0


def send_all(sender: Sender, messages: list, counts: list[int], first: int, last: int, pause: float) -> None:
    for seq in range(first, last):
        assert sender.send(messages[seq], counts[seq]), "send was stopped"
        time.sleep(pause)


def test_sink_killed_mid_stream_leaves_a_readable_file_that_a_new_sink_appends_to(tmp_path) -> None:
    n_frames = 300
    counts = [seq % 7 for seq in range(n_frames)]
    messages = selection_frames(n_frames, counts.__getitem__)
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    path = tmp_path / "selections.h5"
    sink_args = ["sink", "--endpoint", endpoint, "--run-dir", str(tmp_path), "--flush-interval", "0.1",
                 "--idle-timeout", "60"]
    ctx = zmq.Context()
    with ExitStack() as stack:
        stack.callback(ctx.destroy, linger=0)
        sender = stack.enter_context(Sender(ctx, endpoint, hwm=4))
        first = start(stack, *sink_args, log=tmp_path / "sink-1.log")
        send_all(sender, messages, counts, 0, 150, pause=0.004)
        wait_for(lambda: sink_written(tmp_path / "telemetry-sink.jsonl") > 0, 30, "the sink to commit rows")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        committed, _ = read_selections(path)  # the killed sink's file opens and reads
        with h5py.File(path, "r") as handle:
            assert int(handle.attrs["rows"]) == len(committed) > 0
        second = start(stack, *sink_args, log=tmp_path / "sink-2.log")
        send_all(sender, messages, counts, 150, n_frames, pause=0.0)
        eos = sender.end_stream(timeout_s=60)
        output = finish(second, tmp_path / "sink-2.log")
        assert second.returncode == 0, output
    assert len(eos.acks) == 1  # the new sink acknowledged the end of the stream

    ledger = json.loads((tmp_path / "ledger-sink.json").read_text())
    events, attrs = read_selections(path)
    assert ledger["rows_at_start"] == len(committed)
    np.testing.assert_array_equal(events.ids[: len(committed)], committed.ids)  # appended, not rewritten
    account = ledger["stream"]
    lost = account["lost_in_flight"]["frames"]
    assert account["sent_events"] == sum(counts) and account["unaccounted_frames"] == 0
    # The file holds exactly the selections of the frames the ledger does not call lost.
    kept = [seq for seq in range(n_frames) if seq not in set(lost)]
    assert sorted(set(events.seq.tolist())) == [seq for seq in kept if counts[seq]]
    assert len(events) == account["processed_events"] == sum(counts[seq] for seq in kept)
    assert account["lost_in_flight"]["events"] == sum(counts[seq] for seq in lost)
    assert len(np.unique(events.ids)) == len(events)


def test_killed_producer_coming_back_is_picked_up_and_silence_ends_the_scorer(tmp_path) -> None:
    """Producer killed: a new one within --idle-timeout is picked up (a new segment of the stream);
    when none comes, the scorer ends after the timeout with a checkpoint, a ledger and a one-line error."""
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    run_dir = tmp_path / "run"
    replay = ["replay", "gaussian", "--frame-size", "500", "--rate", "20000", "--endpoint", endpoint]
    with ExitStack() as stack:
        scorer = start(stack, *scorer_args(tmp_path, endpoint, run_dir, "--idle-timeout", "6",
                                               "--checkpoint-every", "0"),
                       log=tmp_path / "scorer.log")
        for n, seed in enumerate(("1", "2")):
            scored_before = len(journal_lines(run_dir))
            producer = start(stack, *replay, "--seed", seed, log=tmp_path / f"producer-{n}.log")
            wait_for(lambda: len(journal_lines(run_dir)) >= scored_before + 3,  # noqa: B023 (waited on here)
                     60, f"producer {n} to be scored")
            assert producer.poll() is None, "the producer ended before the kill"
            producer.send_signal(signal.SIGKILL)
            producer.wait(10)
            assert scorer.poll() is None, "the scorer must outlive a killed producer"
        output = finish(scorer, tmp_path / "scorer.log", timeout=60)
    assert scorer.returncode == 2, output
    error = output.strip().splitlines()
    assert len(error) == 1 and "no frame from" in error[0] and "6 s" in error[0], output
    ledger = json.loads((run_dir / "ledger-scorer.json").read_text())
    assert ledger["sequence"]["restarts"] == 1  # the second producer was picked up, its seqs from 0 again
    assert any(note.startswith("ended: no frame") for note in ledger["notes"])
    assert (run_dir / "scorer.ckpt.pt").exists()


def test_selections_port_in_use_is_a_one_line_error(tmp_path) -> None:
    port = free_port_block(2)
    ctx = zmq.Context()
    try:
        busy = ctx.socket(zmq.PULL)
        busy.bind(f"tcp://127.0.0.1:{port}")
        result = streamflow(*scorer_args(tmp_path, f"tcp://127.0.0.1:{free_port_block(2)}", tmp_path,
                                         "--selections", f"tcp://127.0.0.1:{port}", "--idle-timeout", "5"),
                            timeout=60)
    finally:
        ctx.destroy(linger=0)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "already in use" in lines[0], result.stderr


def _file_size_limit(limit: int) -> Callable[[], None]:
    def limit_writes() -> None:  # in the child before exec: files cannot grow past ``limit`` bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    return limit_writes


def test_disk_full_while_writing_selections_is_a_clear_error_and_the_file_stays_readable(tmp_path) -> None:
    n_frames = 400
    counts = [400] * n_frames  # 16 kB of selections per frame: the 2 MB limit is hit within the stream
    messages = selection_frames(n_frames, counts.__getitem__)
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    ctx = zmq.Context()
    with ExitStack() as stack:
        stack.callback(ctx.destroy, linger=0)
        sender = stack.enter_context(Sender(ctx, endpoint, hwm=4))
        sink = start(stack, "sink", "--endpoint", endpoint, "--run-dir", str(tmp_path), "--flush-interval", "0.05",
                     "--idle-timeout", "30", log=tmp_path / "sink.log", preexec_fn=_file_size_limit(2 << 20))
        for seq in range(n_frames):
            if not sender.send(messages[seq], counts[seq], stop_event=_Exited(sink)):
                break  # the sink is gone
            time.sleep(0.002)
        output = finish(sink, tmp_path / "sink.log", timeout=60)
    assert sink.returncode == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "disk full" in lines[0] and "selections.h5" in lines[0], output
    events, _ = read_selections(tmp_path / "selections.h5")
    ledger = json.loads((tmp_path / "ledger-sink.json").read_text())
    assert 0 < len(events) == ledger["rows_at_start"] + ledger["stages"][1]["events"]
    assert ledger["unwritten"] > 0 and "write failed" in ledger["stages"][1]["note"]
    assert set(np.unique(events.seq).tolist()) == set(range(len(events) // 400))  # whole frames, in order


class _Exited:
    """A stop flag for a blocked send: set once ``proc`` has exited."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def is_set(self) -> bool:
        return self.proc.poll() is not None


def test_corrupt_frames_to_a_running_scorer_are_counted_and_skipped(tmp_path) -> None:
    rng = np.random.default_rng(0)
    toy = GaussianToy(seed=3).chunks(400)
    valid = [next(toy) for _ in range(12)]
    nan = valid[5].features.copy()
    nan[::3, 0] = np.nan
    nan[1::3, 1] = np.inf
    valid[5] = EventBatch(valid[5].ids, nan, valid[5].names, valid[5].labels)
    valid[8] = valid[8].take(np.arange(0))  # an empty frame
    garbage = [MUTATIONS[name](rng, valid_frame(valid[0])) for name in MUTATIONS for _ in range(3)]
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    ctx = zmq.Context()
    with ExitStack() as stack:
        stack.callback(ctx.destroy, linger=0)
        sender = stack.enter_context(Sender(ctx, endpoint))
        scorer = start(stack, *scorer_args(tmp_path, endpoint, tmp_path, "--idle-timeout", "30"),
                       log=tmp_path / "scorer.log")
        for i, batch in enumerate(valid):
            assert sender.send_batch(batch)
            for parts in garbage[3 * i: 3 * i + 3]:
                sender.data.send_multipart(parts)
        sender.end_stream(timeout_s=60)
        output = finish(scorer, tmp_path / "scorer.log")
    assert scorer.returncode == 0, output
    ledger = json.loads((tmp_path / "ledger-scorer.json").read_text())
    assert ledger["rejected"] == len(garbage) == 3 * len(MUTATIONS)
    account = ledger["streams"]["0"]
    assert account["processed_frames"] == len(valid) and account["unaccounted_frames"] == 0
    assert account["processed_events"] == sum(len(b) for b in valid)
    assert f"rejected {len(garbage)} messages" in output


def test_torn_journal_line_and_crash_window_account(tmp_path) -> None:
    """In process: a journal cut mid-line by a kill, and the account of a stream with a crash window."""
    journal = FrameJournal(tmp_path / "scorer.journal")
    journal.record(0, 7, 500)
    journal.record(0, 8, 500)
    journal.close()
    with open(tmp_path / "scorer.journal", "ab") as handle:
        handle.write(b"0 9 5")  # the line a kill -9 cut short
    assert FrameJournal(tmp_path / "scorer.journal").read() == {0: {7: 500, 8: 500}}

    tracker = SequenceTracker()
    for seq in [*range(7), *range(12, 20)]:  # checkpoint after 7 frames; 7-8 scored then lost, 9-11 queued
        tracker.observe(0, seq, 500)
    restored = SequenceTracker()
    restored.load_state_dict(json.loads(json.dumps(tracker.state_dict())))  # as a sink commits it
    account = account_stream(restored, 0, sent_frames=21, sent_events=21 * 500,
                             lost_after_processing={7: 500, 8: 500})
    assert account.lost_in_flight == [9, 10, 11, 20]  # the gap, and a frame after the last one seen
    assert (account.processed_events, account.lost_after_processing_events, account.lost_in_flight_events) == (
        15 * 500, 2 * 500, 4 * 500)
    assert account.unaccounted_frames == 0
    assert restored.observe(0, 0, 500) == "restart" and restored.summary()["abandoned"] == 5  # 7-11


def test_checkpoint_of_another_format_version_is_a_one_line_refusal(tmp_path) -> None:
    path = tmp_path / "scorer.ckpt.pt"
    save_checkpoint(path, {"scorer": {}})
    state = torch.load(path, weights_only=True)
    torch.save({**state, "checkpoint_version": CHECKPOINT_VERSION + 1}, path)
    with pytest.raises(ConfigError, match=f"checkpoint format {CHECKPOINT_VERSION + 1}, this streamflow reads") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
