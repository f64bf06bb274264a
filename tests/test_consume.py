"""`streamflow consume` as a user runs it: its error messages, and resuming from a checkpoint.

Every user mistake ends with exit code 2 and one line on stderr naming the problem,
never a traceback. A scorer stopped and started again with --resume goes on from its
checkpoint: same models, counters and learner totals continued.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from streamflow.config import from_dict, read_toml
from streamflow.events import GaussianToy
from streamflow.scoring.checkpoint import load_checkpoint
from streamflow.scoring.frame_scorer import FrameScorer, ScorerConfig
from tests.helpers import REPO, STREAMFLOW, free_port_block, streamflow

SCORER_TOML = """
[scorer]
device = "cpu"

[[scorer.learners]]
kind = "cwola"
name = "cwola"
features = ["x0", "x1"]
region_feature = "sample"
signal_region = [0.5, 1.5]
sideband = [-0.5, 1.5]
warmup_events = 2000
hidden = {hidden}

[[scorer.learners]]
kind = "flow"
name = "flow"
features = ["x0", "x1"]
coordinates = "tanh_shift"
hidden = 16
warmup_events = 2000

[[scorer.lines]]
name = "cwola"
learner = "cwola"
accept = 0.05
window = 4000

[[scorer.lines]]
name = "flow"
learner = "flow"
accept = 0.05
window = 4000
"""
EVENTS = 20_000
FRAME = 2000


def scorer_toml(tmp_path: Path, hidden: str = "[32, 32]") -> Path:
    path = tmp_path / f"scorer-{len(list(tmp_path.glob('scorer-*.toml')))}.toml"
    path.write_text(SCORER_TOML.format(hidden=hidden))
    return path


def consume(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return streamflow("consume", "--device", "cpu", *args, timeout=timeout)


def consume_stream(run_dir: Path, config: Path, *args: str, seed: int = 0) -> subprocess.CompletedProcess:
    """A Gaussian-toy producer and `streamflow consume` on it, both run to the end of the stream."""
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    producer = subprocess.Popen(
        [*STREAMFLOW, "replay", "gaussian", "--events", str(EVENTS), "--frame-size", str(FRAME),
         "--seed", str(seed), "--endpoint", endpoint, "--eos-timeout", "90"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        result = consume("--config", str(config), "--endpoint", endpoint, "--run-dir", str(run_dir),
                         "--idle-timeout", "30", *args, timeout=120)
        _, producer_err = producer.communicate(timeout=120)
    finally:
        producer.kill()
    assert producer.returncode == 0, producer_err
    return result


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, no traceback, a single stderr line that contains every one of ``words``."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A run folder with the checkpoint of one scorer pass over the toy stream."""
    tmp_path = tmp_path_factory.mktemp("consume")
    run_dir = tmp_path / "run"
    result = consume_stream(run_dir, scorer_toml(tmp_path))
    assert result.returncode == 0, result.stderr
    return run_dir


def test_unknown_option_prints_usage() -> None:
    result = consume("--no-such-option")
    assert result.returncode == 2
    assert "usage: streamflow" in result.stderr and "--no-such-option" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_producer_gives_up_after_the_idle_timeout(tmp_path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    result = consume("--preset", "gaussian", "--endpoint", endpoint, "--idle-timeout", "1",
                     "--run-dir", str(tmp_path))
    assert_one_line_error(result, endpoint, "no frame", "producer")


def test_checkpoint_of_another_learner_config_is_refused(first_run, tmp_path) -> None:
    other = scorer_toml(tmp_path, hidden="[64, 64]")
    result = consume("--config", str(other), "--resume", "--run-dir", str(first_run), "--idle-timeout", "1")
    assert_one_line_error(result, "'cwola'", "hidden", "[32, 32]", "[64, 64]")
    result = consume("--preset", "lhco", "--resume", "--run-dir", str(first_run), "--idle-timeout", "1")
    assert_one_line_error(result, "checkpoint holds learners", "cwola", "cathode")


def test_corrupt_checkpoint_is_refused(tmp_path) -> None:
    (tmp_path / "scorer.ckpt.pt").write_bytes(b"\x80\x02 half a checkpoint" * 10)
    result = consume("--config", str(scorer_toml(tmp_path)), "--resume", "--run-dir", str(tmp_path),
                     "--idle-timeout", "1")
    assert_one_line_error(result, "scorer.ckpt.pt", "corrupt")


def test_resume_goes_on_from_the_checkpoint(first_run, tmp_path) -> None:
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    saved = (first_run / "scorer.ckpt.pt").read_bytes()
    (run_dir / "scorer.ckpt.pt").write_bytes(saved)
    config_path = scorer_toml(tmp_path)
    before = load_checkpoint(run_dir / "scorer.ckpt.pt")["scorer"]
    # What the checkpointed models score on the first frame of the next stream (another seed).
    config = from_dict(ScorerConfig, read_toml(config_path)["scorer"])
    next_frame = next(GaussianToy(seed=1).chunks(FRAME))
    from_checkpoint, fresh = FrameScorer(config), FrameScorer(config)
    from_checkpoint.load_state_dict(before)
    expected = from_checkpoint.process(next_frame).scores
    untrained = fresh.process(next_frame).scores

    result = consume_stream(run_dir, config_path, "--resume", seed=1)
    assert result.returncode == 0, result.stderr

    ledger = json.loads((run_dir / "ledger-scorer.json").read_text())
    assert ledger["resumed_from_frame"] == EVENTS // FRAME
    counts = {stage["name"]: stage["events"] for stage in ledger["stages"]}
    assert counts["scored"] == counts["learned from"] == EVENTS  # this run's events only
    after = load_checkpoint(run_dir / "scorer.ckpt.pt")["scorer"]
    assert after["counters"]["events_scored"] == after["counters"]["events_learned"] == 2 * EVENTS
    for name in ("cwola", "flow"):
        totals_before, totals_after = before["learners"][name]["totals"], after["learners"][name]["totals"]
        assert totals_before["events"] == EVENTS and totals_after["events"] == 2 * EVENTS, name
        assert totals_after["steps"] == 2 * totals_before["steps"] > 0, name
    # The resumed scorer scored its first frame with the checkpointed models, not fresh ones.
    sample = np.load(run_dir / "scores-scorer.npz")
    for name in ("cwola", "flow"):
        first = sample[name][:FRAME]
        np.testing.assert_allclose(first, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
        assert not np.allclose(first, untrained[name], rtol=1e-3), name


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--hwm", "0", ("high-water mark", "must be 1 to 10,000 frames", "0")),
    ("--kernel-buffer", "-5", ("kernel buffer", "must be 0 to 1,073,741,824 bytes", "-5")),
])  # fmt: skip
def test_bad_queue_options_are_one_line_errors(option, value, words) -> None:
    assert_one_line_error(consume(option, value, "--idle-timeout", "1"), *words)
