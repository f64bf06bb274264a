"""Signal injection: replay a labelled file at a requested signal fraction.

The file's events form two pools, background (B events) and signal (S events).
For a requested signal fraction f of the output stream:

- f <= S / (S + B): keep every background event and a seeded random subset of
  round(f B / (1 - f)) signal events;
- f > S / (S + B): keep every signal event and a random subset of
  round((1 - f) S / f) background events.

The subset has exactly that size (drawn without replacement), so the output
fraction is f up to rounding, not only on average, and ``n_events`` is known.
Events keep their order and their ids (rows in the file). The standard LHCO
injection, 1,000 signal in 1,000,000 background, is f = 1000 / 1001000.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from streamflow.errors import ConfigError
from streamflow.events.batch import EventBatch
from streamflow.events.chunking import check_chunk_size, rebatch

READ_EVENTS = 1 << 16


class LabelledFile(Protocol):
    names: tuple[str, ...]
    has_labels: bool
    n_rows: int
    n_nonfinite_dropped: int

    def label_counts(self) -> tuple[int, int]: ...

    def chunks(self, chunk_size: int) -> Iterator[EventBatch]: ...


class InjectedSource:
    """``source`` thinned to signal fraction ``signal_fraction`` (seeded; see the module docstring)."""

    has_labels = True

    def __init__(self, source: LabelledFile, signal_fraction: float, seed: int = 0) -> None:
        if not isinstance(signal_fraction, (int, float)) or not 0.0 <= signal_fraction <= 1.0:
            raise ConfigError(f"signal fraction must be in [0, 1], got {signal_fraction!r}")
        if not source.has_labels:
            raise ConfigError(
                f"{getattr(source, 'path', 'source')}: a signal fraction needs truth labels, and this source has none"
            )
        self._source = source
        self.names = source.names
        self.n_rows = source.n_rows
        self.signal_fraction = float(signal_fraction)
        n_background, n_signal = source.label_counts()
        f = self.signal_fraction
        if f > 0 and n_signal == 0:
            raise ConfigError(f"{getattr(source, 'path', 'source')}: no signal events to inject")
        if f < 1 and n_background == 0:
            raise ConfigError(f"{getattr(source, 'path', 'source')}: no background events")
        if f * (n_signal + n_background) <= n_signal:
            self._thinned_label = 1
            pool, keep = n_signal, min(n_signal, round(f * n_background / (1.0 - f))) if f < 1 else n_signal
        else:
            self._thinned_label = 0
            pool, keep = n_background, min(n_background, round((1.0 - f) * n_signal / f))
        self._keep = np.zeros(pool, dtype=bool)
        self._keep[np.random.default_rng(seed).choice(pool, size=keep, replace=False)] = True
        self.n_events: int | None = n_signal + n_background - pool + keep
        self.n_signal = keep if self._thinned_label == 1 else n_signal

    @property
    def n_nonfinite_dropped(self) -> int:
        return self._source.n_nonfinite_dropped

    def _thinned(self) -> Iterator[EventBatch]:
        seen = 0  # events of the thinned pool so far
        for batch in self._source.chunks(READ_EVENTS):
            assert batch.labels is not None  # a thinned source is labelled (checked when built)
            in_pool: np.ndarray = batch.labels == self._thinned_label
            count = int(in_pool.sum())
            keep = ~in_pool
            keep[in_pool] = self._keep[seen : seen + count]
            seen += count
            yield batch.take(keep)

    def chunks(self, chunk_size: int) -> Iterator[EventBatch]:
        check_chunk_size(chunk_size)
        return rebatch(self._thinned(), chunk_size)
