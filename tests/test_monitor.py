"""Monitor logic: state from telemetry messages, the 80x24 dashboard, plain lines, warnings, the loop."""

from __future__ import annotations

import io
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

import pexpect
import pytest
import zmq
from rich.console import Console

import streamflow.cli.main
from consumers.monitor import run_monitor
from streamflow.errors import ConfigError
from streamflow.ops.dashboard import MonitorState, plain_line, render, sparkline, warnings
from streamflow.stream.telemetry import TelemetryReporter, read_jsonl

LHCO_LINES = ("flow_m", "flow_logm", "cwola", "ae")
WARMUP = 10_000


def pipeline_messages(t: float, lines: tuple[str, ...] = LHCO_LINES, labels: bool = True,
                      source: str = "synthetic", start: float = 1.7e9) -> list[dict]:
    """The producer, scorer and sink messages of a healthy run ``t`` seconds in, as TelemetryReporter
    sends them: 120k events/s, line i accepting (1.02 - 0.02 i) % at a 1 % target after warm-up."""
    produced, scored = int(120_000 * t), int(118_000 * t)
    warm = scored >= WARMUP
    line_stats, learners = [], {}
    for i, name in enumerate(lines):
        fraction = 0.01 * (1.02 - 0.02 * i)
        accepted = int(fraction * (scored - WARMUP)) if warm else 0
        eff_s = (0.05 + 0.3 * (1 - math.exp(-t / 4)) + 0.02 * i) if labels and warm else None
        eff_b = 0.0095 if eff_s is not None else None
        events = max(scored - WARMUP, 0)
        signal, sr = events // 100 if labels else 0, events // 5  # 1% signal, a fifth of the events in the SR
        sr_signal = signal // 2
        line_stats.append({
            "name": name, "learner": name, "q": 0.01, "threshold": 3.0 + i + 0.5 * math.exp(-t / 3),
            "seen": scored, "accepted": accepted, "achieved": fraction if warm else None, "warm": warm,
            "events": events, "judged": events, "stream_fraction": fraction if warm else None,
            "scored_fraction": 1.0 if warm else None,
            "signal_events": signal, "signal_accepted": int((eff_s or 0) * signal),
            "background_events": events - signal if labels else 0,
            "background_accepted": int((eff_b or 0) * (events - signal)),
            "sr_events": sr, "sr_accepted": accepted // 2, "sr_signal": sr_signal,
            "sr_signal_accepted": int((eff_s or 0) * sr_signal), "sr_background": sr - sr_signal if labels else 0,
            "sr_background_accepted": int(2 * (eff_b or 0) * (sr - sr_signal)),
            "eff_s": eff_s, "eff_b": eff_b, "sic": eff_s / math.sqrt(eff_b) if eff_s is not None else None,
            "sr_eff_s": eff_s, "sr_sic": eff_s / math.sqrt(2 * eff_b) if eff_s is not None else None,
        })
        learners[name] = {"loss": 2.5 * math.exp(-t / 5) + 0.5 + 0.1 * i, "grad_norm": 1.3,
                          "steps": int(30 * t), "skipped": 0, "dropped": 0}
    accepted_any = sum(s["accepted"] for s in line_stats)
    common = {"time": start + t, "uptime_s": t}
    latency = {"n": int(30 * t), "p50_ms": 4.1, "p90_ms": 8.2, "p99_ms": 12.3}
    sequence = {"frames": int(29 * t), "gaps": 0, "reordered": 0, "duplicates": 0}
    return [
        {"role": "producer", "pid": 101, **common, "events": produced, "frames": int(29.3 * t),
         "events_per_s": 120_000.0, "frames_per_s": 29.3, "blocked_s": 0.0, "source": source},
        {"role": "scorer", "pid": 102, **common, "events": scored, "frames": int(28.8 * t),
         "events_per_s": 118_000.0, "frames_per_s": 28.8, "latency": latency, "rejected": 0,
         "sequence": sequence, "accepted": accepted_any, "blocked_s": 0.0, "device": "cpu",
         "learners": learners, "lines": line_stats},
        {"role": "sink", "pid": 103, **common, "frames": int(28.8 * t), "events": accepted_any,
         "events_per_s": 4_700.0, "written": accepted_any, "pending": 0,
         "latency": {**latency, "p50_ms": 5.0, "p99_ms": 13.0}, "sequence": sequence, "rejected": 0},
    ]


