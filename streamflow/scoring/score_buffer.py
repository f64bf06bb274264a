"""The last N scored events with their truth labels, for ROC and SIC curves after a run.

The selections file holds only accepted events, so it cannot give a ROC curve.
A scorer therefore keeps every learner's score of its last ``capacity`` labelled
events in a ring buffer (the models' final state is what a study wants to see)
and writes them to ``scores-<scorer>.npz``, in stream order:

- ``ids`` uint64[n]: each event's id in the stream (for a file: its row), so the
  sample can be joined with the source;
- ``mjj`` float32[n]: the dijet mass in GeV (NaN when the stream has no mjj), so
  the signal-region and stream-wide figures can both be recomputed;
- ``labels`` int8[n] and one float32[n] array per learner (NaN: not scored).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from streamflow.events.batch import EventBatch

RESERVED = ("ids", "mjj", "labels")
"""Array names of the file that are not learners."""


class ScoreBuffer:
    """Ring buffer of (id, mjj, label, score per learner) for the last ``capacity`` labelled events."""

    def __init__(self, learners: tuple[str, ...], capacity: int = 200_000) -> None:
        clash = set(learners) & set(RESERVED)
        if clash:
            raise ValueError(f"learner name(s) {sorted(clash)} clash with the score file's own arrays")
        self.learners = learners
        self.capacity = capacity
        self.ids = np.zeros(capacity, np.uint64)
        self.mjj = np.zeros(capacity, np.float32)
        self.labels = np.zeros(capacity, np.int8)
        self.scores = np.zeros((len(learners), capacity), np.float32)
        self.seen = 0

    def add(self, batch: EventBatch, scores: Mapping[str, np.ndarray]) -> None:
        """Record one frame; frames without labels are ignored (no curve without truth)."""
        labels = batch.labels
        if labels is None or len(labels) == 0:
            return
        n = min(len(labels), self.capacity)
        slots = (self.seen + np.arange(len(labels) - n, len(labels))) % self.capacity
        self.ids[slots] = batch.ids[-n:]
        self.mjj[slots] = batch.column("mjj")[-n:] if "mjj" in batch.names else np.nan
        self.labels[slots] = labels[-n:]
        for row, name in enumerate(self.learners):
            self.scores[row, slots] = scores[name][-n:]
        self.seen += len(labels)

    def arrays(self) -> dict[str, np.ndarray]:
        """The buffered events in stream order: ``ids``, ``mjj``, ``labels`` and one array per learner."""
        n = min(self.seen, self.capacity)
        order = (self.seen - n + np.arange(n)) % self.capacity
        return {"ids": self.ids[order], "mjj": self.mjj[order], "labels": self.labels[order],
                **{name: self.scores[i, order] for i, name in enumerate(self.learners)}}

    def save(self, path: str | Path) -> None:
        np.savez(path, **self.arrays())  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
