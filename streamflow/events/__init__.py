"""Event sources and schema: LHCO files, generators, derived features, coordinate frames."""

from streamflow.events.batch import EventBatch, EventSource
from streamflow.events.frames import FRAME_NAMES, Frame, apply_frame, get_frame
from streamflow.events.gaussian import GaussianToy
from streamflow.events.schema import LHCO_FILE_COLUMNS, LHCO_NAMES

__all__ = [
    "EventBatch",
    "EventSource",
    "FRAME_NAMES",
    "Frame",
    "GaussianToy",
    "LHCO_FILE_COLUMNS",
    "LHCO_NAMES",
    "apply_frame",
    "get_frame",
]
