"""Trigger: rolling-quantile thresholds and per-frame selection of the most anomalous events.

- :mod:`.rolling`: exact sliding-window quantile (Numba), per frame or per event.
- :mod:`.sketch`: a mergeable fixed-memory log-axis histogram, for huge windows
  or thresholds that several scorers must agree on.
- :mod:`.lines`, :mod:`.menu`: trigger lines (learner, accept fraction, window)
  and the menu that judges frames and keeps per-line statistics.
"""

from streamflow.trigger.lines import LineConfig, LineStats
from streamflow.trigger.menu import MAX_LINES, MenuConfig, Selection, TriggerMenu
from streamflow.trigger.rolling import RollingQuantile, rolling_quantile
from streamflow.trigger.sketch import (
    Histogram,
    LogBinning,
    RollingHistogramQuantile,
    quantile_from_counts,
    rank_error_bound,
)

__all__ = [
    "MAX_LINES",
    "Histogram",
    "LineConfig",
    "LineStats",
    "LogBinning",
    "MenuConfig",
    "RollingHistogramQuantile",
    "RollingQuantile",
    "Selection",
    "TriggerMenu",
    "quantile_from_counts",
    "rank_error_bound",
    "rolling_quantile",
]
