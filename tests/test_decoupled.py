"""Learning decoupled from scoring (ScorerConfig.learn, streamflow.scoring.decoupled).

What a user relies on: ``learn = "all"`` is the synchronous scorer exactly (same scores,
ledger and final weights as scoring then learning every frame by hand); with a learner
thread every event is still scored, and only by models that have not learnt from it;
fixed fractions learn reproducible per-learner subsets (and resume with the same subsets); the
adaptive budget keeps learning within the time it has; the ledger and the telemetry
say, per learner, how many events it scored and learnt from.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from streamflow.config import from_dict
from streamflow.distributed import SoloCollective, weights_digest
from streamflow.errors import ConfigError
from streamflow.learners import build_learner
from streamflow.scoring.decoupled import MIN_FRACTION, water_fill
from streamflow.scoring.frame_scorer import FrameScorer, ScorerConfig
from streamflow.scoring.stream_scorer import Intake, StreamScorer
from tests.helpers import streamflow
from tests.test_cathode import frames as lhco_frames
from tests.test_scorer import FRAME, frames, make_scorer

N_FRAMES = 8


def config(learn: object = "all", **changes: object) -> ScorerConfig:
    return dataclasses.replace(make_scorer().config, learn=learn, **changes)


def digest(scorer: FrameScorer) -> str:
    return weights_digest(learner.model for learner in scorer.learners.values())


def stream_run(learn: object, n_frames: int = N_FRAMES, **changes: object) -> tuple[StreamScorer, list[dict]]:
    """A StreamScorer over the toy stream to its end (flushed); returns it and every frame's scores."""
    state = StreamScorer(config(learn, **changes), SoloCollective())
    scores = []
    for seq, batch in enumerate(frames(n_frames)):
        scores.append(state.on_frame(batch, 0, seq).scores)
    state.flush()
    return state, scores


def ledger_of(state: StreamScorer) -> dict[str, int]:
    ledger = state.ledger(Intake(state.stats.events, state.stats.frames, 0), sink=False)
    return {stage.name: stage.events for stage in ledger.stages}


def test_learn_all_is_the_synchronous_scorer_scores_ledger_and_weights() -> None:
    state, scores = stream_run("all")
    # Today's scorer by hand: every learner scores the frame, then every learner learns from all of it.
    learners = {c.name: build_learner(c, "cpu") for c in config().learners}
    for k, batch in enumerate(frames(N_FRAMES)):
        for learner in learners.values():
            learner.bind(batch.names)
        x = torch.from_numpy(batch.features.copy())
        for name, learner in learners.items():
            np.testing.assert_array_equal(scores[k][name], learner.score(x).numpy(), err_msg=f"{name}, frame {k}")
        for learner in learners.values():
            learner.learn(x)
    assert digest(state.scorer) == weights_digest(learner.model for learner in learners.values())
    events = N_FRAMES * FRAME
    assert ledger_of(state) == {"received": events, "scored": events, "learned from": events, "accepted":
                                state.stats.accepted, "sent to sink": 0}
    assert state.scorer.decoupled is None  # no thread, no copies: the scorer of before


def test_a_learner_thread_learning_every_event_ends_with_the_synchronous_weights_and_ledger() -> None:
    synchronous, _ = stream_run("all")
    threaded, _ = stream_run(1.0)
    assert digest(threaded.scorer) == digest(synchronous.scorer)
    assert ledger_of(threaded) == ledger_of(synchronous) | {"accepted": threaded.stats.accepted}
    assert threaded.scorer.learned_by() == dict.fromkeys(threaded.scorer.learners, N_FRAMES * FRAME)
    for name in threaded.scorer.learners:  # the telemetry's learning counts: every step, to the last frame's
        assert threaded.learn_totals[name]["steps"] == synchronous.learn_totals[name]["steps"] > 0, name
        assert threaded.learn_totals[name]["events"] == synchronous.learn_totals[name]["events"], name


def reference_scores(n_frames: int) -> list[list[dict[str, np.ndarray]]]:
    """[j][k]: frame k's scores by the synchronous models after learning frames 0..j-1."""
    scorer = FrameScorer(config("all"))
    batches = frames(n_frames)
    scorer.bind(batches[0].names)
    table = []
    for j in range(n_frames + 1):
        with torch.no_grad():
            table.append([{name: learner.score(torch.from_numpy(b.features.copy())).numpy()
                           for name, learner in scorer.learners.items()} for b in batches])
        if j < n_frames:
            scorer.process(batches[j])
    return table


