"""Chunking for event generators: the same events whatever the chunk size.

A generator draws events in fixed blocks of ``BLOCK`` events; block b uses its own
random stream ``default_rng([seed, b])``. Event i is therefore a function of
(seed, i) alone: replaying with another chunk size, or starting again, gives the
same events with the same ids (a counter from 0).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from streamflow.errors import ConfigError
from streamflow.events.batch import EventBatch

BLOCK = 1 << 16

BlockMaker = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
"""(rng, n) -> (features float32[n, f], labels int8[n])."""


def check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ConfigError(f"chunk size must be a positive integer, got {chunk_size!r}")


def generate_chunks(
    make_block: BlockMaker,
    names: tuple[str, ...],
    seed: int,
    n_events: int | None,
    chunk_size: int,
) -> Iterator[EventBatch]:
    """Chunks of ``chunk_size`` events (the last may be shorter); endless if n_events is None."""
    check_chunk_size(chunk_size)
    produced = 0
    block_index = 0
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    pending_n = 0
    while n_events is None or produced < n_events:
        while pending_n < chunk_size and (n_events is None or produced + pending_n < n_events):
            features, labels = make_block(np.random.default_rng([seed, block_index]), BLOCK)
            block_index += 1
            pending.append((features, labels))
            pending_n += len(labels)
        features = np.concatenate([p[0] for p in pending]) if len(pending) > 1 else pending[0][0]
        labels = np.concatenate([p[1] for p in pending]) if len(pending) > 1 else pending[0][1]
        take = min(chunk_size, pending_n if n_events is None else n_events - produced)
        yield EventBatch(
            ids=np.arange(produced, produced + take, dtype=np.uint64),
            features=np.ascontiguousarray(features[:take]),
            names=names,
            labels=labels[:take].copy(),
        )
        produced += take
        rest = len(labels) - take
        pending = [(features[take:], labels[take:])] if rest else []
        pending_n = rest
