"""Reader of raw LHCO event files (``events_anomalydetection.h5`` layout).

The file is a pandas "fixed" table (see h5table.py) whose columns are named
0, 1, ..., 3k (+1): k = 700 particles x (pT, eta, phi), zero-padded and massless,
then, in the R&D file, the truth label (1 = signal); the black-box files have no
label column. It is Blosc-compressed (HDF5 filter 32001, registered by hdf5plugin).

A chunk holds the particles as they are, float32 columns named pt_0, eta_0, phi_0,
pt_1, ... . Jet features (mjj, jet masses, N-subjettiness) are not computed here:
reconstruction (anti-kT R=1.0 clustering, events/reco.py) is a pipeline stage of its
own (``streamflow reco``, ``streamflow run --reco-workers K``), fed ragged particle
frames (events/particles.py). Asking a raw file for the LHCO stream features
(``open_source(raw, features="lhco")``) is a SourceError that says so.

Rows with a non-finite value are dropped while reading and counted in
``n_nonfinite_dropped`` (never seen in the LHCO files). A full file is ~18 GB:
nothing scans it up front, so ``n_events`` is the number of rows in the file, and
``label_counts()`` reads the labels once (cached).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from streamflow.errors import SourceError
from streamflow.events.batch import EventBatch
from streamflow.events.chunking import check_chunk_size, rebatch
from streamflow.events.h5table import H5Table

READ_ROWS = 2048
"""Rows per read: about 34 MB of float64 for 700 particles."""

_QUANTITIES = ("pt", "eta", "phi")


def is_raw_layout(columns: tuple[str, ...]) -> bool:
    """Columns 0..n-1 with n = 3k (unlabelled) or 3k + 1 (labelled), k >= 1."""
    n = len(columns)
    return n >= 3 and n % 3 in (0, 1) and columns == tuple(str(i) for i in range(n))


class LHCORawFile:
    """EventSource over a raw LHCO particle table (open it with ``open_source``)."""

    def __init__(self, table: H5Table) -> None:
        if not is_raw_layout(table.columns):
            raise SourceError(f"{table.path}: not a raw LHCO table (columns must be 0..3k)")
        self.path = table.path
        self._table = table
        self.n_particles = len(table.columns) // 3
        self.has_labels = len(table.columns) % 3 == 1
        self.names: tuple[str, ...] = tuple(f"{q}_{i}" for i in range(self.n_particles) for q in _QUANTITIES)
        self.n_rows = table.n_rows
        self.n_events: int | None = table.n_rows
        self.n_nonfinite_dropped = 0
        self._label_counts: tuple[int, int] | None = None

    @property
    def table(self) -> H5Table:
        """The pandas table the file holds (for readers of other layouts, e.g. particle frames)."""
        return self._table

    def label_counts(self) -> tuple[int, int]:
        """(background, signal) events in the file; the first call reads the whole file."""
        if not self.has_labels:
            raise SourceError(f"{self.path}: the file has no label column")
        if self._label_counts is None:
            n_signal = n_total = 0
            for batch in self._read_all():
                assert batch.labels is not None  # has_labels, checked above
                n_signal += int(batch.labels.sum())
                n_total += len(batch)
            self._label_counts = (n_total - n_signal, n_signal)
        return self._label_counts

    def _read_all(self) -> Iterator[EventBatch]:
        self.n_nonfinite_dropped = 0
        n_features = 3 * self.n_particles
        for start in range(0, self.n_rows, READ_ROWS):
            stop = min(start + READ_ROWS, self.n_rows)
            values = self._table.read(start, stop, self._table.columns)
            finite = np.isfinite(values).all(axis=1)
            labels = None
            if self.has_labels:
                label = values[:, n_features]
                if not np.isin(label[finite], (0.0, 1.0)).all():
                    raise SourceError(
                        f"{self.path}: label column holds values other than 0 and 1 in rows {start}-{stop}")
                labels = np.where(finite, label, 0).astype(np.int8)
            features = values[:, :n_features].astype(np.float32)
            batch = EventBatch(np.arange(start, stop, dtype=np.uint64), features, self.names, labels)
            self.n_nonfinite_dropped += int((~finite).sum())
            yield batch if finite.all() else batch.take(finite)

    def chunks(self, chunk_size: int) -> Iterator[EventBatch]:
        check_chunk_size(chunk_size)
        return rebatch(self._read_all(), chunk_size)