def state_after(seconds: float, lines: tuple[str, ...] = LHCO_LINES, step: float = 0.5) -> MonitorState:
    state = MonitorState("tcp://127.0.0.1:5559", started=0.0)
    t = step
    while t <= seconds + 1e-9:
        for message in pipeline_messages(t, lines):
            state.update(message, now=t)
        t += step
    return state


def screen(state: MonitorState, now: float, width: int = 80, height: int = 24) -> list[str]:
    console = Console(width=width, height=height, record=True, file=io.StringIO(), force_terminal=True)
    console.print(render(state, now, height=height))
    return console.export_text().rstrip("\n").split("\n")


def test_dashboard_fits_80x24_with_rates_lines_losses_and_warnings():
    toy_lines = tuple(f"{kind}_{frame}" for frame in ("identity", "cdf", "tanh") for kind in ("flow", "ae", "cwola"))
    state = state_after(10.0, toy_lines)
    gap = {**pipeline_messages(10.0, toy_lines)[1], "sequence": {"frames": 290, "gaps": 3}}
    state.update(gap, now=10.0)
    rows = screen(state, 10.0)
    text = "\n".join(rows)
    assert len(rows) <= 24 and max(len(r) for r in rows) <= 80
    assert "120k" in text and "118k" in text and "4.7k" in text  # events/s per stage
    assert "4.1" in text and "12.3" in text  # scorer latency p50, p99
    for i, name in enumerate(toy_lines):  # nine lines, each with accept fraction vs target
        row = next(r for r in rows if r.startswith(name))
        assert f"{1.02 - 0.02 * i:.2f}%/1.00%" in row
        assert "█" in row and "▁" in row  # the falling loss as a sparkline
    assert "scorer: 3 frames missing" in text


def test_dashboard_cuts_many_lines_to_the_terminal_height():
    state = state_after(3.0, tuple(f"line{i}" for i in range(40)))
    rows = screen(state, 3.0)
    assert len(rows) <= 24
    assert any("more" in r for r in rows), "the rows that do not fit are counted"


def test_before_any_message_it_says_what_it_waits_for():
    state = MonitorState("tcp://127.0.0.1:5559", started=0.0)
    assert "waiting for telemetry on tcp://127.0.0.1:5559" in "\n".join(screen(state, 1.0))
    assert "waiting for telemetry" in plain_line(state, 1.0)


def test_warm_up_lines_show_warm_up_instead_of_a_rate():
    state = state_after(0.05, step=0.05)  # 5.9k events scored: below the 10k warm-up
    assert "warm-up/1.00%" in "\n".join(screen(state, 0.05))
    assert "flow_m warm-up/1.00%" in plain_line(state, 0.05)


@pytest.mark.parametrize("message", [
    {"role": "scorer"},
    {"role": "scorer", "lines": None, "learners": None, "latency": None, "sequence": None},
    {"role": "scorer", "lines": [{"name": None, "q": None, "achieved": None, "sic": None}, "junk"],
     "learners": {"flow": {"loss": None}, "ae": "junk"}, "latency": {"p50_ms": None}, "pid": "x"},
    {"role": "scorer", "lines": "junk", "learners": ["junk"], "events_per_s": "fast", "blocked_s": True},
    {"role": None, "events": float("nan")},
    {},
])
def test_missing_null_and_odd_keys_never_crash(message):
    state = MonitorState("tcp://127.0.0.1:5559", started=0.0)
    state.update(message, now=1.0)
    state.update(message, now=1.5)
    assert screen(state, 2.0)
    assert plain_line(state, 2.0).startswith("t=2.0s ")
    assert warnings(state, 2.0) == []


def test_unreadable_messages_are_counted_and_ignored():
    state = MonitorState(started=0.0)
    assert not state.feed(b"\xff not json", now=1.0)
    assert not state.feed(b"[1, 2]", now=1.0)
    assert state.feed(json.dumps(pipeline_messages(1.0)[0]).encode(), now=1.0)
    assert state.unreadable == 2 and state.messages == 1
    assert ("warn", "2 unreadable telemetry messages ignored") in warnings(state, 1.0)


