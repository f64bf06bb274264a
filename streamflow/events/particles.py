"""Ragged particle events: what a raw LHCO file holds, without its zero padding.

A raw LHCO row is 700 particles x (pT, eta, phi), zero-padded; most events have
100-300 particles, so the padding is most of the row. A :class:`ParticleBatch`
keeps only the particles: per-event counts and flat float64 pT/eta/phi arrays
(event i owns the slice ``offsets[i]:offsets[i + 1]``). float64 because jet masses
are differences of large numbers (m^2 = E^2 - |p|^2 with m/E ~ 0.05): float32
inputs would cost the agreement with the official features (1e-6 relative).

A particle is padding exactly when its pT is 0 (the LHCO convention); anything
else, NaN included, is kept, so that reconstruction can reject the event and say
why instead of the event silently changing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamflow.errors import SourceError

if TYPE_CHECKING:  # the wire imports this module; it need not import h5py
    from streamflow.events.lhco_raw import LHCORawFile

PARTICLES_PER_ROW = 700
"""Particles per event in the raw LHCO files (the padded row length / 3)."""


@dataclass(frozen=True)
class ParticleBatch:
    """``n`` events of massless particles, ragged.

    ids: uint64[n]; counts: uint32[n] particles per event; pt, eta, phi: float64[sum(counts)],
    event by event in order; labels: int8[n] (1 = signal) or None.
    """

    ids: np.ndarray
    counts: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.ids.dtype != np.uint64 or self.ids.ndim != 1:
            raise ValueError(f"ids must be uint64[n], got {self.ids.dtype}{list(self.ids.shape)}")
        if self.counts.dtype != np.uint32 or self.counts.shape != (n,):
            raise ValueError(f"counts must be uint32[{n}], got {self.counts.dtype}{list(self.counts.shape)}")
        total = int(self.counts.sum(dtype=np.uint64))
        for name in ("pt", "eta", "phi"):
            values = getattr(self, name)
            if values.dtype != np.float64 or values.shape != (total,):
                raise ValueError(f"{name} must be float64[{total}], got {values.dtype}{list(values.shape)}")
        if self.labels is not None and (self.labels.dtype != np.int8 or self.labels.shape != (n,)):
            raise ValueError(f"labels must be int8[{n}], got {self.labels.dtype}{list(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def offsets(self) -> np.ndarray:
        """int64[n + 1]: event i's particles are ``offsets[i]:offsets[i + 1]``."""
        offsets = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=offsets[1:])
        return offsets

    def take(self, index: np.ndarray) -> ParticleBatch:
        """The events at integer or boolean ``index``, in that order."""
        rows = np.arange(len(self))[index]
        counts = self.counts[rows].astype(np.int64)
        starts = self.offsets[rows]
        # particle j of the result: its event's start in this batch + its place within the event
        particles = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
        return ParticleBatch(ids=np.ascontiguousarray(self.ids[rows]), counts=np.ascontiguousarray(self.counts[rows]),
                             pt=self.pt[particles], eta=self.eta[particles], phi=self.phi[particles],
                             labels=None if self.labels is None else np.ascontiguousarray(self.labels[rows]))

    @staticmethod
    def from_padded(ids: np.ndarray, padded: np.ndarray, labels: np.ndarray | None = None) -> ParticleBatch:
        """Events from padded rows float[n, 3k] (pT, eta, phi per particle); particles with pT == 0 dropped."""
        n = len(padded)
        if padded.ndim != 2 or padded.shape[1] % 3:
            raise ValueError(f"padded particles must be [n, 3k], got {list(padded.shape)}")
        triples = padded.reshape(n, -1, 3)
        present = triples[:, :, 0] != 0
        kept = triples[present].astype(np.float64)  # row-major: event by event, in particle order
        return ParticleBatch(ids=np.asarray(ids, dtype=np.uint64), counts=present.sum(axis=1).astype(np.uint32),
                             pt=np.ascontiguousarray(kept[:, 0]), eta=np.ascontiguousarray(kept[:, 1]),
                             phi=np.ascontiguousarray(kept[:, 2]), labels=labels)


def particle_frames(source: LHCORawFile, frame_size: int, *, loop: bool = False,
                    max_events: int | None = None) -> Iterator[ParticleBatch]:
    """Frames of ``frame_size`` events of a raw LHCO file, read in float64, padding dropped.

    With ``loop`` the file is replayed endlessly (pass p gives row r the id p * n_rows + r,
    so ids stay unique); ``max_events`` stops after that many events. The last frame of
    a pass may be shorter. Rows whose label is not 0 or 1 (NaN included) are a SourceError:
    a label is truth, it cannot be guessed.
    """
    if frame_size < 1:
        raise ValueError(f"frame size must be at least 1 event, got {frame_size}")
    if source.n_rows == 0:
        raise SourceError(f"{source.path}: no events")
    table, columns = source.table, source.table.columns
    n_values = 3 * source.n_particles
    sent, n_pass = 0, 0
    while max_events is None or sent < max_events:
        for start in range(0, source.n_rows, frame_size):
            stop = min(start + frame_size, source.n_rows)
            if max_events is not None:
                stop = min(stop, start + max_events - sent)
            values = table.read(start, stop, columns)
            labels = None
            if source.has_labels:
                label = values[:, n_values]
                if not np.isin(label, (0.0, 1.0)).all():
                    raise SourceError(f"{source.path}: label column holds values other than 0 and 1 in rows "
                                      f"{start}-{stop}")
                labels = label.astype(np.int8)
            ids = np.arange(start, stop, dtype=np.uint64) + np.uint64(n_pass * source.n_rows)
            yield ParticleBatch.from_padded(ids, values[:, :n_values], labels)
            sent += stop - start
            if max_events is not None and sent >= max_events:
                return
        if not loop:
            return
        n_pass += 1
