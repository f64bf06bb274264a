"""Signal injection into the real features file: fraction, seeds, pools, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamflow.errors import ConfigError
from streamflow.events import LHCO_FILE_COLUMNS, EventBatch, open_source
from tests.test_events_files import write_features_table


def read_all(source, chunk_size: int = 10_000) -> EventBatch:
    return EventBatch.concatenate(list(source.chunks(chunk_size)))


@pytest.fixture(scope="module")
def everything(features_file: Path) -> EventBatch:
    return read_all(open_source(str(features_file)), 60_000)


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.0893, 0.3, 1.0])
def test_injection_reaches_the_requested_fraction(features_file: Path, everything: EventBatch, fraction: float) -> None:
    source = open_source(str(features_file), signal_fraction=fraction, seed=5)
    batch = read_all(source)
    assert len(batch) == source.n_events
    n = len(batch)
    signal = int(batch.labels.sum())
    # exact subset sizes: the fraction is right up to rounding (well inside a binomial sigma)
    assert abs(signal - fraction * n) <= max(1.0, 0.1 * np.sqrt(n * fraction * (1 - fraction)))
    # the events are the file's own, in order, with their rows as ids
    assert np.all(np.diff(batch.ids.astype(np.int64)) > 0)
    np.testing.assert_array_equal(batch.features, everything.features[batch.ids])
    np.testing.assert_array_equal(batch.labels, everything.labels[batch.ids])
    natural = 5_354 / 60_000
    if fraction <= natural:  # background all kept, signal thinned
        assert n - signal == 54_646
    else:  # signal all kept, background thinned
        assert signal == 5_354


def test_injection_is_seeded(features_file: Path) -> None:
    a = read_all(open_source(str(features_file), signal_fraction=0.01, seed=1), 4_096)
    b = read_all(open_source(str(features_file), signal_fraction=0.01, seed=1), 25_000)
    c = read_all(open_source(str(features_file), signal_fraction=0.01, seed=2))
    assert np.array_equal(a.ids, b.ids)
    signal_a, signal_c = set(a.ids[a.labels == 1].tolist()), set(c.ids[c.labels == 1].tolist())
    assert len(signal_a) == len(signal_c) and signal_a != signal_c


def test_standard_lhco_injection(features_file: Path) -> None:
    # 1,000 signal per 1,000,000 background, scaled to this file's background
    source = open_source(str(features_file), signal_fraction=1_000 / 1_001_000)
    assert source.n_signal == round(54_646 * 1_000 / 1_000_000)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_fraction_out_of_range(features_file: Path, fraction: float) -> None:
    with pytest.raises(ConfigError, match="signal fraction must be in \\[0, 1\\]"):
        open_source(str(features_file), signal_fraction=fraction)


def test_fraction_of_an_unlabelled_file(tmp_path: Path, features_file: Path) -> None:
    import h5py

    with h5py.File(features_file, "r") as f:
        values = f["df/block0_values"][:200, :14]
    path = write_features_table(tmp_path / "blackbox.h5", values, LHCO_FILE_COLUMNS)
    with pytest.raises(ConfigError, match="blackbox.h5: a signal fraction needs truth labels"):
        open_source(str(path), signal_fraction=0.01)


def test_fraction_with_no_signal_in_the_file(tmp_path: Path, features_file: Path) -> None:
    import h5py

    with h5py.File(features_file, "r") as f:
        values = f["df/block0_values"][:200]
    values = values[values[:, 14] == 0]
    path = write_features_table(tmp_path / "background.h5", values, LHCO_FILE_COLUMNS + ("label",))
    with pytest.raises(ConfigError, match="no signal events to inject"):
        open_source(str(path), signal_fraction=0.01)
    assert open_source(str(path), signal_fraction=0.0).n_events == len(values)


def test_injection_with_loop(features_file: Path) -> None:
    source = open_source(str(features_file), signal_fraction=0.01, loop=True)
    chunks = source.chunks(50_000)
    first, second = next(chunks), next(chunks)
    ids = np.concatenate([first.ids, second.ids])
    assert np.all(np.diff(ids.astype(np.int64)) > 0) and ids[-1] >= 60_000  # into pass 1, ids pass * 60000 + row
