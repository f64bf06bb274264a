"""Learners on the real LHC Olympics features (first 60k events, signal thinned to ~1%)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamflow.events import EventBatch, open_source
from streamflow.learners import TorchLearner, build_learner, learner_config

FRAME_SIZE = 5000


@pytest.fixture(scope="module")
def frames(features_file: Path) -> list[EventBatch]:
    source = open_source(str(features_file), signal_fraction=0.01, seed=0)
    return list(source.chunks(FRAME_SIZE))


def stream(learner: TorchLearner, frames: list[EventBatch]) -> tuple[list[dict[str, float]], np.ndarray]:
    """Test-then-train over the frames: the stats of every learn() and all the scores."""
    learner.bind(frames[0].names)
    history, scores = [], []
    for batch in frames:
        x = torch.from_numpy(batch.features)
        scores.append(learner.score(x).numpy())
        history.append(learner.learn(x))
    return history, np.concatenate(scores)


def column(frames: list[EventBatch], name: str) -> np.ndarray:
    return np.concatenate([b.column(name) for b in frames])


@pytest.mark.parametrize("coordinates", ["identity", "log_mass", "bounded"])
def test_conditional_flow_trains_a_pass_without_diverging(frames: list[EventBatch], coordinates: str) -> None:
    assert 0.005 < np.concatenate([b.labels for b in frames]).mean() < 0.015
    learner = build_learner(learner_config({"kind": "flow", "context": "mjj", "coordinates": coordinates}))
    assert learner.features == ("mjmin", "delta_m", "tau21_jmin", "tau21_jmax")
    history, scores = stream(learner, frames)
    if coordinates == "bounded":  # its range is fitted on the first frame it learns: that frame is not scored
        first = len(frames[0])
        assert np.isnan(scores[:first]).all()
        scores = scores[first:]
    assert np.isfinite(scores).all()
    losses = np.array([h["loss"] for h in history])
    assert np.isfinite(losses).all()
    assert sum(h["skipped"] for h in history) == 0
    # -log p(z | mjj) per event falls as the flow learns (the first frame is the warm-up).
    assert losses[-3:].mean() < losses[1:4].mean() - 0.2
    assert all(torch.isfinite(p).all() for p in learner.model.parameters())

    # Sampled back at signal-region masses, the jet masses look like the stream's there.
    mjj, mjmin = column(frames, "mjj"), column(frames, "mjmin")
    in_sr = (mjj > 3300) & (mjj < 3700)
    samples = learner.sample(int(in_sr.sum()), mjj[in_sr])
    assert np.isfinite(samples).all()
    assert np.median(samples[:, 0]) == pytest.approx(np.median(mjmin[in_sr]), rel=0.25)


@pytest.mark.parametrize("kind", ["cwola", "autoencoder"])
def test_classifier_and_autoencoder_train_a_pass(frames: list[EventBatch], kind: str) -> None:
    learner = build_learner(learner_config({"kind": kind}))
    history, scores = stream(learner, frames)
    assert all(np.isfinite(h["loss"]) and h["skipped"] == 0 for h in history)
    assert all(torch.isfinite(p).all() for p in learner.model.parameters())
    mjj = column(frames, "mjj")
    # CWoLA scores the 3.1-3.9 TeV sideband range only; the autoencoder every event.
    scored = (mjj >= 3100) & (mjj < 3900) if kind == "cwola" else np.ones(len(mjj), bool)
    assert np.array_equal(np.isfinite(scores), scored)