@pytest.mark.parametrize("refresh_frames", [1, 3])
def test_with_a_learner_thread_no_event_is_scored_by_a_model_that_learnt_it(refresh_frames: int) -> None:
    _, scores = stream_run(1.0, refresh_frames=refresh_frames)
    table = reference_scores(N_FRAMES)
    versions = []
    for k, frame_scores in enumerate(scores):
        same = [j for j in range(N_FRAMES + 1)
                if all(np.array_equal(frame_scores[n], table[j][k][n], equal_nan=True) for n in frame_scores)]
        assert same and max(same) <= k, f"frame {k} scored by the models after frames {same}"
        versions.append(max(same))
    assert versions[-1] > 0  # the scoring copies were refreshed as learning went on
    assert versions == sorted(versions)


def test_fixed_fractions_learn_a_reproducible_uniform_subset_of_their_own_per_learner() -> None:
    first, _ = stream_run(0.5)
    again, _ = stream_run(0.5)
    assert digest(first.scorer) == digest(again.scorer)
    learned = first.scorer.learned_by()
    assert learned == again.scorer.learned_by()
    events = N_FRAMES * FRAME
    for name, n in learned.items():  # binomial(8000, 0.5): sd 45 events
        assert abs(n - events / 2) < 5 * np.sqrt(events / 4), name
    assert len(set(learned.values())) > 1  # each learner draws its own subset
    figures = first.learning()
    assert {name: f["learned_from"] for name, f in figures.items()} == learned
    assert all(f["scored"] == events for f in figures.values())


def test_a_checkpoint_of_a_learner_thread_resumes_its_subsets() -> None:
    batches = frames(N_FRAMES)
    straight = FrameScorer(config(0.5))
    for batch in batches:
        straight.process(batch)
    straight.flush()
    first = FrameScorer(config(0.5))
    for batch in batches[:3]:
        first.process(batch)
    first.flush()  # a checkpoint does not wait for the queue: learn from what was offered first
    state = first.state_dict()
    first.close()
    resumed = FrameScorer(config(0.5))
    resumed.load_state_dict(state)
    for batch in batches[3:]:
        resumed.process(batch)
    resumed.flush()
    # The same events learnt (the learners' own minibatch order is not checkpointed, so weights may differ).
    assert resumed.learned_by() == straight.learned_by()
    assert resumed.decoupled is not None and straight.decoupled is not None
    assert resumed.decoupled.state_dict() == straight.decoupled.state_dict()


def test_the_budget_scores_every_event_and_learns_what_it_has_time_for() -> None:
    state, scores = stream_run("budget", n_frames=12)
    assert state.scorer.events_scored == 12 * FRAME
    assert all(np.isfinite(s["ae"]).any() for s in scores)
    learning = state.learning()
    for name, figures in learning.items():
        assert figures["scored"] == 12 * FRAME
        assert 0 < figures["learned_from"] <= figures["scored"], name
    record = state.telemetry(0, 0.0)
    assert record.learn == "budget"
    assert {name: stats["learned_from"] for name, stats in record.learners.items()} == state.scorer.learned_by()
    ledger = state.ledger(Intake(12 * FRAME, 12, 0), sink=False)
    assert ledger.details["learning"]["policy"] == "budget"
    assert "learn = 'budget'" in next(s.note for s in ledger.stages if s.name == "learned from")


def test_water_filling_gives_cheap_learners_everything_and_splits_the_rest_evenly() -> None:
    costs = {"ae": 1e-6, "flow": 2e-5, "cathode": 4e-5}
    budget = 1.5e-5  # learner-thread seconds per input event
    fractions = water_fill(costs, budget)
    assert fractions["ae"] == 1.0
    spent = {name: fractions[name] * cost for name, cost in costs.items()}
    assert sum(spent.values()) == pytest.approx(budget)
    assert spent["flow"] == pytest.approx(spent["cathode"])  # equal time shares of what the cheap one left
    assert water_fill(costs, 1.0) == dict.fromkeys(costs, 1.0)
    assert water_fill(costs, 0.0) == dict.fromkeys(costs, MIN_FRACTION)
    assert water_fill({"new": 0.0}, 0.0) == {"new": 1.0}  # unmeasured: learn everything


