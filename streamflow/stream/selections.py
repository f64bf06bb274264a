"""The selections file: accepted events in a chunked, resizable HDF5 file.

Layout (one group per file, readable with plain h5py)::

    /ids        uint64[n]        event id in the source stream
    /seq        uint64[n]        sequence number of the frame the event came in
    /bits       uint64[n]        bit i set = trigger line i recorded the event (after its prescale)
    /passed     uint64[n]        bit i set = the event passed line i's threshold (a superset of bits:
                                 a prescale N records every N-th pass; a zero-bias line's bit = sampled)
    /scores     float32[n, L]    every line's score for the event (NaN: not scored)
    /features   float32[n, F]    the event's features as streamed
    /labels     int8[n]          truth label, -1 when the source had none
    attrs: feature_names, line_names (JSON lists), config (JSON), format_version,
           rows (rows committed by the last complete flush), writer_state (JSON)

Every dataset is chunked and grows along axis 0. :meth:`SelectionWriter.append`
buffers rows in memory and writes them at least every ``flush_interval`` seconds,
followed by an HDF5 flush, so a crash loses at most the last interval's events.
Each flush ends by recording ``rows`` (and the writer's state, e.g. the sink's
sequence tracker) *after* the data: a flush cut short by ``kill -9`` leaves rows
beyond ``rows`` that readers and a reopening writer ignore.

Every row has at least one recorded bit: an event that passed a prescaled line
but was recorded by none is not written. Files of format 1 (before ``passed``)
read with ``passed`` = ``bits``; a writer does not append to them.

A full disk is different: HDF5 that fails in the middle of a write leaves a file
it cannot open again ("truncated file"). So before each flush the writer checks
that the flush fits -- its rows plus one new chunk per dataset plus a margin for
metadata, against the free space of the file system (``statvfs``) and the
process's file-size limit (``RLIMIT_FSIZE``) -- and refuses with a clear error
while the file is still whole. (A disk filled by another process between the
check and the write can still break the file.)
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from streamflow.errors import SourceError, StreamflowError

FORMAT_VERSION = 2  # 2: the passed bits
CHUNK_ROWS = 4096
_COLUMNS = ("ids", "seq", "bits", "passed", "scores", "features", "labels")
METADATA_MARGIN = 1 << 20
"""Bytes kept free beyond a flush's rows and chunks, for HDF5's metadata (B-tree nodes, attributes)."""


@dataclass(frozen=True)
class SelectedEvents:
    """Accepted events as plain arrays (rows aligned)."""

    ids: np.ndarray
    seq: np.ndarray
    bits: np.ndarray
    passed: np.ndarray
    scores: np.ndarray
    features: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class SelectionWriter:
    """Appends accepted events to an HDF5 selections file, flushing at least every ``flush_interval`` s.

    Opening an existing file with the same feature and line names appends to it
    (a restarted sink continues the file, from its last committed row, with
    ``committed_state`` as the last flush left it); different names are refused.
    ``state``, if given, is called at every flush and its JSON-able result stored
    with the rows it describes. After a failed write the writer is ``broken``: it
    writes nothing more, and ``close`` only closes the file.
    """

    def __init__(
        self,
        path: str | Path,
        feature_names: tuple[str, ...],
        line_names: tuple[str, ...],
        config: dict[str, Any] | None = None,
        flush_interval: float = 1.0,
        state: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.feature_names = tuple(feature_names)
        self.line_names = tuple(line_names)
        self.flush_interval = flush_interval
        self._pending: list[SelectedEvents] = []
        self._last_flush = time.monotonic()
        self.rows_written = 0
        self.broken = False
        self._state = state
        self.committed_state: dict[str, Any] = {}
        try:
            self._file = h5py.File(self.path, "a")
        except OSError as exc:
            raise StreamflowError(f"cannot open selections file {self.path}: {exc}") from None
        if "ids" in self._file:
            self._check_matches()
            self._reopen()
        else:
            self._create(config or {})

    def _reopen(self) -> None:
        """Continue after the last committed row, dropping the rows of a flush that never finished."""
        attrs = self._file.attrs
        self.rows_written = committed_rows(self._file)
        for name in _COLUMNS:
            if self._file[name].shape[0] != self.rows_written:
                self._file[name].resize(self.rows_written, axis=0)
        self.committed_state = json.loads(attrs.get("writer_state", "{}"))

    def _create(self, config: dict[str, Any]) -> None:
        n_features, n_lines = len(self.feature_names), len(self.line_names)
        shapes = {
            "ids": ((0,), np.uint64), "seq": ((0,), np.uint64),
            "bits": ((0,), np.uint64), "passed": ((0,), np.uint64),
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
        attrs["rows"] = 0
        self._file.flush()

    def _check_matches(self) -> None:
        attrs = self._file.attrs
        if int(attrs.get("format_version", 0)) != FORMAT_VERSION:
            raise StreamflowError(f"{self.path} is a selections file of format {attrs.get('format_version')}, "
                                  f"this build writes format {FORMAT_VERSION}: choose a new file")
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
        """Write every queued event and flush the file; returns the rows written now.

        A failed write (disk full, file gone) is a StreamflowError; the queued
        events stay in ``pending`` (not written) and the writer is ``broken``.
        """
        self._last_flush = time.monotonic()
        if self.broken:
            raise StreamflowError(f"selections file {self.path} failed earlier; nothing more is written")
        state = self._state() if self._state is not None else None
        if not self._pending and state in (None, self.committed_state):
            return 0
        n = self.pending
        start = self.rows_written
        self._check_room(n)
        try:
            if n:
                for name in _COLUMNS:
                    dataset = self._file[name]
                    dataset.resize(start + n, axis=0)
                    dataset[start:] = np.concatenate([getattr(e, name) for e in self._pending])
                self._file.flush()  # the rows reach the file before the count that commits them
            self._file.attrs["rows"] = start + n
            if state is not None:
                self._file.attrs["writer_state"] = json.dumps(state)
            self._file.flush()
        except (OSError, RuntimeError) as exc:  # file gone, or a disk filled since the room check
            self.broken = True
            raise StreamflowError(f"cannot write selections to {self.path}: {exc}") from None
        self._pending.clear()
        self.rows_written = start + n
        if state is not None:
            self.committed_state = state
        return n

    def _check_room(self, rows: int) -> None:
        """StreamflowError (and ``broken``) if writing ``rows`` rows might not fit on the disk."""
        row_bytes = 8 + 8 + 8 + 8 + 4 * len(self.line_names) + 4 * len(self.feature_names) + 1
        need = (rows + CHUNK_ROWS) * row_bytes + METADATA_MARGIN
        stat = os.statvfs(self.path.parent)
        free = stat.f_bavail * stat.f_frsize
        limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if limit != resource.RLIM_INFINITY:
            free = min(free, limit - os.path.getsize(self.path))
        if free < need:
            self.broken = True
            raise StreamflowError(
                f"cannot write selections to {self.path}: disk full ({free / 1e6:.2f} MB left, the next flush "
                f"needs up to {need / 1e6:.2f} MB); the file keeps its {self.rows_written:,d} rows"
            )

    @property
    def pending(self) -> int:
        return sum(len(e) for e in self._pending)

    def close(self) -> None:
        """Flush (unless broken) and close the file."""
        if self._file:
            try:
                if not self.broken:
                    self.flush()
            finally:
                try:
                    self._file.close()
                except OSError:  # a broken file may fail to write its metadata; committed rows stay readable
                    pass


def committed_rows(handle: h5py.File) -> int:
    """Rows committed by the last complete flush (files without the count: every row)."""
    length = min(handle[name].shape[0] for name in _COLUMNS if name in handle)
    return min(int(handle.attrs.get("rows", length)), length)


def read_selections(path: str | Path) -> tuple[SelectedEvents, dict[str, Any]]:
    """The whole selections file as arrays, and its attributes (names and config decoded)."""
    try:
        with h5py.File(path, "r") as handle:
            rows = committed_rows(handle)
            columns = {name: handle[name][:rows] for name in _COLUMNS if name in handle}
            columns.setdefault("passed", columns["bits"])  # format 1: no passed bits were kept
            events = SelectedEvents(**columns)
            attrs = {
                "feature_names": tuple(json.loads(handle.attrs["feature_names"])),
                "line_names": tuple(json.loads(handle.attrs["line_names"])),
                "config": json.loads(handle.attrs["config"]),
                "format_version": int(handle.attrs["format_version"]),
            }
    except (OSError, KeyError) as exc:
        raise SourceError(f"{path} is not a readable streamflow selections file: {exc}") from None
    return events, attrs
