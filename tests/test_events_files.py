"""LHCO file sources on the real files: counts, derived features, chunking, and every error."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from streamflow.errors import ConfigError, SourceError
from streamflow.events import LHCO_FILE_COLUMNS, LHCO_NAMES, EventBatch, lhco_features, lhco_raw, open_source


def read_all(source, chunk_size: int) -> EventBatch:
    return EventBatch.concatenate(list(source.chunks(chunk_size)))


def write_features_table(path: Path, values: np.ndarray, columns: tuple[str, ...], key: str = "df") -> Path:
    """A pandas "fixed" store as the official LHCO features file has it, written with h5py."""
    with h5py.File(path, "w") as f:
        group = f.create_group(key)
        group.attrs["pandas_type"] = np.bytes_("frame")
        names = np.array([c.encode() for c in columns])
        group["axis0"] = names
        group["axis1"] = np.arange(len(values), dtype=np.int64)
        group["block0_items"] = names
        group["block0_values"] = values.astype(np.float64)
    return path


@pytest.fixture(scope="module")
def real_values(features_file: Path) -> np.ndarray:
    with h5py.File(features_file, "r") as f:
        return f["df/block0_values"][()]


def test_features_file_counts_and_mjj(features_file: Path, real_values: np.ndarray) -> None:
    source = open_source(str(features_file))
    assert source.names == LHCO_NAMES and source.has_labels
    assert source.n_events == 60_000 and source.n_nonfinite_dropped == 0
    batch = read_all(source, 8192)
    assert len(batch) == 60_000 and int(batch.labels.sum()) == 5_354
    assert np.array_equal(batch.ids, np.arange(60_000, dtype=np.uint64))
    # mjj of the two jets, component by component, in float64
    v = real_values
    px1, py1, pz1, m1, px2, py2, pz2, m2 = (v[:, i] for i in (0, 1, 2, 3, 7, 8, 9, 10))
    e1 = np.sqrt(px1**2 + py1**2 + pz1**2 + m1**2)
    e2 = np.sqrt(px2**2 + py2**2 + pz2**2 + m2**2)
    mjj = np.sqrt((e1 + e2) ** 2 - (px1 + px2) ** 2 - (py1 + py2) ** 2 - (pz1 + pz2) ** 2)
    np.testing.assert_allclose(batch.column("mjj"), mjj, rtol=1e-6)
    assert 1500 < batch.column("mjj").min()
    assert np.median(batch.column("mjj")[batch.labels == 1]) == pytest.approx(3500, rel=0.03)


def test_features_file_derived_columns(features_file: Path, real_values: np.ndarray) -> None:
    batch = read_all(open_source(str(features_file)), 60_000)
    v = real_values
    m = np.clip(v[:, [3, 10]], 0, None)
    assert (batch.features[:, 1:6] >= 0).all()  # tiny negative masses in the file are clipped
    np.testing.assert_allclose(batch.column("mjmin"), m.min(axis=1), rtol=1e-6)
    np.testing.assert_allclose(batch.column("mjmax"), m.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(batch.column("delta_m"), m.max(axis=1) - m.min(axis=1), rtol=1e-5, atol=1e-3)
    heavier_is_j1 = m[:, 0] > m[:, 1]
    tau21_j1 = v[:, 5] / (v[:, 4] + 1e-5)
    tau21_j2 = v[:, 12] / (v[:, 11] + 1e-5)
    np.testing.assert_allclose(batch.column("tau21_jmax"), np.where(heavier_is_j1, tau21_j1, tau21_j2), rtol=1e-6)
    np.testing.assert_allclose(batch.column("tau21_jmin"), np.where(heavier_is_j1, tau21_j2, tau21_j1), rtol=1e-6)
    tau32_j2 = v[:, 13] / (v[:, 12] + 1e-5)
    np.testing.assert_allclose(batch.column("tau32_jmin")[heavier_is_j1], tau32_j2[heavier_is_j1], rtol=1e-6)
    np.testing.assert_allclose(batch.column("tau1_j2"), v[:, 11], rtol=1e-6)
    assert np.isfinite(batch.features).all()  # tau1 = 0 occurs in this file


@pytest.mark.parametrize("chunk_size", [1, 999, 7_000, 100_000])
def test_chunked_iteration_covers_every_row_once(features_file: Path, monkeypatch, chunk_size: int) -> None:
    monkeypatch.setattr(lhco_features, "READ_ROWS", 7_919)  # several reads, not aligned with the chunks
    source = open_source(str(features_file))
    if chunk_size == 1:  # one event at a time is slow in Python: check the first reads only
        sizes = [len(b) for _, b in zip(range(20_000), source.chunks(1))]
        assert set(sizes) == {1}
        return
    chunks = list(source.chunks(chunk_size))
    assert all(len(c) == chunk_size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk_size
    ids = np.concatenate([c.ids for c in chunks])
    assert np.array_equal(ids, np.arange(60_000, dtype=np.uint64))


def test_raw_file(raw_file: Path, monkeypatch) -> None:
    monkeypatch.setattr(lhco_raw, "READ_ROWS", 300)
    source = open_source(str(raw_file))
    assert source.n_events == 1_000 and source.has_labels and len(source.names) == 2_100
    assert source.names[:4] == ("pt_0", "eta_0", "phi_0", "pt_1") and source.names[-1] == "phi_699"
    assert source.label_counts() == (907, 93)
    chunks = list(source.chunks(128))
    batch = EventBatch.concatenate(chunks)
    assert len(batch) == 1_000 and int(batch.labels.sum()) == 93
    assert np.array_equal(batch.ids, np.arange(1_000, dtype=np.uint64))
    with h5py.File(raw_file, "r") as f:
        first = f["df/block0_values"][:2]
    np.testing.assert_allclose(batch.features[:2], first[:, :2100].astype(np.float32))
    pt = batch.features[:, 0::3]
    assert (pt >= 0).all() and (pt[:, 0] > 0).all()


def test_raw_file_cannot_give_lhco_features(raw_file: Path) -> None:
    with pytest.raises(SourceError, match="raw particle file.*reconstruction"):
        open_source(str(raw_file), features="lhco")
    with pytest.raises(SourceError, match="jet features, not the particles"):
        open_source(str(raw_file).replace("events_anomalydetection_tiny.h5", "lhco_rnd_first60k.features.h5"),
                    features="raw")  # fmt: skip


def test_loop_replays_with_new_ids(raw_file: Path) -> None:
    source = open_source(str(raw_file), loop=True)
    assert source.n_events is None
    chunks = source.chunks(700)
    batches = [next(chunks) for _ in range(4)]  # 2,800 events: passes 0, 1, 2
    ids = np.concatenate([b.ids for b in batches])
    assert np.array_equal(ids, np.arange(2_800, dtype=np.uint64))  # pass * 1000 + row
    np.testing.assert_array_equal(batches[1].features[300:], batches[0].features[:400])  # pass 1 starts at row 0


def test_nonfinite_rows_are_dropped_and_counted(tmp_path: Path, real_values: np.ndarray) -> None:
    values = real_values[:500].copy()
    values[[3, 10, 11, 400], [0, 3, 12, 14]] = [np.nan, np.inf, -np.inf, np.nan]  # px, mass, tau2, label
    path = write_features_table(tmp_path / "nan.h5", values, LHCO_FILE_COLUMNS + ("label",))
    source = open_source(str(path))
    assert source.n_nonfinite_dropped == 4 and source.n_events == 496
    batch = read_all(source, 100)
    assert len(batch) == 496 and np.isfinite(batch.features).all()
    assert not set(batch.ids.tolist()) & {3, 10, 11, 400}
    assert source.label_counts() == (int((values[:, 14] == 0).sum()) - 3, int((values[:, 14] == 1).sum()))


def test_unlabelled_features_file_with_other_key(tmp_path: Path, real_values: np.ndarray) -> None:
    path = write_features_table(tmp_path / "blackbox.h5", real_values[:300, :14], LHCO_FILE_COLUMNS, key="events")
    source = open_source(str(path))
    assert not source.has_labels and source.n_events == 300
    assert read_all(source, 64).labels is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nope.h5: no such file"):
        open_source(str(tmp_path / "nope.h5"))


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "events.h5"
    path.write_text("pxj1,pyj1\n1,2\n")
    with pytest.raises(SourceError, match="events.h5: not an HDF5 file"):
        open_source(str(path))


@pytest.mark.parametrize("which", ["features_file", "raw_file"])
def test_truncated_file(tmp_path: Path, request, which: str) -> None:
    real: Path = request.getfixturevalue(which)
    half = tmp_path / real.name
    with open(real, "rb") as src, open(half, "wb") as dst:
        dst.write(src.read(real.stat().st_size // 2))
    with pytest.raises(SourceError, match=f"{real.name}: .*truncated"):
        source = open_source(str(half))
        read_all(source, 10_000)


def test_hdf5_with_neither_layout(tmp_path: Path) -> None:
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros((3, 3))
    with pytest.raises(SourceError, match="plain.h5: HDF5 file without a pandas table"):
        open_source(str(plain))
    other = write_features_table(tmp_path / "other.h5", np.zeros((4, 2)), ("a", "b"))
    with pytest.raises(SourceError, match="other.h5: HDF5 table with neither LHCO layout.*columns: a, b"):
        open_source(str(other))


def test_bad_labels(tmp_path: Path, real_values: np.ndarray) -> None:
    values = real_values[:50].copy()
    values[7, 14] = 2.0
    path = write_features_table(tmp_path / "labels.h5", values, LHCO_FILE_COLUMNS + ("label",))
    with pytest.raises(SourceError, match="label column holds values other than 0 and 1"):
        open_source(str(path))


def test_bad_file_options(features_file: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option 'n_events' for source .*known: loop, features"):
        open_source(str(features_file), n_events=10)
    with pytest.raises(ConfigError, match="features must be one of lhco, raw"):
        open_source(str(features_file), features="jets")
    with pytest.raises(ConfigError, match="chunk size"):
        next(open_source(str(features_file)).chunks(0))


def test_a_file_truncated_while_it_is_read(tmp_path: Path, real_values: np.ndarray) -> None:
    """Rows past a truncation would come back as HDF5 fill values: the source stops with a clear error."""
    values = np.tile(real_values, (4, 1))  # 240k rows: more than one read block
    path = write_features_table(tmp_path / "growing.h5", values, LHCO_FILE_COLUMNS + ("label",))
    source = open_source(str(path))
    chunks = source.chunks(1000)
    assert len(next(chunks)) == 1000
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 3)
    with pytest.raises(SourceError, match=r"growing.h5: the file changed while being read \(size \d+ -> \d+ bytes"):
        for _ in chunks:
            pass
