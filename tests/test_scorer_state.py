"""The scorer process's library, driven without sockets: crash recovery and resume, the merged
ledger of data-parallel ranks, the SELECTION message of a frame, and the one-process collective."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import streamflow.distributed
from streamflow.distributed import SoloCollective, weights_digest
from streamflow.events import open_source
from streamflow.events.batch import EventBatch
from streamflow.learners import AutoencoderConfig, CWoLAConfig, build_learner
from streamflow.scoring.checkpoint import load_checkpoint
from streamflow.scoring.durability import Durability
from streamflow.scoring.frame_scorer import ScorerConfig
from streamflow.scoring.rank_merge import merge_rank_views, rank_view
from streamflow.scoring.selection import selection_parts
from streamflow.scoring.stream_scorer import Counters, Intake, StreamScorer
from streamflow.stream.wire import Kind, decode
from streamflow.trigger import LineConfig

FRAME = 500
STREAM = 7


def _config() -> ScorerConfig:
    features = ("x0", "x1")
    learners = (AutoencoderConfig(name="ae", features=features, warmup_events=1000, batch_size=256),
                CWoLAConfig(name="cwola", features=features, region_feature="sample", signal_region=(0.5, 1.5),
                            sideband=(-0.5, 1.5), warmup_events=1000, batch_size=256))
    lines = tuple(LineConfig(name=c.name, learner=c.name, accept=0.05, window=1000) for c in learners)
    return ScorerConfig(learners=learners, lines=lines, device="cpu", threads=1)


def _frames(n: int) -> list[EventBatch]:
    source = open_source("gaussian", seed=5)
    return [batch for _, batch in zip(range(n), source.chunks(FRAME), strict=False)]


def _scorer(run_dir: Path, resume: bool) -> tuple[StreamScorer, Durability]:
    state = StreamScorer(_config(), SoloCollective())
    durability = Durability(run_dir / "scorer.ckpt.pt", run_dir / "scorer.journal")
    durability.start(state, resume)
    return state, durability


def _handle(state: StreamScorer, durability: Durability, seq: int, batch: EventBatch) -> None:
    """What the process loop does with a frame, less the sockets."""
    state.on_frame(batch, STREAM, seq)
    state.on_frame_done(0)
    durability.record(STREAM, seq, len(batch))


def _digest(state: StreamScorer) -> str:
    return weights_digest(learner.model for learner in state.scorer.learners.values())


def test_resume_after_a_crash_names_every_frame_lost_after_processing_and_in_flight(tmp_path: Path) -> None:
    frames = _frames(10)
    crashed, durability = _scorer(tmp_path, resume=False)
    for seq in range(3):
        _handle(crashed, durability, seq, frames[seq])
    durability.checkpoint(crashed)
    at_checkpoint = _digest(crashed)
    for seq in (3, 4):  # scored and journaled, then the process dies before its next checkpoint
        _handle(crashed, durability, seq, frames[seq])
    assert _digest(crashed) != at_checkpoint
    durability.close()  # kill -9: no checkpoint, the journal stays; frame 5 dies in the queue

    state, durability = _scorer(tmp_path, resume=True)
    assert state.stats.resumed_from_frame == 3
    assert Counters.of(state.scorer) == Counters(3, 3 * FRAME, 3 * FRAME)
    assert _digest(state) == at_checkpoint, "the learners are those of the checkpoint"
    assert state.stats.lost_after_processing == {STREAM: {3: FRAME, 4: FRAME}}
    assert durability.journal.read() == {}, "the crash window is in the checkpoint, the journal starts empty"
    saved = load_checkpoint(tmp_path / "scorer.ckpt.pt", torch.device("cpu"))
    assert saved["lost_after_processing"] == {str(STREAM): {"3": FRAME, "4": FRAME}}

    for seq in range(6, 10):
        _handle(state, durability, seq, frames[seq])
    state.end_of_stream({"frames": 10, "events": 10 * FRAME}, STREAM)
    account = state.stats.accounts[STREAM]
    assert account.processed_frames == 7 and account.processed_events == 7 * FRAME
    assert sorted(account.lost_after_processing) == [3, 4]
    assert account.lost_in_flight == [5] and account.lost_in_flight_events == FRAME
    assert account.unaccounted_frames == 0
    ledger = state.ledger(Intake(events=4 * FRAME, frames=4, rejected=0), sink=False)
    assert [(s.name, s.events) for s in ledger.stages][:3] == [
        ("received", 4 * FRAME), ("scored", 4 * FRAME), ("learned from", 4 * FRAME)], "this run's events only"
    assert ledger.details["lost_after_processing"] == {STREAM: {"frames": [3, 4], "events": 2 * FRAME}}
    durability.close()


def test_a_fresh_start_empties_a_stale_journal_and_ignores_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "scorer.journal").write_text(f"{STREAM} 0 {FRAME}\n")
    state, durability = _scorer(tmp_path, resume=False)
    assert durability.journal.read() == {} and state.stats.resumed_from_frame is None
    durability.close()


def _rank_views(ranks: list[StreamScorer], sent_frames: int) -> list[dict]:
    views = []
    for state in ranks:
        state.end_of_stream({"frames": sent_frames, "events": sent_frames * FRAME, "receivers": 2}, STREAM)
        frames_in = state.stats.frames
        ledger = state.ledger(Intake(events=frames_in * FRAME, frames=frames_in, rejected=0), sink=False)
        views.append(rank_view(state, ledger))
    return views


def test_merged_ledger_of_two_rank_views_accounts_for_the_whole_stream() -> None:
    frames = _frames(7)
    ranks = [StreamScorer(_config(), SoloCollective()) for _ in range(2)]
    for seq, batch in enumerate(frames[:6]):  # rank 0 gets the even frames, rank 1 the odd ones; frame 6 is lost
        ranks[seq % 2].on_frame(batch, STREAM, seq)
    views = _rank_views(ranks, sent_frames=7)
    merged = merge_rank_views(views, ranks[0].ledger(Intake(3 * FRAME, 3, 0), sink=False))
    assert [(s.name, s.events) for s in merged.stages][:2] == [("received", 6 * FRAME), ("scored", 6 * FRAME)]
    assert merged.stages[0].note == f"rank 0: {3 * FRAME:,d}; rank 1: {3 * FRAME:,d}"
    assert merged.details["ranks"] == 2 and merged.details["duplicate_frames"] == 0
    assert merged.details["missing_frames"] == {}, "each rank's gaps are the other's frames"
    stream = merged.details["streams"][STREAM]
    assert stream["processed_frames"] == 6 and stream["processed_events"] == 6 * FRAME
    assert stream["lost_in_flight"] == {"frames": [6], "events": FRAME} and stream["unaccounted_frames"] == 0
    # Two scorers that learnt apart are not one model: the merged ledger says so.
    assert merged.details["weights_identical"] is False and "weights identical on all ranks: NO" in merged.notes[-1]
    assert [line["seen"] for line in merged.details["lines"]] == [
        sum(r.scorer.menu.stats()[i].seen for r in ranks) for i in range(2)]

    ranks[1].on_frame(frames[4], STREAM, 4)  # a frame that reached both ranks
    merged = merge_rank_views(_rank_views(ranks, sent_frames=7), ranks[0].ledger(Intake(0, 0, 0), sink=False))
    assert merged.details["duplicate_frames"] == 1 and "frames seen by more than one rank: 1" in merged.notes[-1]


def test_selection_message_holds_the_accepted_events_their_bits_and_every_lines_score() -> None:
    config = _config()
    state = StreamScorer(config, SoloCollective())
    batch = _frames(4)
    for seq, frame in enumerate(batch[:3]):  # fill the windows so the lines accept
        state.on_frame(frame, STREAM, seq)
    result = state.on_frame(batch[3], STREAM, 3)
    parts, accepted = selection_parts(batch[3], result, config.lines, seq=3, stream_id=STREAM, send_ns=123)
    chosen = np.flatnonzero(result.selection.accept)
    assert accepted == len(chosen) > 0
    msg = decode([bytes(memoryview(p)) for p in parts])
    assert msg.kind == Kind.SELECTION and (msg.seq, msg.stream_id, msg.send_ns) == (3, STREAM, 123)
    assert msg.batch is not None and np.array_equal(msg.batch.ids, batch[3].ids[chosen])
    assert np.array_equal(msg.bits, result.selection.bits[chosen])
    assert msg.line_names == ("ae", "cwola")
    expected = np.column_stack([result.scores["ae"][chosen], result.scores["cwola"][chosen]])
    np.testing.assert_array_equal(msg.scores, expected.astype(np.float32))


def test_the_solo_collective_is_the_identity_and_never_reaches_torch_distributed(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a process alone called a torch.distributed collective")

    for name in ("all_reduce", "all_gather", "barrier"):
        monkeypatch.setattr(streamflow.distributed.dist, name, refuse)
    monkeypatch.setattr(streamflow.distributed, "average_gradients", refuse)
    solo = SoloCollective()
    tensor = torch.arange(3.0)
    assert solo.sum_(tensor) is tensor and solo.max_(tensor) is tensor
    assert solo.totals([2, 3]) == [2.0, 3.0] and solo.largest(4) == 4
    assert solo.gather_json({"a": (1, 2)}) == [{"a": [1, 2]}], "a gather of one, through JSON as across ranks"
    y = torch.randn(100, 3, dtype=torch.float64)
    n, mean, m2 = solo.pooled_moments(y, torch.zeros(3, dtype=torch.float64))
    assert n == 100
    torch.testing.assert_close(mean, y.mean(0))
    torch.testing.assert_close(m2, ((y - y.mean(0)) ** 2).sum(0))
    solo.barrier()
    learner = build_learner(_config().learners[1], "cpu")  # learns alone without any collective call
    batch = _frames(1)[0]
    learner.bind(batch.names)
    for _ in range(3):
        stats = learner.learn(torch.from_numpy(batch.features))
    assert stats["steps"] > 0 and np.isfinite(stats["loss"])


def test_counters_are_named_and_add_up() -> None:
    base = Counters(frames=5, events_scored=10, events_learned=8)
    assert (base + Counters(1, 2, 3)) - base == Counters(1, 2, 3)
    assert Counters.from_dict(base.to_dict()) == base