def test_warnings_name_gaps_rejects_skipped_steps_and_growing_blocked_time():
    state = MonitorState(started=0.0)
    for k in range(1, 9):
        t = 0.5 * k
        producer, scorer, sink = pipeline_messages(t)
        producer["blocked_s"] = 0.4 * t  # blocked 40 % of the time
        scorer["learners"]["flow_m"].update(skipped=2, dropped=7)
        sink["rejected"] = 1
        sink["sequence"] = {"frames": 100, "gaps": 0, "reordered": 2, "duplicates": 1}
        for message in (producer, scorer, sink):
            state.update(message, now=t)
    found = dict((text, severity) for severity, text in warnings(state, 4.0))
    assert found["flow_m: 2 learning steps skipped (non-finite loss or gradient)"] == "warn"
    assert found["flow_m: 7 non-finite rows dropped from learning"] == "warn"
    assert found["sink: 1 rejected messages (bad frames)"] == "error"
    assert found["sink: 2 frames reordered, 1 duplicated"] == "warn"
    assert any(text.startswith("producer: blocked 1.") for text in found), found


def test_a_healthy_run_has_no_warnings_and_a_constant_blocked_time_is_not_one():
    state = state_after(5.0)
    assert warnings(state, 5.0) == []


def test_a_silent_producer_beside_a_live_scorer_is_a_stall():
    state = MonitorState(started=0.0)
    producer, scorer, _ = pipeline_messages(1.0)
    state.update(producer, now=1.0)
    for t in (2.0, 3.0, 4.0, 5.0):
        state.update(scorer, now=t)
    assert ("error", "producer stalled: no message for 4 s while scorer runs") in warnings(state, 5.0)
    assert "quiet 4s" in plain_line(state, 5.0)
    # Once the scorer is quiet too, the run has ended: no stall.
    assert not any("stalled" in text for _, text in warnings(state, 9.0))


def test_a_producer_that_sent_everything_may_be_silent_while_the_scorer_drains():
    state = MonitorState(started=0.0)
    producer, scorer, _ = pipeline_messages(1.0)
    state.update({**producer, "sent_all": True}, now=1.0)
    for t in (2.0, 3.0, 4.0, 5.0):
        state.update(scorer, now=t)
    assert not any("stalled" in text for _, text in warnings(state, 5.0))
    line = plain_line(state, 5.0)
    assert "(all sent)" in line and "quiet" not in line


def test_two_processes_with_one_role_are_told_apart_by_pid():
    state = state_after(2.0)
    other = {**pipeline_messages(2.0)[1], "pid": 999}
    state.update(other, now=2.0)
    line = plain_line(state, 2.0)
    assert "scorer:102 118k ev/s" in line and "scorer:999 118k ev/s" in line
    assert "scorer:999/flow_m 1.02%/1.00%" in line


def test_plain_line_has_rates_latency_accept_fractions_and_sic():
    line = plain_line(state_after(3.0), 3.0)
    assert line.startswith("t=3.0s producer 120k ev/s | scorer 118k ev/s p50 4.1 p99 12.3 ms | sink 4.7k ev/s")
    assert "lines flow_m 1.02%/1.00% SIC " in line and "ae 0.96%/1.00%" in line


def test_sparkline_scales_from_min_to_max_and_skips_missing_values():
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([3, None, 3, float("nan")]) == "▄▄"
    assert sparkline(range(100), width=5) == sparkline(range(95, 100)) == "▁▃▅▆█"  # the newest values
    assert sparkline([]) == ""


def free_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


