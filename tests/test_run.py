"""`streamflow run` as a user drives it: stopped with Ctrl-C, and watched in a terminal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import pexpect
import pytest

from streamflow.stream.telemetry import read_jsonl
from tests.helpers import REPO, STREAMFLOW, free_port_block

SMALL_MENU = ("--learners", "cwola,ae", "--device", "cpu")


def _wait_for_scored_events(run_dir, timeout: float = 90.0) -> list[dict]:
    path = run_dir / "telemetry-scorer.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            messages = read_jsonl(path)
            if messages and messages[-1].get("frames", 0) >= 3:
                return messages
        time.sleep(0.2)
    raise AssertionError("the scorer did not score 3 frames in time")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is not running
        return handle.read().split()[2] != "Z"


@pytest.mark.timeout(240)
def test_sigint_mid_stream_stops_every_process_with_files_flushed(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [*STREAMFLOW, "run", "--events", "5000000", *SMALL_MENU, "--no-monitor", "--no-report",
         "--run-dir", str(run_dir), "--base-port", str(free_port_block())],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for_scored_events(run_dir)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert "Traceback" not in err, err
    assert process.returncode == 0, err
    pids = {m["role"]: m["pid"] for name in ("producer", "scorer", "sink")
            for m in read_jsonl(run_dir / f"telemetry-{name}.jsonl")[-1:]}
    assert set(pids) == {"producer", "scorer", "sink"}
    assert not [role for role, pid in pids.items() if _alive(pid)], "a child process outlived the run"
    assert (run_dir / "scorer.ckpt.pt").stat().st_size > 0
    with h5py.File(run_dir / "selections.h5", "r") as handle:
        written = handle["ids"].shape[0]
    assert "sent" in out and "stopped early" in out
    sent = int(re.search(r"^sent\s+([\d,]+)", out, re.M).group(1).replace(",", ""))
    assert 0 < sent < 5_000_000
    scorer_final = read_jsonl(run_dir / "telemetry-scorer.jsonl")[-1]
    assert scorer_final["events"] == sent, "the producer's END_OF_STREAM drained every sent event"
    assert written == scorer_final["accepted"]


@pytest.mark.timeout(240)
def test_monitor_in_a_terminal_shows_live_rates_and_accept_fractions(tmp_path):
    run_dir = tmp_path / "run"
    child = pexpect.spawn(
        sys.executable, ["-m", "streamflow.cli.main", "run", "--events", "5000000", *SMALL_MENU, "--no-report",
                         "--run-dir", str(run_dir), "--base-port", str(free_port_block())],
        cwd=str(REPO), dimensions=(24, 80), encoding="utf-8", timeout=150,
    )
    try:
        # A line's achieved / target accept fraction, once its window is full (20k events).
        child.expect(r"\bae\s+\S+\s+(?:\x1b\[[\d;]*m)?\d+\.\d+%/1\.00%")
        child.expect(r"scorer\s+\S+\s+[\d.]+k")  # a non-zero events/s in thousands
        child.send("q")
        child.expect(pexpect.EOF, timeout=120)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert (run_dir / "selections.h5").exists()


@pytest.mark.timeout(240)
def test_acked_run_ends_with_a_balanced_ledger_and_every_accepted_event_written_once(tmp_path):
    """`streamflow run --acked`: both hops acknowledged; every frame acknowledged, every event scored, every
    accepted event in the sink's file once, and the printed ledger says what delivery did."""
    run_dir = tmp_path / "run"
    events, frame = 60_000, 2_000
    result = subprocess.run(
        [*STREAMFLOW, "run", "--acked", "--events", str(events), "--frame-size", str(frame), *SMALL_MENU,
         "--no-monitor", "--no-report", "--run-dir", str(run_dir), "--base-port", str(free_port_block())],
        cwd=REPO, capture_output=True, text=True, timeout=220,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    frames = events // frame
    assert f"producer: acknowledged {frames} of {frames} frames, redelivered 0" in result.stdout

    def stages(role: str) -> dict[str, int]:
        ledger = json.loads((run_dir / f"ledger-{role}.json").read_text())
        return {stage["name"]: stage["events"] for stage in ledger["stages"]}

    producer, scorer, sink = stages("producer"), stages("scorer"), stages("sink")
    delivery = json.loads((run_dir / "ledger-producer.json").read_text())["delivery"]
    assert delivery["sent"] == delivery["acked"] == frames and delivery["unknown_acks"] == 0
    assert producer["sent"] == scorer["received"] == scorer["scored"] == events
    assert 0 < scorer["accepted"] == scorer["sent to sink"] == scorer["confirmed by sink"]
    assert sink["selections received"] == sink["written"] == scorer["accepted"]
    account = json.loads((run_dir / "ledger-sink.json").read_text())["stream"]
    assert account["unaccounted_frames"] == 0 and account["processed_frames"] == frames
    with h5py.File(run_dir / "selections.h5", "r") as handle:
        ids = handle["ids"][:]
    assert len(ids) == len(set(ids.tolist())) == scorer["accepted"], "every accepted event written, once"
