"""What an adversarial pass found (issue 20): a scorer stuck on a dead sink, a sink's ledger across
scorer lifetimes, processes that outlived their stop signal.

Each test runs real `streamflow` processes on the Gaussian toy with the small one-learner
scorer of the fault tests; every wait has a timeout and every process is killed on the way out.
"""

from __future__ import annotations

import json
import signal
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from streamflow.stream.ledger import SequenceTracker, account_stream, not_sent_json, stream_not_sent
from streamflow.stream.selections import read_selections
from tests.helpers import free_port_block
from tests.test_faults import finish, journal_lines, scorer_args, sink_written, start, wait_for

pytestmark = pytest.mark.timeout(300)
STOP_S = 15.0
"""What the README promises: every process exits within this long of SIGTERM or SIGINT."""


def stages(ledger: dict) -> dict[str, int]:
    return {stage["name"]: stage["events"] for stage in ledger["stages"]}


def test_a_scorer_whose_sink_died_says_so_once_and_exits_2_with_what_the_sink_did_not_confirm(tmp_path) -> None:
    port = free_port_block(4)
    data, selections = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 2}"
    run_dir, idle = tmp_path / "run", 3
    with ExitStack() as stack:
        sink = start(stack, "sink", "--endpoint", selections, "--run-dir", str(tmp_path / "sink"),
                     "--flush-interval", "0.1", log=tmp_path / "sink.log")
        scorer = start(stack, *scorer_args(tmp_path, data, run_dir, "--selections", selections,
                                           "--idle-timeout", str(idle)), log=tmp_path / "scorer.log")
        start(stack, "replay", "gaussian", "--events", "400000", "--frame-size", "500", "--rate", "40000",
              "--endpoint", data, log=tmp_path / "producer.log")
        wait_for(lambda: sink_written(tmp_path / "sink" / "telemetry-sink.jsonl") > 0, 60, "selections written")
        sink.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        output = finish(scorer, tmp_path / "scorer.log", timeout=60)
        took = time.monotonic() - killed
    assert scorer.returncode == 2, output
    errors = [line for line in output.splitlines() if "error" in line]
    assert len(errors) == 1 and "the sink stopped taking selections" in errors[0] and selections in errors[0], output
    assert took < idle + STOP_S, f"the scorer took {took:.1f} s to give up on its sink"  # exit: up to 7 s loaded
    ledger = json.loads((run_dir / "ledger-scorer.json").read_text())
    counts = stages(ledger)
    assert counts["sent to sink"] > 0 and counts["confirmed by sink"] == 0
    note = next(s["note"] for s in ledger["stages"] if s["name"] == "confirmed by sink")
    assert f"{counts['sent to sink']:,d} not" in note
    assert any("the sink stopped taking selections" in n for n in ledger["notes"])


def test_the_sinks_ledger_balances_across_a_scorer_crash_and_resume(tmp_path) -> None:
    """kill -9 of the scorer, --resume, one sink all along: the sink's account of the selections stream
    adds up with no negative figure -- events of both scorer lifetimes, and the frames the dead scorer
    never processed listed as never sent rather than as the sink's own loss."""
    events, frame = 600_000, 500  # long enough to be killed mid-stream on a loaded machine
    port = free_port_block(4)
    data, selections = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 2}"
    run_dir, sink_dir = tmp_path / "run", tmp_path / "sink"
    with ExitStack() as stack:
        sink = start(stack, "sink", "--endpoint", selections, "--run-dir", str(sink_dir), "--flush-interval", "0.2",
                     log=tmp_path / "sink.log")
        producer = start(stack, "replay", "gaussian", "--events", str(events), "--frame-size", str(frame),
                         "--endpoint", data, "--eos-timeout", "90", log=tmp_path / "producer.log")
        args = scorer_args(tmp_path, data, run_dir, "--selections", selections, "--checkpoint-every", "50",
                           "--idle-timeout", "60")
        first = start(stack, *args, log=tmp_path / "scorer-1.log")
        wait_for(lambda: first.poll() is not None or (run_dir / "scorer.ckpt.pt").exists()
                 and len(journal_lines(run_dir)) >= 2 and sink_written(sink_dir / "telemetry-sink.jsonl") > 0, 120,
                 "a checkpoint, frames scored after it and selections written")
        assert first.poll() is None, (tmp_path / "scorer-1.log").read_text()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert producer.poll() is None, "the stream ended before the kill: make it longer"
        second = start(stack, *args, "--resume", log=tmp_path / "scorer-2.log")
        assert finish(second, tmp_path / "scorer-2.log", timeout=150) and second.returncode == 0
        sink_log = finish(sink, tmp_path / "sink.log", timeout=60)
        assert sink.returncode == 0, sink_log

    scorer = json.loads((run_dir / "ledger-scorer.json").read_text())["streams"]["0"]
    account = json.loads((sink_dir / "ledger-sink.json").read_text())["stream"]
    rows, _ = read_selections(sink_dir / "selections.h5")
    assert scorer["lost_in_flight"]["frames"] and scorer["lost_after_processing"]["frames"], "no crash window"
    assert account["unaccounted_frames"] == 0 and account["lost_in_flight"]["events"] >= 0, account
    assert account["sent_frames"] == events // frame
    assert account["processed_events"] == len(rows)
    assert account["sent_events"] == len(rows) + account["lost_in_flight"]["events"]
    # The frames the scorer lost in flight had no selection: the sink says so and does not count them lost.
    assert account["not_sent"]["frames"] == scorer["lost_in_flight"]["frames"]
    assert not set(account["lost_in_flight"]["frames"]) & set(scorer["lost_in_flight"]["frames"])
    assert "-" not in " ".join(line for line in sink_log.splitlines() if line.startswith("stream 0"))


