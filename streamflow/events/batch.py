"""The unit of data everywhere in streamflow: a batch of events as plain numpy arrays."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class EventBatch:
    """``n`` events with ``f`` named float32 features.

    ids: uint64[n], unique within a stream (for file sources: the row in the file).
    features: float32[n, f], C-contiguous, columns named by ``names``.
    labels: int8[n] truth (1 = signal) or None; for metrics only, never for training.
    """

    ids: np.ndarray
    features: np.ndarray
    names: tuple[str, ...]
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.ids.dtype != np.uint64 or self.ids.ndim != 1:
            raise ValueError(f"ids must be uint64[n], got {self.ids.dtype}{list(self.ids.shape)}")
        if self.features.dtype != np.float32 or self.features.ndim != 2:
            raise ValueError(
                f"features must be float32[n, f], got {self.features.dtype}{list(self.features.shape)}"
            )
        n, f = self.features.shape
        if len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} events")
        if len(self.names) != f:
            raise ValueError(f"{len(self.names)} names for {f} feature columns")
        if self.labels is not None and (self.labels.dtype != np.int8 or self.labels.shape != (n,)):
            raise ValueError(f"labels must be int8[{n}], got {self.labels.dtype}{list(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.ids)

    def column(self, name: str) -> np.ndarray:
        """One feature column by name (a strided view)."""
        return self.features[:, self.names.index(name)]

    def take(self, index: np.ndarray | slice) -> EventBatch:
        """The events at ``index`` (a boolean mask, integer indices or a slice)."""
        return EventBatch(
            ids=np.ascontiguousarray(self.ids[index]),
            features=np.ascontiguousarray(self.features[index]),
            names=self.names,
            labels=None if self.labels is None else np.ascontiguousarray(self.labels[index]),
        )

    @staticmethod
    def concatenate(batches: Sequence[EventBatch]) -> EventBatch:
        """Join batches of one schema, in order."""
        first = batches[0]
        labelled = all(b.labels is not None for b in batches)
        return EventBatch(
            ids=np.concatenate([b.ids for b in batches]),
            features=np.concatenate([b.features for b in batches]),
            names=first.names,
            labels=np.concatenate([b.labels for b in batches]) if labelled else None,
        )


class EventSource(Protocol):
    """Anything that yields events in chunks: files, generators, toys.

    ``n_events`` is None for an endless generator. ``chunks`` may be called again
    to replay from the start; it never holds a whole big file in memory.
    """

    names: tuple[str, ...]
    has_labels: bool
    n_events: int | None

    def chunks(self, chunk_size: int) -> Iterator[EventBatch]: ...
