"""The Gaussian toy: schema, sample composition, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from streamflow.errors import ConfigError
from streamflow.events import EventBatch, GaussianToy


def collect(source: GaussianToy, chunk_size: int) -> EventBatch:
    return EventBatch.concatenate(list(source.chunks(chunk_size)))


def test_schema_and_endless() -> None:
    toy = GaussianToy(dim=3)
    assert toy.names == ("x0", "x1", "x2", "sample") and toy.n_events is None and toy.has_labels
    chunks = toy.chunks(1000)
    for expected_start in (0, 1000, 2000):
        batch = next(chunks)
        assert len(batch) == 1000 and batch.ids[0] == expected_start


def test_composition_matches_the_paper_toy() -> None:
    n = 400_000
    batch = collect(GaussianToy(n_events=n, seed=3), 50_000)
    assert len(batch) == n
    sample = batch.column("sample")
    assert set(np.unique(sample)) == {0.0, 1.0}
    reference, data = batch.labels[sample == 0], batch.labels[sample == 1]
    assert reference.sum() == 0  # the reference sample is background only
    assert abs(len(reference) / n - 0.5) < 5 * np.sqrt(0.25 / n)
    s, b = data.sum(), len(data) - data.sum()
    ratio_sigma = np.sqrt(s) / b
    assert abs(s / b - 0.1) < 5 * ratio_sigma  # signal = 10% of background in the data sample
    x = batch.features[:, :2]
    np.testing.assert_allclose(x[batch.labels == 0].mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose(x[batch.labels == 1].mean(0), 1.0, atol=0.02)
    np.testing.assert_allclose(x[batch.labels == 0].std(0), 1.0, atol=0.01)


def test_reproducible_and_chunk_size_independent() -> None:
    a = collect(GaussianToy(n_events=100_003, seed=7), 4096)
    b = collect(GaussianToy(n_events=100_003, seed=7), 70_000)
    c = collect(GaussianToy(n_events=100_003, seed=8), 4096)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.ids, np.arange(100_003, dtype=np.uint64))
    assert not np.array_equal(a.features, c.features)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"dim": 0}, "dim"), ({"signal_ratio": -1.0}, "signal_ratio"),
     ({"reference_fraction": 1.0}, "reference_fraction")],
)
def test_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GaussianToy(**kwargs)


def test_bad_chunk_size() -> None:
    with pytest.raises(ConfigError, match="chunk size"):
        next(GaussianToy().chunks(0))