def test_not_sent_frames_are_neither_processed_nor_lost() -> None:
    tracker = SequenceTracker()
    for seq in (0, 1, 4, 6):  # 2, 3 never sent (the scorer lost them); 5 sent and lost; 7 sent last, lost
        tracker.observe(0, seq, 10)
    not_sent = stream_not_sent({"not_sent": not_sent_json({0: {2, 3}})})
    account = account_stream(tracker, 0, 8, 60, not_sent=not_sent[0])
    assert account.not_sent == [2, 3] and account.lost_in_flight == [5, 7]
    assert account.lost_in_flight_events == 20 and account.unaccounted_frames == 0
    assert "never sent 2 frames" in account.render(0)
    for bad in ({"not_sent": {"0": [[5, 2]]}}, {"not_sent": {"0": [[0, 10**12]]}}, {"not_sent": "x"},
                {"not_sent": {"0": [["a", 1]]}}):
        assert stream_not_sent(bad) == {}  # malformed or absurd: ignored, never expanded


def test_the_ledger_table_fits_80_columns_and_keeps_every_note() -> None:
    from streamflow.stream.ledger import Ledger

    ledger = Ledger()
    ledger.add("sent", 1_000_000_000, "244,141 frames by the producer; stopped early")
    ledger.add("selections received", 25_387, "6,104 frames; 0 rejected")
    ledger.add("written", 25_387, "to run/selections.h5; 12 not written (write failed)")
    ledger.notes.append("stream 0: " + "x " * 80)
    table = ledger.render().splitlines()[: -len(ledger.notes)]
    assert all(len(row) <= 80 for row in table), table
    assert " ".join(" ".join(table).split()).count("to run/selections.h5; 12 not written (write failed)") == 1
    assert "25,387 -999,974,613 6,104 frames" in " ".join(" ".join(table).split())
    assert ledger.render().splitlines()[-1] == ledger.notes[-1]


def _blocked(tmp_path: Path, role: str, port: int) -> tuple[list[list[str]], Path]:
    """Commands (the last one is signalled) that leave ``role`` blocked, and a file that exists once it is."""
    data, selections = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 2}"
    scorer = scorer_args(tmp_path, data, tmp_path / "run", "--idle-timeout", "600", "--selections", selections)
    replay = ["replay", "gaussian", "--frame-size", "500", "--rate", "20000", "--endpoint", data]
    return {  # what it waits on: a receiver that never comes, a sink that never takes, an upstream that is silent
        "producer": ([[*replay, "--eos-timeout", "600"]], tmp_path / "never"),
        "scorer": ([replay, scorer], tmp_path / "run" / "scorer.journal"),
        "sink": ([["sink", "--endpoint", selections, "--idle-timeout", "600", "--run-dir", str(tmp_path / "s")]],
                 tmp_path / "s" / "telemetry-sink.jsonl"),
        "proxy": ([["proxy", "--from", data, "--endpoint", f"tcp://127.0.0.1:{port + 4}", "--idle-timeout", "600"]],
                  tmp_path / "never"),
    }[role]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("role", ["producer", "scorer", "sink", "proxy"])
def test_every_process_stops_within_the_stated_time_whatever_it_waits_on(role, signum, tmp_path) -> None:
    commands, ready = _blocked(tmp_path, role, free_port_block(6))
    with ExitStack() as stack:
        procs = [start(stack, *argv, log=tmp_path / f"{n}.log") for n, argv in enumerate(commands)]
        if ready.name == "never":
            time.sleep(3)  # a light process: in its loop well within this
        else:
            wait_for(ready.exists, 60, f"{role} to start")
            time.sleep(2)  # and block (the scorer: on its sink, which never connects)
        target = procs[-1]
        assert target.poll() is None, (tmp_path / f"{len(procs) - 1}.log").read_text()
        target.send_signal(signum)
        signalled = time.monotonic()
        target.wait(STOP_S + 30)
        took = time.monotonic() - signalled
    log = (tmp_path / f"{len(procs) - 1}.log").read_text()
    assert took <= STOP_S, f"{role} took {took:.1f} s to stop: {log}"
    assert "Traceback" not in log, log


