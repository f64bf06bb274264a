"""Event sources and schema: LHCO files, generators, derived features, coordinate frames."""

from streamflow.events.batch import EventBatch, EventSource
from streamflow.events.frames import FRAME_NAMES, Frame, apply_frame, get_frame
from streamflow.events.gaussian import GaussianToy
from streamflow.events.injection import InjectedSource
from streamflow.events.lhco_features import LHCOFeaturesFile
from streamflow.events.lhco_raw import LHCORawFile
from streamflow.events.schema import LHCO_FILE_COLUMNS, LHCO_NAMES
from streamflow.events.sources import LoopedSource, open_source
from streamflow.events.synthetic import SyntheticLHCO, SyntheticShapes

__all__ = [
    "EventBatch",
    "EventSource",
    "FRAME_NAMES",
    "Frame",
    "GaussianToy",
    "InjectedSource",
    "LHCOFeaturesFile",
    "LHCORawFile",
    "LHCO_FILE_COLUMNS",
    "LHCO_NAMES",
    "LoopedSource",
    "SyntheticLHCO",
    "SyntheticShapes",
    "apply_frame",
    "get_frame",
    "open_source",
]
