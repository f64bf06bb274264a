"""Every size option has a stated bound: beyond it, one line on stderr naming the bound, exit 2.

Table-driven over every command's size options (events held in memory, frame sizes,
queue depths, windows, thread and rank counts), each given far more than any machine
holds -- the values that used to allocate until the machine killed the process, spin
forever, or overflow a C integer. Options that are streamed (the events a producer
replays) have no upper bound and are not here. The commands run in this process and
must refuse before they start any work.
"""

from __future__ import annotations

import time

import pytest

from streamflow.cli.main import main
from tests.helpers import free_port_block

HUGE = "100000000000000000000"  # 1e20: more than an int64 holds

# (argv, words the one line must contain); small otherwise, in case a bound did not fire
CASES = [
    (["replay", "gaussian", "--frame-size", "100000000000"], "frame size must be 1 to 1,048,576 events"),
    (["replay", "gaussian", "--hwm", HUGE], "high-water mark must be 1 to 10,000 frames"),
    (["replay", "gaussian", "--kernel-buffer", HUGE], "kernel buffer must be 0 to 1,073,741,824 bytes"),
    (["run", "--frame-size", HUGE, "--events", "10"], "frame size must be 1 to 1,048,576 events"),
    (["consume", "--preset", "gaussian", "--window", HUGE], "window must be an integer in [1, 10,000,000]"),
    (["consume", "--preset", "gaussian", "--learn-events", HUGE], "learn_events must be 0 to 10,000,000"),
    (["consume", "--preset", "gaussian", "--threads", HUGE], "threads must be 0 (automatic) to 1024"),
    (["consume", "--preset", "gaussian", "--ranks", "100000"], "--ranks must be 1 to 64"),
    (["consume", "--preset", "gaussian", "--hwm", "20000"], "high-water mark must be 1 to 10,000 frames"),
    (["consume", "--preset", "gaussian", "--kernel-buffer", HUGE], "kernel buffer must be 0 to 1,073,741,824"),
    (["proxy", "--from", "tcp://127.0.0.1:1", "--hwm", HUGE], "high-water mark must be 1 to 10,000 frames"),
    (["coordinates", "--eval-events", HUGE, "--events", "10"], "--eval-events must be 1 to 10,000,000"),
    (["coordinates", "--frame-size", HUGE, "--events", "10"], "frame size must be 1 to 1,048,576 events"),
    (["ephemeral", "synthetic", "--events", HUGE], "events must be 1 to 10,000,000"),
    (["ephemeral", "synthetic", "--events", "10", "--test-events", HUGE], "test events must be 1 to 10,000,000"),
    (["ephemeral", "synthetic", "--events", "10", "--frame-size", HUGE], "frame size must be 1 to 1,048,576"),
    (["sample", "no-such.ckpt.pt", "--events", "2000000000000", "--output", "OUT"],
     "number of events to sample must be 1 to 10,000,000"),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(argv[:3]) for argv, _ in CASES])
def test_an_oversized_option_is_one_line_naming_its_bound(argv, words, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # any folder a command creates before refusing stays in tmp_path
    port = free_port_block(5)
    argv = [str(tmp_path / "out.h5") if a == "OUT" else a for a in argv]
    if argv[0] in ("replay", "consume"):
        argv += ["--endpoint", f"tcp://127.0.0.1:{port}"]
    if argv[0] in ("consume", "proxy"):
        argv += ["--idle-timeout", "1"]
    if argv[0] in ("run", "coordinates"):
        argv += ["--base-port", str(port)]
    start = time.monotonic()
    code = main(argv)
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert err[0].startswith(f"streamflow {argv[0]}: error: "), err
    assert time.monotonic() - start < 10