class Publisher(threading.Thread):
    """Producer, scorer and sink PUB sockets that send pipeline_messages every 0.2 s until stopped."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.stop = endpoint, threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        sockets = [ctx.socket(zmq.PUB) for _ in range(3)]
        for sock in sockets:
            sock.connect(self.endpoint)
        start = time.monotonic()
        while not self.stop.wait(0.2):
            for sock, message in zip(sockets, pipeline_messages(time.monotonic() - start + 1.0)):
                sock.send(json.dumps(message).encode())
        for sock in sockets:
            sock.close(linger=0)
        ctx.term()


def test_run_monitor_prints_plain_lines_and_exits_once_the_run_falls_silent():
    endpoint, out = free_endpoint(), io.StringIO()
    publisher = Publisher(endpoint)
    publisher.start()
    threading.Timer(2.0, publisher.stop.set).start()
    began = time.monotonic()
    state = run_monitor(endpoint, console=Console(file=out), idle_exit=1.0, duration=20, interval=0.5)
    assert state.exit_reason == "idle" and time.monotonic() - began < 10
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("t=") for line in lines)
    assert "scorer 118k ev/s" in lines[-1] and "flow_m 1.02%/1.00%" in lines[-1]
    assert {v.kind for v in state.processes.values()} == {"producer", "scorer", "sink"}


def test_run_monitor_stops_on_its_event_and_after_its_duration():
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    state = run_monitor(free_endpoint(), console=Console(file=io.StringIO()), stop_event=stop, duration=20)
    assert state.exit_reason == "stopped"
    out = io.StringIO()
    state = run_monitor(free_endpoint(), console=Console(file=out), duration=0.6, interval=0.25)
    assert state.exit_reason == "duration" and "waiting for telemetry" in out.getvalue()


def test_bad_or_busy_endpoints_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="bad endpoint"):
        run_monitor("localhost:5559", console=Console(file=io.StringIO()), duration=0.1)
    endpoint = free_endpoint()
    ctx = zmq.Context()
    busy = ctx.socket(zmq.SUB)
    busy.bind(endpoint)
    try:
        with pytest.raises(ConfigError, match="address already in use"):
            run_monitor(endpoint, console=Console(file=io.StringIO()), duration=0.1)
    finally:
        busy.close(linger=0)
        ctx.term()


# `streamflow monitor` through the real entry point, with only this subcommand registered.
MONITOR_CLI = [sys.executable, "-c", "import sys, streamflow.cli.main as m; m.SUBCOMMANDS = ('monitor',); "
               "sys.exit(m.main())", "monitor"]


def terminal_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return {**env, "TERM": "xterm-256color"}


def spawn_in_terminal(endpoint: str) -> tuple[pexpect.spawn, str]:
    """The monitor in a 80x24 pseudo-terminal, between two `stty -g` (the terminal settings before and
    after); returns the child and the settings before."""
    script = f"stty -g; {shlex.join(MONITOR_CLI + ['--endpoint', endpoint, '--duration', '40'])}; " \
             "echo rc=$?; stty -g"
    child = pexpect.spawn("bash", ["--norc", "--noprofile", "-c", script], dimensions=(24, 80),
                          env=terminal_env(), encoding="utf-8", timeout=40)
    return child, child.readline().strip()


@pytest.mark.parametrize("key", ["q", "\x03"], ids=["q", "ctrl-c"])
def test_dashboard_in_a_terminal_shows_rates_and_lines_and_exits_cleanly(key):
    endpoint = free_endpoint()
    publisher = Publisher(endpoint)
    publisher.start()
    try:
        child, settings_before = spawn_in_terminal(endpoint)
        child.expect("120k")  # the producer's events/s
        child.expect(r"1\.02%/1\.00%")  # flow_m: accept fraction / target
        child.expect(r"0\.96%/1\.00%")  # ae
        child.send(key)
        child.expect(r"rc=(\d+)\r\n")
        assert child.match.group(1) == "0"
        assert "\x1b[?25h" in child.before, "the cursor is shown again"
        assert child.readline().strip() == settings_before, "the terminal settings are restored"
        child.expect(pexpect.EOF)
    finally:
        publisher.stop.set()


def test_plain_mode_through_a_pipe_prints_a_line_per_interval():
    endpoint = free_endpoint()
    publisher = Publisher(endpoint)
    publisher.start()
    try:
        done = subprocess.run(MONITOR_CLI + ["--endpoint", endpoint, "--duration", "4", "--interval", "0.5"],
                              capture_output=True, text=True, timeout=50)
    finally:
        publisher.stop.set()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    times = [float(line.split("s ", 1)[0].removeprefix("t=")) for line in lines]
    assert 6 <= len(lines) <= 9 and times == sorted(times) and times[-1] == pytest.approx(4.0, abs=0.2)
    last = lines[-1]
    assert "producer 120k ev/s | scorer 118k ev/s p50 4.1 p99 12.3 ms | sink 4.7k ev/s" in last
    assert "lines flow_m 1.02%/1.00% SIC" in last and "ae 0.96%/1.00%" in last
    assert "\x1b" not in done.stdout, "no terminal codes in a pipe"


def test_cli_rejects_non_positive_seconds_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(streamflow.cli.main, "SUBCOMMANDS", ("monitor",))
    assert streamflow.cli.main.main(["monitor", "--duration", "0"]) == 2
    assert capsys.readouterr().err == "streamflow monitor: error: --duration must be positive seconds, got 0\n"


def test_telemetry_messages_lost_on_the_way_are_counted_per_process():
    state = MonitorState(started=0.0)
    producer, scorer, _ = pipeline_messages(1.0)
    for i, n in enumerate((0, 1, 4, 5)):  # messages 2 and 3 of the scorer never arrived
        state.update({**scorer, "n": n}, now=1.0 + i)
        state.update({**producer, "n": i}, now=1.0 + i)
    assert ("warn", "scorer: 2 telemetry messages dropped on the way to the monitor") in warnings(state, 6.0)
    assert not any(text.startswith("producer:") and "dropped" in text for _, text in warnings(state, 6.0))


def test_reporter_numbers_its_messages(tmp_path):
    sent: list[bytes] = []
    reporter = TelemetryReporter("scorer", publish=sent.append, jsonl_path=tmp_path / "t.jsonl")
    for _ in range(3):
        reporter.report({"events": 1})
    reporter.close()
    assert [json.loads(p)["n"] for p in sent] == [0, 1, 2]
    assert [m["n"] for m in read_jsonl(tmp_path / "t.jsonl")] == [0, 1, 2]


def test_plain_line_shows_unique_rates_and_a_learner_still_in_its_warm_up():
    state = MonitorState("tcp://127.0.0.1:5559", started=0.0)
    message = {"kind": "scorer", "role": "scorer", "pid": 1, "time": 1.0, "uptime_s": 1.0, "events": 200_000,
               "lines": [{"name": "flow_m", "learner": "flow_m", "q": 0.01, "achieved": 0.01, "warm": True,
                          "unique": 500, "learner_warming_up": False},
                         {"name": "cwola", "learner": "cwola", "q": 0.01, "achieved": 0.012, "warm": True,
                          "unique": 1200, "learner_warming_up": True}]}
    state.feed(json.dumps(message).encode(), 1.0)
    line = plain_line(state, 1.0)
    assert "flow_m 1.00%/1.00% uniq 0.25%" in line
    assert "cwola 1.20%/1.00% learner warm-up uniq 0.60%" in line


def test_a_budget_scorer_shows_each_learners_learnt_fraction_since_the_last_message() -> None:
    state = MonitorState("tcp://127.0.0.1:5559", started=0.0)
    for t, learnt in ((1.0, 0.5), (2.0, 0.2)):  # cumulative counts: half of the first second, a fifth of the next
        for message in pipeline_messages(t):
            if message["role"] == "scorer":
                message["learn"] = "budget"
                for i, stats in enumerate(message["learners"].values()):
                    scored = 100_000 * t
                    learned = 50_000 + (learnt * 100_000 if t > 1 else 0) if i == 0 else scored
                    stats.update(scored=scored, learned_from=learned)
            state.update(message, now=t)
    assert " learnt flow_m 20%, flow_logm 100%, cwola 100%, ae 100%" in plain_line(state, 2.0)
    rows = screen(state, 2.0)
    assert "learnt" in next(r for r in rows if r.startswith("line "))
    assert " 20%" in next(r for r in rows if r.startswith("flow_m "))
    state_all = state_after(2.0)  # learn = "all": no learnt figures
    assert "learnt" not in plain_line(state_all, 2.0) and "learnt" not in "\n".join(screen(state_all, 2.0))
