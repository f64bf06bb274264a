"""A flow in the bounded frame draws samples inside the physical range; the same flow in the
identity frame does not (negative masses, negative tau ratios)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamflow.events import EventBatch, open_source
from streamflow.events.coordinates import physical_range
from streamflow.learners import CATHODE_FEATURES, FlowConfig, FlowLearner

SAMPLES = 100_000


@pytest.fixture(scope="module")
def events() -> EventBatch:
    return next(iter(open_source("synthetic", signal_fraction=0.01, seed=3).chunks(12_000)))


def trained(coordinates: str, events: EventBatch) -> FlowLearner:
    torch.manual_seed(0)
    flow = FlowLearner(FlowConfig(name=f"flow_{coordinates}", features=CATHODE_FEATURES, context="mjj",
                                  coordinates=coordinates, warmup_events=2000, batch_size=256, steps_per_frame=2))
    flow.bind(events.names)
    x = torch.from_numpy(events.features)
    for start in range(0, len(events), 3000):
        flow.learn(x[start:start + 3000])
    return flow


def outside(samples: np.ndarray) -> int:
    """Samples with any feature outside its physical range (or not finite)."""
    bad = ~np.isfinite(samples).all(axis=1)
    for j, name in enumerate(CATHODE_FEATURES):
        low, high = physical_range(name)
        bad |= (samples[:, j] < low) | (samples[:, j] > high)
    return int(bad.sum())


def test_bounded_frame_samples_are_all_physical_and_identity_samples_are_not(events: EventBatch) -> None:
    rng = np.random.default_rng(0)
    mjj = rng.choice(events.column("mjj"), SAMPLES)
    bounded = trained("bounded", events)
    samples = bounded.sample(SAMPLES, mjj)
    assert samples.shape == (SAMPLES, len(CATHODE_FEATURES))
    assert outside(samples) == 0
    coordinates = bounded.inputs.coordinates
    low, high = coordinates.low.numpy(), coordinates.high.numpy()  # type: ignore[attr-defined]
    assert ((samples >= low.astype(np.float32)) & (samples <= high.astype(np.float32))).all()
    assert float(np.median(samples[:, 0])) == pytest.approx(float(np.median(events.column("mjmin"))), rel=0.3)
    # The control: the same flow in the identity frame puts events where none can be.
    assert outside(trained("identity", events).sample(SAMPLES, mjj)) > 0


def test_the_bounded_range_survives_a_checkpoint(events: EventBatch) -> None:
    flow = trained("bounded", events)
    again = FlowLearner(flow.config)
    again.bind(events.names)
    again.load_state_dict(flow.state_dict())
    x = torch.from_numpy(events.features[:500])
    torch.testing.assert_close(again.score(x), flow.score(x))
