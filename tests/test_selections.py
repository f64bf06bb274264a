"""The selections file: appends, flushes on time, reopens to append, refuses another schema."""

import h5py
import numpy as np
import pytest

from streamflow.errors import StreamflowError
from streamflow.stream.selections import SelectedEvents, SelectionWriter, read_selections

NAMES = ("mjj", "mjmin")
LINES = ("flow", "cwola")


def events(start: int, n: int) -> SelectedEvents:
    ids = np.arange(start, start + n, dtype=np.uint64)
    return SelectedEvents(
        ids=ids, seq=ids // 10, bits=np.full(n, 0b10, np.uint64), passed=np.full(n, 0b11, np.uint64),
        scores=np.column_stack([ids, -ids]).astype(np.float32),
        features=np.column_stack([ids * 2.0, ids * 3.0]).astype(np.float32),
        labels=(ids % 2).astype(np.int8),
    )


def test_rows_round_trip_and_reopen_appends(tmp_path):
    path = tmp_path / "sel.h5"
    writer = SelectionWriter(path, NAMES, LINES, config={"q": 0.01}, flush_interval=3600)
    writer.append(events(0, 5000))
    writer.append(events(5000, 10))
    assert writer.pending == 5010
    writer.close()
    writer = SelectionWriter(path, NAMES, LINES)
    assert writer.rows_written == 5010
    writer.append(events(5010, 3))
    writer.close()
    got, attrs = read_selections(path)
    want = events(0, 5013)
    for name in ("ids", "seq", "bits", "passed", "scores", "features", "labels"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert attrs["line_names"] == LINES and attrs["config"] == {"q": 0.01}


def test_flush_interval_makes_rows_visible_to_a_reader(tmp_path):
    path = tmp_path / "sel.h5"
    writer = SelectionWriter(path, NAMES, LINES, flush_interval=0.0)
    writer.append(events(0, 7))
    with h5py.File(path, "r") as handle:  # readable while the writer still holds it
        assert handle["ids"].shape == (7,)
    writer.close()


def test_other_menu_is_refused(tmp_path):
    path = tmp_path / "sel.h5"
    SelectionWriter(path, NAMES, LINES).close()
    with pytest.raises(StreamflowError, match="another schema"):
        SelectionWriter(path, NAMES, ("flow",))


def test_format_1_file_reads_with_passed_equal_to_bits_and_is_not_appended_to(tmp_path):
    path = tmp_path / "sel.h5"
    writer = SelectionWriter(path, NAMES, LINES)
    writer.append(events(0, 4))
    writer.close()
    with h5py.File(path, "a") as handle:  # what a format-1 writer left: no passed bits
        del handle["passed"]
        handle.attrs["format_version"] = 1
    got, attrs = read_selections(path)
    assert attrs["format_version"] == 1 and np.array_equal(got.passed, got.bits) and len(got) == 4
    with pytest.raises(StreamflowError, match="format 1, this build writes format 2"):
        SelectionWriter(path, NAMES, LINES)