@pytest.mark.parametrize("command", ["run", "coordinates"])
def test_a_pipeline_childs_error_is_relayed_as_one_line_under_the_commands_own_name(command, tmp_path) -> None:
    import socket
    import subprocess

    from tests.helpers import streamflow

    port = free_port_block(6)
    small = {"run": ["--source", "gaussian", "--events", "20000", "--no-monitor", "--no-report",
                     "--run-dir", str(tmp_path / "run")],
             "coordinates": ["--events", "20000", "--eval-events", "1000", "--out", str(tmp_path / "out")]}
    with socket.socket() as busy:  # the scorer's selections port: the scorer fails, the others are stopped
        busy.bind(("127.0.0.1", port + 2))
        busy.listen()
        try:
            result = streamflow(command, *small[command], "--base-port", str(port), timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"streamflow {command} did not stop after its scorer failed")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"streamflow {command}: error: scorer: cannot bind tcp://127.0.0.1:{port + 2}"), lines


def test_a_busy_monitor_port_does_not_blame_a_producer(tmp_path, capsys) -> None:
    import socket

    from streamflow.cli.main import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        endpoint = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
        assert main(["monitor", "--endpoint", endpoint, "--plain", "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot bind {endpoint}: address already in use" in err[0], err
    assert "producer" not in err[0]


@pytest.mark.parametrize("argv, words", [
    (["run", "--device", "tpu", "--events", "100", "--no-monitor", "--no-report"], "device must be auto, cpu or cuda"),
    (["coordinates", "--device", "cuda:x", "--events", "100", "--eval-events", "100"], "device must be auto, cpu"),
    (["ephemeral", "synthetic", "--samples", "0", "--events", "100"], "number of events to sample must be 1 to"),
])  # fmt: skip
def test_second_pass_inputs_are_refused_at_start(argv, words, tmp_path, capsys, monkeypatch) -> None:
    """Found by the second adversarial pass: a bad device reached the scorer process before it was refused,
    and ``--samples 0`` was replaced by the default."""
    from streamflow.cli.main import main

    monkeypatch.chdir(tmp_path)
    start_s = time.monotonic()
    code = main([*argv, *(["--base-port", str(free_port_block(5))] if argv[0] in ("run", "coordinates") else [])])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert time.monotonic() - start_s < 10 and not list(tmp_path.iterdir()), "refused only after starting work"


def test_a_proxy_whose_scorer_died_gives_up_once_with_one_line(tmp_path) -> None:
    port = free_port_block(4)
    upstream, downstream = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 2}"
    with ExitStack() as stack:
        start(stack, "replay", "gaussian", "--events", "2000000", "--frame-size", "500", "--rate", "20000",
              "--endpoint", upstream, log=tmp_path / "producer.log")
        proxy = start(stack, "proxy", "--from", upstream, "--endpoint", downstream, "--idle-timeout", "3",
                      log=tmp_path / "proxy.log")
        scorer = start(stack, *scorer_args(tmp_path, downstream, tmp_path / "run", "--idle-timeout", "60"),
                       log=tmp_path / "scorer.log")
        wait_for(lambda: len(journal_lines(tmp_path / "run")) > 2, 60, "the scorer to take frames from the proxy")
        assert proxy.poll() is None, "the proxy must wait for a slow-starting scorer"
        scorer.send_signal(signal.SIGKILL)
        output = finish(proxy, tmp_path / "proxy.log", timeout=30)
    assert proxy.returncode == 2, output
    errors = [line for line in output.splitlines() if "error" in line]
    assert len(errors) == 1 and "the downstream stopped taking frames" in errors[0], output


def test_a_lone_scorers_totals_to_its_sink_cover_every_lifetime_and_list_what_it_never_sent() -> None:
    from streamflow.stream.ledger import selection_totals

    tracker = SequenceTracker()
    for seq in (0, 1, 2, 5, 6, 7, 8, 9):  # 3 and 4 skipped over: 4 was scored by a crashed lifetime (journal)
        tracker.observe(0, seq, 100)
    streams, extra = selection_totals(tracker, {0: 42}, {0: (12, 1200)}, {0: {4: 100}}, receivers=1)
    assert streams == {0: (12, 42)}  # the producer's 12 frames, the 42 events selected over all lifetimes
    assert stream_not_sent(extra) == {0: {3, 10, 11}}  # never processed by any lifetime: no selection
    shared, none = selection_totals(tracker, {0: 42}, {0: (12, 1200)}, {}, receivers=2)
    assert shared == {0: (12, 42)} and none is None  # split stream: the others' frames are theirs