def test_cathode_learns_and_scores_through_a_learner_thread() -> None:
    cathode = from_dict(ScorerConfig, {
        "device": "cpu", "learn": 1.0,
        "learners": [{"kind": "cathode", "name": "cathode", "warmup_events": 2000, "batch_size": 512}],
        "lines": [{"name": "cathode", "learner": "cathode", "accept": 0.05, "window": 2000}]})
    synchronous = FrameScorer(dataclasses.replace(cathode, learn="all"))
    threaded = FrameScorer(cathode)
    for batch in lhco_frames(6 * 4096):
        synchronous.process(batch)
        result = threaded.process(batch)
        assert result.scores["cathode"].shape == (len(batch),)
    synchronous.flush()
    threaded.flush()
    assert digest(threaded) == digest(synchronous)


def test_data_parallel_ranks_refuse_a_learner_thread() -> None:
    two_ranks = SoloCollective(world_size=2)  # as a rank of two sees its collective
    with pytest.raises(ConfigError, match="data-parallel ranks learn every event together"):
        FrameScorer(config("budget")).distribute(two_ranks)


@pytest.mark.parametrize("policy", ["sometimes", 0, 0.0, 1.5, -0.1, True])
def test_a_bad_learning_policy_is_a_config_error(policy: object) -> None:
    with pytest.raises(ConfigError, match="learn must be 'all', 'budget' or a fraction in"):
        config(policy)


def test_consume_with_ranks_and_a_learner_thread_is_a_one_line_error() -> None:
    result = streamflow("consume", "--ranks", "2", "--learn", "budget", "--preset", "gaussian")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--learn all" in result.stderr


def test_streamflow_run_learns_with_the_budget_unless_told_otherwise(tmp_path: Path) -> None:
    from streamflow.cli import run
    from streamflow.cli.main import build_parser

    def built(*argv: str) -> object:
        return run.build_config(build_parser("run").parse_args(["run", *argv])).scorer.learn

    assert built() == "budget"
    assert built("--learn", "all") == "all"
    toml = tmp_path / "run.toml"
    toml.write_text('[scorer]\nlearn = "all"\n\n[[scorer.learners]]\nkind = "autoencoder"\nname = "ae"\n')
    assert built("--config", str(toml)) == "all"


def test_summary_json_carries_each_learners_scored_and_learnt_events() -> None:
    from streamflow.ops.summary import learning

    state, _ = stream_run(0.5, n_frames=4)
    final = state.telemetry(0, 0.0).to_json()
    block = learning(final)
    assert block["policy"] == "0.5"
    assert {name: f["learned_from"] for name, f in block["learners"].items()} == state.scorer.learned_by()
    assert all(f["scored"] == 4 * FRAME and 0.4 < f["learned_fraction"] < 0.6 for f in block["learners"].values())


@pytest.mark.parametrize("stopped", [False, True])
def test_a_stopped_scorer_leaves_the_queued_frames_unlearnt_and_counts_them(stopped: bool) -> None:
    scorer = FrameScorer(config("budget"))
    thread = scorer.decoupled
    assert thread is not None
    with thread.paused():  # the learner thread takes frame 0 and waits; 1 and 2 queue; 3 and 4 find it full
        for batch in frames(5):
            scorer.process(batch)
        while thread._queue.qsize() < 2:
            time.sleep(0.01)
    scorer.flush(stopped=stopped)
    for name, counts in thread.counts.items():
        learnt_frames = counts.offered // FRAME
        assert counts.offered + counts.skipped == 5 * FRAME, name
        assert counts.learned == counts.offered  # costs unknown: every offered frame learnt whole
        assert learnt_frames == 3 if not stopped else 1 <= learnt_frames <= 2, name
    scorer.close()


def test_a_checkpoint_of_the_synchronous_scorer_resumes_with_a_learner_thread() -> None:
    synchronous = FrameScorer(config("all"))
    for batch in frames(3):
        synchronous.process(batch)
    threaded = FrameScorer(config("budget"))
    threaded.load_state_dict(synchronous.state_dict())
    assert threaded.learned_by() == dict.fromkeys(threaded.learners, 3 * FRAME)  # it learnt every event it scored
    assert digest(threaded) == digest(synchronous)
    result = threaded.process(frames(4)[3])
    assert np.isfinite(result.scores["ae"]).any()
    threaded.close()
