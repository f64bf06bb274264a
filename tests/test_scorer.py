"""FrameScorer: test-then-train per frame, and in the deferred mode (learn_events > 0).

What a physicist relies on: a score the scorer reports for an event (and the trigger
decision made from it) comes from models that have not yet learnt from that event,
so the accept rates and efficiencies measured on the stream are held-out figures.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from streamflow.events import GaussianToy
from streamflow.events.batch import EventBatch
from streamflow.learners import learner_config
from streamflow.scoring.frame_scorer import FrameScorer, ScorerConfig
from streamflow.trigger import LineConfig

FEATURES = ["x0", "x1"]
REFERENCE = {"feature": "sample", "low": -0.5, "high": 0.5}
SMALL = {"features": FEATURES, "warmup_events": 500, "batch_size": 256}
LEARNERS = (
    {"kind": "cwola", "name": "cwola", "coordinates": "normal_cdf", "region_feature": "sample",
     "signal_region": [0.5, 1.5], "sideband": [-0.5, 1.5], **SMALL},
    {"kind": "flow", "name": "flow", "coordinates": "tanh_shift", "train_where": REFERENCE, "hidden": 16, **SMALL},
    {"kind": "autoencoder", "name": "ae", "train_where": REFERENCE, **SMALL},
)  # fmt: skip
FRAME = 1000


def make_scorer(learn_events: int = 0) -> FrameScorer:
    learners = tuple(learner_config(table) for table in LEARNERS)
    lines = tuple(LineConfig(name=c.name, learner=c.name, accept=0.05, window=2000, warmup=500) for c in learners)
    return FrameScorer(ScorerConfig(learners=learners, lines=lines, device="cpu", learn_events=learn_events))


def frames(n_frames: int, seed: int = 3) -> list[EventBatch]:
    return list(GaussianToy(seed=seed, n_events=n_frames * FRAME).chunks(FRAME))


def scores_of(learners: dict, batch: EventBatch) -> dict[str, np.ndarray]:
    x = torch.from_numpy(batch.features)
    return {name: learner.score(x).numpy() for name, learner in learners.items()}


def record_learning(scorer: FrameScorer) -> list[np.ndarray]:
    """Wrap every learner's learn() to log the events (feature rows) of each step; returns the log."""
    steps: list[np.ndarray] = []
    first = next(iter(scorer.learners))
    for name, learner in scorer.learners.items():
        def learn(x: torch.Tensor, _learn=learner.learn, _log=name == first) -> dict[str, float]:
            if _log:  # every learner gets the same x: log it once
                steps.append(x.numpy().copy())
            return _learn(x)
        learner.learn = learn  # type: ignore[method-assign]
    return steps


def test_process_returns_the_scores_of_the_models_before_the_frame_update() -> None:
    scorer = make_scorer()
    scorer.bind(GaussianToy().names)
    for i, batch in enumerate(frames(4)):
        before = copy.deepcopy(scorer.learners)
        expected = scores_of(before, batch)
        result = scorer.process(batch)
        after = scores_of(scorer.learners, batch)
        for name in scorer.learners:
            np.testing.assert_array_equal(result.scores[name], expected[name], err_msg=f"{name}, frame {i}")
            # The frame was learnt from after scoring: every model now scores it differently.
            finite = np.isfinite(expected[name])
            assert finite.sum() > FRAME // 3, name
            assert not np.allclose(after[name][finite], expected[name][finite]), f"{name} did not learn in frame {i}"
            assert result.learn_stats[name]["steps"] > 0
        # The trigger decided on those same pre-update scores.
        assert result.selection.accept.shape == (FRAME,)
    assert scorer.events_scored == scorer.events_learned == 4 * FRAME


@pytest.mark.parametrize("learn_events", [2500, 4000])
def test_deferred_learning_steps_only_on_events_already_scored(learn_events: int) -> None:
    scorer = make_scorer(learn_events)
    scorer.bind(GaussianToy().names)
    steps = record_learning(scorer)
    scored: list[np.ndarray] = []
    learnt_so_far = n_steps = 0
    for i, batch in enumerate(frames(9)):
        before = copy.deepcopy(scorer.learners)
        result = scorer.process(batch)
        for name, expected in scores_of(before, batch).items():
            np.testing.assert_array_equal(result.scores[name], expected, err_msg=f"{name}, frame {i}")
        scored.append(batch.features)
        # A step happens once learn_events scored events wait, and takes all of them, in stream order.
        waiting = (i + 1) * FRAME - learnt_so_far
        if waiting >= learn_events:
            n_steps += 1
            np.testing.assert_array_equal(steps[-1], np.concatenate(scored)[learnt_so_far:])
            assert set(result.learn_stats) == set(scorer.learners)
            learnt_so_far += waiting
        else:
            assert result.learn_stats == {}, f"frame {i}: a step before {learn_events} events had been scored"
        assert len(steps) == n_steps
        assert scorer.events_learned == learnt_so_far <= scorer.events_scored == (i + 1) * FRAME
    # The end of the stream learns from what is still waiting; nothing is learnt twice.
    scorer.flush()
    assert scorer.events_learned == scorer.events_scored == 9 * FRAME
    np.testing.assert_array_equal(np.concatenate(steps), np.concatenate(scored))
    assert scorer.flush() == {}
