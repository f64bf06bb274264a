"""A trigger's decision on one frame: which events passed which line, as a bit mask.

Kept apart from the menu (and its Numba estimators), so the wire format can share
its one limit, :data:`MAX_LINES`, without loading Numba in processes that only
move frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_LINES = 64
"""One bit per line in an event's uint64 trigger mask (Selection.bits, and the wire's SELECTION frames)."""


@dataclass(frozen=True)
class Selection:
    """The decision on one frame of n events.

    ``accept``: bool[n], recorded by at least one line; ``bits``: uint64[n], bit i
    set when line i recorded the event; ``passed``: uint64[n], bit i set when the
    event passed line i (a prescale N > 1 records only every N-th pass: ``bits``
    is a subset of ``passed``); ``thresholds``: float64[lines], the threshold each
    line applied -- a controlled line judges a frame in steps, each with its own
    threshold, and reports its last step's (NaN during its warm-up and for
    zero-bias lines).
    """

    accept: np.ndarray
    bits: np.ndarray
    thresholds: np.ndarray
    passed: np.ndarray

    @property
    def indices(self) -> np.ndarray:
        """Positions of the accepted events in the frame."""
        return np.flatnonzero(self.accept)
