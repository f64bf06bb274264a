"""Data-parallel scorers (streamflow.distributed): ranks that stay one model.

The end-to-end test starts 2 scorer ranks with torchrun (gloo, CPU) against one
producer, as a user would; the others check the pieces: that 2 ranks learning
from halves of each frame end where one learner on whole frames does, how
per-rank sequence accounts merge, and the configuration errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from streamflow.cli.main import main as streamflow_main
from streamflow.distributed import Collective, init_collective, rank_endpoint, weights_digest
from streamflow.errors import ConfigError
from streamflow.events import open_source
from streamflow.events.batch import EventBatch
from streamflow.learners import AutoencoderConfig, CWoLAConfig, FlowConfig, build_learner
from streamflow.scoring.frame_scorer import FrameScorer, ScorerConfig
from streamflow.scoring.presets import preset
from streamflow.stream.ledger import SequenceTracker, merge_sequence_states
from tests.helpers import REPO, STREAMFLOW, free_port_block

FRAMES, FRAME_SIZE = 30, 2000


def _seen(runs: list[list[int]]) -> set[int]:
    return {seq for a, b in runs for seq in range(a, b)}


def _run_ranks(run_dir: Path, *extra: str) -> str:
    """2 ranks (torchrun, gloo) with global thresholds on one paced Gaussian-toy producer; their output."""
    port = free_port_block(4)
    endpoint = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    scorers = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port + 2}",
         "-m", "streamflow.cli.main", "consume", "--preset", "gaussian", "--endpoint", endpoint, "--threads", "1",
         "--window", "4000", "--thresholds", "global", "--hwm", "4", "--checkpoint-every", "5",
         "--idle-timeout", "60", "--run-dir", str(run_dir), *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Paced and with short queues, so that ZeroMQ shares the frames between the two ranks.
    producer = subprocess.run(
        [*STREAMFLOW, "replay", "gaussian", "--events", str(FRAMES * FRAME_SIZE), "--frame-size", str(FRAME_SIZE),
         "--rate", "20000", "--hwm", "4", "--eos-timeout", "120", "--endpoint", endpoint],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    output, _ = scorers.communicate(timeout=180)
    assert producer.returncode == 0, producer.stderr
    assert scorers.returncode == 0, output[-3000:]
    assert "weights identical on all ranks: yes" in output
    return output


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("ranks")
    _run_ranks(run_dir)
    return run_dir


def test_two_ranks_process_every_frame_once(two_rank_run: Path) -> None:
    """Every frame the producer sent was processed by exactly one rank, and the merged ledger says so."""
    ranks = [json.loads((two_rank_run / f"ledger-scorer-rank{r}.json").read_text()) for r in (0, 1)]
    seen = [_seen(rank["frames_seen"]["0"]) for rank in ranks]
    assert all(seen), "each rank should get some of the frames"
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(FRAMES))
    assert sum(rank["stages"][0]["events"] for rank in ranks) == FRAMES * FRAME_SIZE
    merged = json.loads((two_rank_run / "ledger-scorer.json").read_text())
    stream = merged["streams"]["0"]
    assert (stream["processed_frames"], stream["processed_events"]) == (FRAMES, FRAMES * FRAME_SIZE)
    assert stream["unaccounted_frames"] == 0 and not stream["lost_in_flight"]["frames"]
    assert stream["taken_by_other_receivers"] == {"receivers": 0, "frames": [], "events": 0}  # the union: all ranks
    assert merged["duplicate_frames"] == 0
    # Each rank's own account says the other rank took the frames it did not see, not that they were lost.
    for rank, theirs in zip(ranks, seen[::-1]):
        account = rank["streams"]["0"]
        assert account["lost_in_flight"] == {"frames": [], "events": 0}
        assert account["taken_by_other_receivers"] == {"receivers": 1, "frames": sorted(theirs),
                                                       "events": len(theirs) * FRAME_SIZE}


def test_two_ranks_hold_one_model_and_one_checkpoint(two_rank_run: Path) -> None:
    """Weights bit-identical on both ranks after the stream; rank 0 wrote the only checkpoint."""
    digests = [json.loads((two_rank_run / f"ledger-scorer-rank{r}.json").read_text())["weights_sha256"]
               for r in (0, 1)]
    assert digests[0] == digests[1]
    assert json.loads((two_rank_run / "ledger-scorer.json").read_text())["weights_identical"] is True
    assert sorted(p.name for p in two_rank_run.glob("*.ckpt.pt")) == ["scorer.ckpt.pt"]
    state = torch.load(two_rank_run / "scorer.ckpt.pt", weights_only=True)
    assert state["scorer"]["counters"]["frames"] == FRAMES  # the counts of both ranks
    assert state["scorer"]["counters"]["events_learned"] == FRAMES * FRAME_SIZE


def test_global_thresholds_are_equal_on_both_ranks(two_rank_run: Path) -> None:
    lines = [json.loads((two_rank_run / f"ledger-scorer-rank{r}.json").read_text())["lines"] for r in (0, 1)]
    assert [line["name"] for line in lines[0]] == [line["name"] for line in lines[1]]
    for mine, theirs in zip(*lines):
        assert np.isfinite(mine["threshold"]), f"line {mine['name']} never left its warm-up"
        assert mine["threshold"] == theirs["threshold"]
        assert mine["judged"] > 0 and theirs["judged"] > 0


def test_all_ranks_resume_from_rank_0s_checkpoint(two_rank_run: Path, tmp_path: Path) -> None:
    """A second stream with --resume: both ranks start from the one checkpoint, which then counts both streams."""
    run_dir = tmp_path / "resumed"
    shutil.copytree(two_rank_run, run_dir)
    _run_ranks(run_dir, "--resume")
    for r in (0, 1):
        assert json.loads((run_dir / f"ledger-scorer-rank{r}.json").read_text())["resumed_from_frame"] == FRAMES
    state = torch.load(run_dir / "scorer.ckpt.pt", weights_only=True)
    assert state["scorer"]["counters"]["frames"] == 2 * FRAMES
    merged = json.loads((run_dir / "ledger-scorer.json").read_text())
    assert merged["stages"][0]["events"] == FRAMES * FRAME_SIZE  # this run's events only


def test_consume_ranks_starts_the_ranks_itself_and_errors_stay_one_line(tmp_path: Path) -> None:
    """`streamflow consume --ranks 2`: the same ranks without torchrun; a shared error is said once."""
    port = free_port_block(2)
    endpoint = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    scorers = subprocess.Popen(
        [*STREAMFLOW, "consume", "--ranks", "2", "--preset", "gaussian", "--endpoint", endpoint, "--threads", "1",
         "--window", "4000", "--hwm", "4", "--run-dir", str(tmp_path / "run")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    producer = subprocess.run(
        [*STREAMFLOW, "replay", "gaussian", "--events", "40000", "--frame-size", "2000", "--rate", "20000",
         "--hwm", "4", "--eos-timeout", "60", "--endpoint", endpoint], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=120)
    out, err = scorers.communicate(timeout=120)
    assert producer.returncode == 0 and scorers.returncode == 0, err[-2000:]
    merged = json.loads((tmp_path / "run" / "ledger-scorer.json").read_text())
    assert merged["ranks"] == 2 and merged["weights_identical"] is True
    assert merged["streams"]["0"]["processed_events"] == 40000 and "rank 1:" in out
    idle = subprocess.run(
        [*STREAMFLOW, "consume", "--ranks", "2", "--preset", "gaussian", "--endpoint", f"tcp://127.0.0.1:{port}",
         "--idle-timeout", "2", "--threads", "1", "--run-dir", str(tmp_path / "idle")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert idle.returncode == 2
    assert idle.stderr.strip().splitlines() == [
        f"streamflow consume: error: no frame from tcp://127.0.0.1:{port} on any of 2 ranks for 2 s: "
        "is the producer running?"]


def _kill_job(pid: int) -> None:
    """kill -9 of a torchrun job: its ranks (torchrun starts them in sessions of their own), then torchrun."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in map(int, children):
        os.kill(child, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


def test_ranks_killed_mid_stream_resume_and_name_every_lost_frame(tmp_path: Path) -> None:
    """kill -9 of the whole torchrun job, restart with --resume: every frame processed or named as lost.

    Rank 0 reads every rank's journal: the frames any rank scored after the last
    checkpoint are "lost after processing"; those queued in the dead ranks are "lost
    in flight"; the merged account leaves nothing unaccounted."""
    events, frame = 200_000, 500
    port = free_port_block(4)
    endpoint, run_dir = f"tcp://127.0.0.1:{port}", tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def ranks(log: str, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port + 2}", "-m", "streamflow.cli.main", "consume", "--preset", "gaussian",
             "--endpoint", endpoint, "--threads", "1", "--window", "2000", "--checkpoint-every", "5",
             "--run-dir", str(run_dir), *extra], cwd=REPO, env=env, stdout=open(tmp_path / log, "w"),
            stderr=subprocess.STDOUT)

    def journals() -> dict[int, int]:
        return {seq: n for path in run_dir.glob("scorer-rank*.journal")
                for line in path.read_text().splitlines() for _, seq, n in [map(int, line.split()[:3])]}

    producer = subprocess.Popen(
        [*STREAMFLOW, "replay", "gaussian", "--events", str(events), "--frame-size", str(frame), "--hwm", "4",
         "--rate", "20000", "--endpoint", endpoint, "--eos-timeout", "120"], cwd=REPO, env=env,
        stdout=open(tmp_path / "producer.log", "w"), stderr=subprocess.STDOUT)
    first = ranks("first.log")
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "scorer.ckpt.pt").exists() and journals()):
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-2000:]
            time.sleep(0.02)
        _kill_job(first.pid)
        first.wait(10)
        scored_after_checkpoint = journals()
        assert producer.poll() is None, "the stream ended before the kill: make it longer"
        second = ranks("second.log", "--resume")
        assert second.wait(150) == 0, ((tmp_path / "second.log").read_text()[-3000:]
                                       + (tmp_path / "producer.log").read_text())
        assert producer.wait(60) == 0, (tmp_path / "producer.log").read_text()
    finally:
        for proc in (first, producer):
            if proc.poll() is None:
                proc.kill()
    merged = json.loads((run_dir / "ledger-scorer.json").read_text())
    account = merged["streams"]["0"]
    after, in_flight = account["lost_after_processing"], account["lost_in_flight"]
    assert after["frames"] == sorted(scored_after_checkpoint)
    assert after["events"] == sum(scored_after_checkpoint.values())
    assert account["unaccounted_frames"] == 0 and merged["duplicate_frames"] == 0
    assert account["processed_frames"] + len(after["frames"]) + len(in_flight["frames"]) == events // frame
    assert account["processed_events"] + after["events"] + in_flight["events"] == events
    assert merged["weights_identical"] is True


