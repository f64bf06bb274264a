"""The selections file: accepted events in a chunked, resizable HDF5 file.

Layout (one group per file, readable with plain h5py)::

    /ids        uint64[n]        event id in the source stream
    /seq        uint64[n]        sequence number of the frame the event came in
    /bits       uint64[n]        bit i set = trigger line i accepted the event
    /scores     float32[n, L]    every line's score for the event (NaN: not scored)
    /features   float32[n, F]    the event's features as streamed
    /labels     int8[n]          truth label, -1 when the source had none
    attrs: feature_names, line_names (JSON lists), config (JSON), format_version

Every dataset is chunked and grows along axis 0. :meth:`SelectionWriter.append`
buffers rows in memory and writes them at least every ``flush_interval`` seconds,
followed by an HDF5 flush, so a crash loses at most the last interval's events.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from streamflow.errors import SourceError, StreamflowError

FORMAT_VERSION = 1
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class SelectedEvents:
    """Accepted events as plain arrays (rows aligned)."""

    ids: np.ndarray
    seq: np.ndarray
    bits: np.ndarray
    scores: np.ndarray
    features: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class SelectionWriter:
    """Appends accepted events to an HDF5 selections file, flushing at least every ``flush_interval`` s.

    Opening an existing file with the same feature and line names appends to it
    (a restarted sink continues the file); different names are refused.
    """

    def __init__(
        self,
        path: str | Path,
        feature_names: tuple[str, ...],
        line_names: tuple[str, ...],
        config: dict[str, Any] | None = None,
        flush_interval: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.feature_names = tuple(feature_names)
        self.line_names = tuple(line_names)
        self.flush_interval = flush_interval
        self._pending: list[SelectedEvents] = []
        self._last_flush = time.monotonic()
        self.rows_written = 0
        try:
            self._file = h5py.File(self.path, "a")
        except OSError as exc:
            raise StreamflowError(f"cannot open selections file {self.path}: {exc}") from None
        if "ids" in self._file:
            self._check_matches()
            self.rows_written = self._file["ids"].shape[0]
        else:
            self._create(config or {})

    def _create(self, config: dict[str, Any]) -> None:
        n_features, n_lines = len(self.feature_names), len(self.line_names)
        shapes = {
            "ids": ((0,), np.uint64), "seq": ((0,), np.uint64), "bits": ((0,), np.uint64),
            "scores": ((0, n_lines), np.float32), "features": ((0, n_features), np.float32),
            "labels": ((0,), np.int8),
        }
        for name, (shape, dtype) in shapes.items():
            self._file.create_dataset(
                name, shape=shape, maxshape=(None, *shape[1:]), dtype=dtype,
                chunks=(CHUNK_ROWS, *shape[1:]),
            )
        attrs = self._file.attrs
        attrs["format_version"] = FORMAT_VERSION
        attrs["feature_names"] = json.dumps(list(self.feature_names))
        attrs["line_names"] = json.dumps(list(self.line_names))
        attrs["config"] = json.dumps(config, default=str)
        self._file.flush()

    def _check_matches(self) -> None:
        attrs = self._file.attrs
        if tuple(json.loads(attrs["feature_names"])) != self.feature_names or tuple(
            json.loads(attrs["line_names"])
        ) != self.line_names:
            raise StreamflowError(
                f"{self.path} holds selections of another schema or trigger menu: choose a new file"
            )

    def append(self, events: SelectedEvents) -> None:
        """Queue accepted events; writes and flushes once ``flush_interval`` has passed."""
        if len(events):
            self._pending.append(events)
        self.maybe_flush()

    def maybe_flush(self) -> None:
        """Flush if ``flush_interval`` has passed since the last flush."""
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> int:
        """Write every queued event and flush the file; returns the rows written now."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return 0
        columns = {
            name: np.concatenate([getattr(e, name) for e in self._pending])
            for name in ("ids", "seq", "bits", "scores", "features", "labels")
        }
        n = len(columns["ids"])
        start = self.rows_written
        try:
            for name, values in columns.items():
                dataset = self._file[name]
                dataset.resize(start + n, axis=0)
                dataset[start:] = values
            self._file.flush()
        except OSError as exc:  # disk full, file gone
            raise StreamflowError(f"cannot write selections to {self.path}: {exc}") from None
        self._pending.clear()
        self.rows_written = start + n
        return n

    @property
    def pending(self) -> int:
        return sum(len(e) for e in self._pending)

    def close(self) -> None:
        if self._file:
            try:
                self.flush()
            finally:
                self._file.close()


def read_selections(path: str | Path) -> tuple[SelectedEvents, dict[str, Any]]:
    """The whole selections file as arrays, and its attributes (names and config decoded)."""
    try:
        with h5py.File(path, "r") as handle:
            events = SelectedEvents(**{name: handle[name][...] for name in SelectedEvents.__dataclass_fields__})
            attrs = {
                "feature_names": tuple(json.loads(handle.attrs["feature_names"])),
                "line_names": tuple(json.loads(handle.attrs["line_names"])),
                "config": json.loads(handle.attrs["config"]),
                "format_version": int(handle.attrs["format_version"]),
            }
    except (OSError, KeyError) as exc:
        raise SourceError(f"{path} is not a readable streamflow selections file: {exc}") from None
    return events, attrs
