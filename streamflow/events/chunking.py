"""Chunking: batches of exactly the requested size, and seeded generator streams.

Every source's ``chunks(chunk_size)`` yields batches of exactly ``chunk_size``
events (the last of a finite stream may be shorter), whatever sizes it reads or
draws internally: ``rebatch`` does the cutting. ``first_events`` caps a stream
(the producer's ``events``).

A generator draws events in fixed blocks of ``BLOCK`` events; block b uses its own
random stream ``default_rng([seed, b])``. Event i is therefore a function of
(seed, i) alone: replaying with another chunk size, or starting again, gives the
same events with the same ids (a counter from 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from streamflow.errors import ConfigError
from streamflow.events.batch import EventBatch

BLOCK = 1 << 16

BlockMaker = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
"""(rng, n) -> (features float32[n, f], labels int8[n])."""


def check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ConfigError(f"chunk size must be a positive integer, got {chunk_size!r}")


def check_seed(seed: int, where: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{where}: seed must be an integer >= 0, got {seed!r}")


def rebatch(batches: Iterable[EventBatch], chunk_size: int) -> Iterator[EventBatch]:
    """The events of ``batches``, in order, cut into batches of exactly ``chunk_size`` (last: the rest)."""
    check_chunk_size(chunk_size)
    pending: list[EventBatch] = []
    pending_n = 0
    for batch in batches:
        if len(batch) == 0:
            continue
        pending.append(batch)
        pending_n += len(batch)
        if pending_n < chunk_size:
            continue
        joined = pending[0] if len(pending) == 1 else EventBatch.concatenate(pending)
        start = 0
        while pending_n - start >= chunk_size:
            yield joined.take(slice(start, start + chunk_size))
            start += chunk_size
        pending = [joined.take(slice(start, None))] if start < pending_n else []
        pending_n -= start
    if pending_n:
        yield pending[0] if len(pending) == 1 else EventBatch.concatenate(pending)


def first_events(batches: Iterable[EventBatch], limit: int | None) -> Iterator[EventBatch]:
    """The first ``limit`` events of ``batches`` (None: all), the last batch cut short; stops
    drawing from ``batches`` as soon as it has them (an endless source ends here)."""
    if limit is None:
        yield from batches
        return
    left = limit
    if left < 1:
        return
    for batch in batches:
        if len(batch) > left:
            batch = batch.take(slice(0, left))
        left -= len(batch)
        yield batch
        if left == 0:
            return


def generate_chunks(
    make_block: BlockMaker,
    names: tuple[str, ...],
    seed: int,
    n_events: int | None,
    chunk_size: int,
) -> Iterator[EventBatch]:
    """Chunks of ``chunk_size`` generated events; endless if n_events is None."""
    check_chunk_size(chunk_size)
    return rebatch(_blocks(make_block, names, seed, n_events), chunk_size)


def _blocks(make_block: BlockMaker, names: tuple[str, ...], seed: int, n_events: int | None) -> Iterator[EventBatch]:
    block_index = 0
    while n_events is None or block_index * BLOCK < n_events:
        start = block_index * BLOCK
        n = BLOCK if n_events is None else min(BLOCK, n_events - start)
        features, labels = make_block(np.random.default_rng([seed, block_index]), BLOCK)
        yield EventBatch(np.arange(start, start + n, dtype=np.uint64), features[:n], names, labels[:n])
        block_index += 1