# --- two ranks on halves of each frame = one learner on whole frames ------------------------------

def _learners() -> list:
    features = ("x0", "x1")
    return [FlowConfig(name="flow", features=features, warmup_events=1500, batch_size=4096, ema_decay=0.0),
            AutoencoderConfig(name="ae", features=features, warmup_events=1500, batch_size=4096, ema_decay=0.0),
            CWoLAConfig(name="cwola", features=features, region_feature="sample", signal_region=(0.5, 1.5),
                        sideband=(-0.5, 1.5), warmup_events=1500, batch_size=4096, ema_decay=0.0)]


def _frames() -> list:
    source = open_source("gaussian", seed=3)
    return [batch for _, batch in zip(range(4), source.chunks(1000))]


def _train(configs: list, frames: list, collective: Collective | None = None) -> dict[str, dict]:
    learners = [build_learner(config, "cpu") for config in configs]
    for learner in learners:
        learner.bind(frames[0].names)
        if collective is not None:
            learner.distribute(collective)
    for batch in frames:
        x = torch.from_numpy(batch.features)
        if collective is not None:  # rank r learns from its half of the frame
            x = x.chunk(collective.world_size)[collective.rank]
        for learner in learners:
            learner.learn(x)
    return {learner.name: {k: v.clone() for k, v in learner.model.state_dict().items()} for learner in learners}


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        weights = _train(_learners(), _frames(), Collective(rank, 2, torch.device("cpu")))
        torch.save(weights, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_on_halves_learn_what_one_learner_learns_on_wholes(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(free_port_block(1), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    alone = _train(_learners(), _frames())
    for name in alone:
        for key, value in alone[name].items():
            assert torch.equal(ranks[0][name][key], ranks[1][name][key]), f"{name}.{key} differs between ranks"
            # Same gradient up to the order of float sums: the weights agree to rounding.
            torch.testing.assert_close(ranks[0][name][key], value, rtol=1e-4, atol=1e-5)


def _uneven_rank_main(rank: int, port: int, out_dir: str) -> None:
    """A FrameScorer rank that gets 3 frames (rank 0) or 1 frame (rank 1), learning every 2,500 events."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        config = dataclasses.replace(preset("gaussian", window=500), learn_events=2500, threads=1, device="cpu")
        scorer = FrameScorer(config)
        collective = Collective(rank, 2, torch.device("cpu"))
        scorer.distribute(collective)
        frames = _frames()
        mine = frames[:3] if rank == 0 else frames[3:]
        for step in range(3):  # rounds: a rank without a frame joins with an empty batch
            if step < len(mine):
                scorer.process(mine[step])
            else:
                scorer.process(EventBatch(np.zeros(0, np.uint64), np.zeros((0, len(mine[0].names)), np.float32),
                                          mine[0].names), counted=False)
        scorer.flush()
        torch.save({"frames": scorer.frames, "learned": scorer.events_learned,
                    "digest": weights_digest(learner.model for learner in scorer.learners.values()),
                    "steps": {name: learner.totals.steps for name, learner in scorer.learners.items()}},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_with_uneven_frames_and_accumulated_steps_stay_one_model(tmp_path: Path) -> None:
    """learn_events > 0 with ranks that get different numbers of frames: no rank waits for ever, all step
    together (the accumulated events are counted over all ranks) and end bit-identical."""
    mp.spawn(_uneven_rank_main, args=(free_port_block(1), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["frames"] for r in ranks] == [3, 1]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["steps"] == ranks[1]["steps"] and all(ranks[0]["steps"].values())
    assert ranks[0]["learned"] + ranks[1]["learned"] == 4000  # every scored event learnt from, once


# --- pieces ---------------------------------------------------------------------------------------

def test_sequence_accounts_merge_into_the_union() -> None:
    trackers = [SequenceTracker(), SequenceTracker()]
    for seq in range(10):
        trackers[seq % 3 == 0].observe(0, seq, 100)
    merged, duplicates = merge_sequence_states([t.state_dict() for t in trackers])
    assert duplicates == 0
    assert merged["streams"]["0"] == {"next_seq": 10, "missing": [], "frames": 10, "events": 1000}
    trackers[1].observe(0, 4, 100)  # frame 4 seen by both ranks; frame 10 never
    trackers[0].observe(0, 11, 100)
    merged, duplicates = merge_sequence_states([t.state_dict() for t in trackers])
    assert duplicates == 1
    assert merged["streams"]["0"]["missing"] == [[10, 11]]


def test_rank_endpoints_do_not_collide() -> None:
    assert rank_endpoint("tcp://127.0.0.1:6000", 0) == "tcp://127.0.0.1:6000"
    assert rank_endpoint("tcp://127.0.0.1:6000", 1) == "tcp://127.0.0.1:6002"  # 6001: rank 0's control
    assert rank_endpoint("ipc:///tmp/sel", 3) == "ipc:///tmp/sel-rank3"
    with pytest.raises(ConfigError, match="rank 2"):
        rank_endpoint("tcp://127.0.0.1:65533", 2)


def test_global_thresholds_need_histogram_lines() -> None:
    exact = preset("gaussian")
    with pytest.raises(ConfigError, match="global thresholds need estimator = 'histogram'"):
        ScorerConfig(learners=exact.learners, lines=exact.lines, thresholds="global")
    assert {line.estimator for line in preset("gaussian", thresholds="global").lines} == {"histogram"}


def test_a_rank_without_torchrun_variables_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="start the ranks with torchrun"):
        init_collective(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_collective(torch.device("cpu")).world_size == 1  # a SoloCollective
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert streamflow_main(["consume", "--ranks", "3", "--preset", "gaussian"]) == 2
    assert capsys.readouterr().err.strip() == ("streamflow consume: error: started as one of 2 ranks (WORLD_SIZE), "
                                               "so --ranks 3 does not apply")
