"""The LHCO-like generator: schema consistency, reproducibility, and its marginals vs the real file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamflow.errors import ConfigError
from streamflow.events import LHCO_NAMES, EventBatch, SyntheticLHCO, open_source


def read_all(source, chunk_size: int = 65_536) -> EventBatch:
    return EventBatch.concatenate(list(source.chunks(chunk_size)))


@pytest.fixture(scope="module")
def synthetic() -> EventBatch:
    return read_all(SyntheticLHCO(signal_fraction=0.05, seed=11, n_events=300_000))


@pytest.fixture(scope="module")
def real(features_file: Path) -> EventBatch:
    return read_all(open_source(str(features_file)), 60_000)


def test_columns_are_consistent(synthetic: EventBatch) -> None:
    b = synthetic
    assert b.names == LHCO_NAMES and np.isfinite(b.features).all()
    c = {n: b.column(n).astype(np.float64) for n in LHCO_NAMES}
    assert (b.features[:, :6] >= 0).all()
    np.testing.assert_allclose(c["mjmin"], np.minimum(c["mj1"], c["mj2"]), rtol=1e-6)
    np.testing.assert_allclose(c["mjmax"], np.maximum(c["mj1"], c["mj2"]), rtol=1e-6)
    np.testing.assert_allclose(c["delta_m"], c["mjmax"] - c["mjmin"], rtol=1e-5, atol=1e-3)
    light_is_j1 = c["mj1"] <= c["mj2"]
    for ratio, top, bottom in (("tau21", "tau2", "tau1"), ("tau32", "tau3", "tau2")):
        j1 = c[f"{top}_j1"] / (c[f"{bottom}_j1"] + 1e-5)
        j2 = c[f"{top}_j2"] / (c[f"{bottom}_j2"] + 1e-5)
        np.testing.assert_allclose(c[f"{ratio}_jmin"], np.where(light_is_j1, j1, j2), rtol=1e-4)
        np.testing.assert_allclose(c[f"{ratio}_jmax"], np.where(light_is_j1, j2, j1), rtol=1e-4)


def test_background_marginals_match_the_real_file(synthetic: EventBatch, real: EventBatch) -> None:
    """Quantiles of synthetic background vs the real file's background (tolerances in the message)."""
    q = [0.05, 0.25, 0.5, 0.75, 0.95]
    syn, data = synthetic.take(synthetic.labels == 0), real.take(real.labels == 0)
    for name, relative in (("mjj", 0.03), ("mjmin", 0.10), ("mjmax", 0.10), ("tau1_j1", 0.25)):
        s, r = np.quantile(syn.column(name), q), np.quantile(data.column(name), q)
        assert np.all(np.abs(s / r - 1) < relative), \
            f"{name}: synthetic {s.round(3)} vs real {r.round(3)} (±{relative:.0%})"
    for name in ("tau21_jmin", "tau21_jmax", "tau32_jmin", "tau32_jmax"):
        s, r = np.quantile(syn.column(name), q), np.quantile(data.column(name), q)
        assert np.all(np.abs(s - r) < 0.08), f"{name}: synthetic {s.round(3)} vs real {r.round(3)} (±0.08)"


def test_signal_is_the_lhco_resonance(synthetic: EventBatch, real: EventBatch) -> None:
    syn, data = synthetic.take(synthetic.labels == 1), real.take(real.labels == 1)
    assert abs(len(syn) / len(synthetic) - 0.05) < 5 * np.sqrt(0.05 * 0.95 / len(synthetic))
    for name, relative in (("mjj", 0.02), ("mjmax", 0.05), ("mjmin", 0.08)):
        s, r = np.median(syn.column(name)), np.median(data.column(name))
        assert abs(s / r - 1) < relative, f"{name} median: synthetic {s:.1f} vs real {r:.1f}"
    for name in ("tau21_jmin", "tau21_jmax"):
        s, r = np.median(syn.column(name)), np.median(data.column(name))
        assert abs(s - r) < 0.05, f"{name} median: synthetic {s:.3f} vs real {r:.3f}"
    # the resonance stands out: two-prong jets and an mjj bump in the signal region
    background = synthetic.take(synthetic.labels == 0)
    in_sr = lambda b: np.mean((b.column("mjj") > 3300) & (b.column("mjj") < 3700))  # noqa: E731
    assert in_sr(syn) > 0.6 and in_sr(background) < 0.15
    assert np.median(syn.column("tau21_jmax")) < 0.5 * np.median(background.column("tau21_jmax"))


def test_reproducible_endless_and_seeded() -> None:
    a = read_all(SyntheticLHCO(seed=3, n_events=70_000), 10_000)
    b = read_all(SyntheticLHCO(seed=3, n_events=70_000), 65_537)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.ids, np.arange(70_000, dtype=np.uint64))
    c = next(SyntheticLHCO(seed=4).chunks(1_000))
    assert not np.array_equal(a.features[:1_000], c.features)
    endless = SyntheticLHCO()
    assert endless.n_events is None
    chunks = endless.chunks(50_000)
    assert [next(chunks).ids[0] for _ in range(3)] == [0, 50_000, 100_000]


def test_signal_fraction_extremes_and_errors() -> None:
    assert next(SyntheticLHCO(signal_fraction=0.0).chunks(10_000)).labels.sum() == 0
    assert next(SyntheticLHCO(signal_fraction=1.0).chunks(10_000)).labels.all()
    with pytest.raises(ConfigError, match="signal_fraction must be in \\[0, 1\\]"):
        SyntheticLHCO(signal_fraction=1.2)
