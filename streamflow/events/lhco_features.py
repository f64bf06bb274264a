"""Reader of LHCO high-level feature files (``events_anomalydetection_v2.features.h5`` layout).

The file is a pandas "fixed" table (see h5table.py) with the 14 jet columns of
``LHCO_FILE_COLUMNS`` and, in the R&D files, a ``label`` column (1 = signal); the
black-box files have no label. Each chunk is turned into the 16 ``LHCO_NAMES``
stream features by derived.py.

Rows whose derived features or label are not finite are dropped and counted in
``n_nonfinite_dropped``: opening the file scans it once, in chunks, so that
``n_events`` (rows kept) and ``label_counts()`` are exact from the start. Event ids
are row indices in the file, so they stay unique and traceable with drops.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from streamflow.errors import SourceError
from streamflow.events.batch import EventBatch
from streamflow.events.chunking import check_chunk_size, rebatch
from streamflow.events.derived import lhco_features
from streamflow.events.h5table import H5Table
from streamflow.events.schema import LHCO_FILE_COLUMNS, LHCO_NAMES

READ_ROWS = 1 << 16
"""Rows per read: about 8 MB of float64 at a time, whatever the file size."""


class LHCOFeaturesFile:
    """EventSource over an LHCO features table (open it with ``open_source``)."""

    names: tuple[str, ...] = LHCO_NAMES

    def __init__(self, table: H5Table) -> None:
        missing = [c for c in LHCO_FILE_COLUMNS if c not in table.columns]
        if missing:
            raise SourceError(f"{table.path}: features table lacks columns {', '.join(missing)}")
        self.path = table.path
        self._table = table
        self.has_labels = "label" in table.columns
        self.n_rows = table.n_rows
        n_signal = kept = 0
        for batch in self._read_all():
            kept += len(batch)
            if batch.labels is not None:
                n_signal += int(batch.labels.sum())
        self.n_events: int | None = kept
        self.n_nonfinite_dropped = self.n_rows - kept
        self._label_counts = (kept - n_signal, n_signal)

    def label_counts(self) -> tuple[int, int]:
        """(background, signal) events among the rows kept; SourceError if the file has no labels."""
        if not self.has_labels:
            raise SourceError(f"{self.path}: the file has no label column")
        return self._label_counts

    def _read_all(self) -> Iterator[EventBatch]:
        columns = LHCO_FILE_COLUMNS + (("label",) if self.has_labels else ())
        for start in range(0, self.n_rows, READ_ROWS):
            stop = min(start + READ_ROWS, self.n_rows)
            values = self._table.read(start, stop, columns)
            features = lhco_features(values[:, : len(LHCO_FILE_COLUMNS)])
            finite = np.isfinite(features).all(axis=1)
            labels = None
            if self.has_labels:
                label = values[:, -1]
                finite &= np.isfinite(label)
                if not np.isin(label[finite], (0.0, 1.0)).all():
                    raise SourceError(
                        f"{self.path}: label column holds values other than 0 and 1 in rows {start}-{stop}")
                labels = np.where(finite, label, 0).astype(np.int8)
            batch = EventBatch(np.arange(start, stop, dtype=np.uint64), features, LHCO_NAMES, labels)
            yield batch if finite.all() else batch.take(finite)

    def chunks(self, chunk_size: int) -> Iterator[EventBatch]:
        check_chunk_size(chunk_size)
        return rebatch(self._read_all(), chunk_size)
