"""Event sources and schema: LHCO files, generators, derived features, coordinate maps.

Names are loaded on first use (PEP 562), so a process that only moves frames
(the producer, the sink, the monitor) never pays for importing torch, which the
coordinate maps need.
"""

from __future__ import annotations

import importlib
from typing import Any

from streamflow.events.batch import EventBatch, EventSource
from streamflow.events.schema import LHCO_FILE_COLUMNS, LHCO_NAMES

_LAZY = {
    "COORDINATE_NAMES": "coordinates", "CoordinateMap": "coordinates", "get_coordinates": "coordinates",
    "GaussianToy": "gaussian", "InjectedSource": "injection", "LHCOFeaturesFile": "lhco_features",
    "LHCORawFile": "lhco_raw", "LoopedSource": "sources", "open_source": "sources",
    "SyntheticLHCO": "synthetic", "SyntheticShapes": "synthetic",
}

__all__ = ["EventBatch", "EventSource", "LHCO_FILE_COLUMNS", "LHCO_NAMES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"streamflow.events.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'streamflow.events' has no attribute {name!r}")
