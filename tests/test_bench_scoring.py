"""The scoring-path variants of bench.scoring compute the scores of the current path: inference_mode bit for bit."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench import hotpaths, scoring
from streamflow.learners import FlowLearner


def test_inference_mode_gives_the_scores_of_the_no_grad_path_bit_for_bit() -> None:
    batch = hotpaths.lhco_frames(2048, 1, seed=2)[0]
    frame = batch.features.copy()
    frame[::97, batch.names.index("mjmin")] = np.nan  # events with a bad input score NaN on both paths
    x = torch.from_numpy(frame)
    for config in hotpaths.network_learners():
        learner = hotpaths.warm_learner(config, 2048, torch.device("cpu"))
        scores = learner.score(x)
        with torch.inference_mode():
            variant = learner.evaluate(x)
        assert torch.equal(torch.isnan(variant), torch.isnan(scores)) and torch.isnan(scores[::97]).all()
        assert torch.equal(variant.nan_to_num(0.0), scores.nan_to_num(0.0)), config.name
        assert torch.isfinite(scores).any()  # (CWoLA scores only its signal region: NaN elsewhere)


def test_every_variant_is_timed_and_gives_the_old_paths_scores() -> None:
    rows = scoring.variants(1024, torch.device("cpu"), rounds=1, compile_too=False)
    learners = [c.name for c in hotpaths.network_learners()]
    assert [(r.learner, r.variant) for r in rows] == [
        *((name, "inference_mode") for name in learners), ("+".join(scoring.PAIR), "batched flows")]
    for row in rows:
        assert row.max_diff < 1e-4, row  # the batched flows within float32 rounding; inference_mode exact
        assert math.isfinite(row.ratio) and row.ratio > 0
        assert row.events_per_s > 0 and row.baseline_events_per_s > 0
    assert all(r.max_diff == 0.0 for r in rows if r.variant == "inference_mode")


def test_batched_flows_refuse_an_unconditional_flow() -> None:
    config = next(c for c in hotpaths.network_learners() if c.name == scoring.PAIR[0])
    with pytest.raises(ValueError, match="conditional flows"):
        scoring.BatchedFlows([FlowLearner(replace(config, context=None))])
