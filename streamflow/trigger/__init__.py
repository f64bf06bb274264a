"""Trigger: rolling-quantile thresholds and per-frame selection of the most anomalous events.

- :mod:`.rolling`: exact sliding-window quantile (Numba), per frame or per event.
- :mod:`.sketch`: a mergeable fixed-memory log-axis histogram, for huge windows
  or thresholds that several scorers must agree on.
- :mod:`.lines`, :mod:`.menu`: trigger lines (learner, accept fraction, window)
  and the menu that judges frames and keeps per-line statistics.
- :mod:`.selection`: the decision on one frame (a bit per line) and MAX_LINES.

Names are loaded on first use (PEP 562), so a process that only moves frames (the
producer, the sink: the wire format reads MAX_LINES) never pays for importing Numba.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamflow.trigger.lines import LineConfig, LineStats
    from streamflow.trigger.menu import TriggerMenu
    from streamflow.trigger.rolling import RollingQuantile, rolling_quantile
    from streamflow.trigger.selection import MAX_LINES, Selection
    from streamflow.trigger.sketch import (
        Histogram,
        LogBinning,
        RollingHistogramQuantile,
        quantile_from_counts,
        rank_error_bound,
    )

_LAZY = {
    "LineConfig": "lines", "LineStats": "lines", "TriggerMenu": "menu", "RollingQuantile": "rolling",
    "rolling_quantile": "rolling", "MAX_LINES": "selection", "Selection": "selection", "Histogram": "sketch",
    "LogBinning": "sketch", "RollingHistogramQuantile": "sketch", "quantile_from_counts": "sketch",
    "rank_error_bound": "sketch",
}

__all__ = [
    "MAX_LINES",
    "Histogram",
    "LineConfig",
    "LineStats",
    "LogBinning",
    "RollingHistogramQuantile",
    "RollingQuantile",
    "Selection",
    "TriggerMenu",
    "quantile_from_counts",
    "rank_error_bound",
    "rolling_quantile",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"streamflow.trigger.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'streamflow.trigger' has no attribute {name!r}")
