"""Online learners: a normalizing flow, a CWoLA classifier, an autoencoder, CATHODE and ANODE, one protocol.

    learner = build_learner(learner_config({"kind": "flow", "context": "mjj"}), device)
    learner.bind(stream_names)
    scores = learner.score(x)    # test ...
    stats = learner.learn(x)     # ... then train

See base.py for the protocol (TorchLearner's public methods) and its guarantees.
"""

from streamflow.learners.anode import AnodeConfig, AnodeLearner
from streamflow.learners.autoencoder import AutoencoderConfig, AutoencoderLearner
from streamflow.learners.base import CATHODE_FEATURES, LearnerConfigBase, TorchLearner, Window
from streamflow.learners.cathode import CathodeConfig, CathodeLearner
from streamflow.learners.composite import CompositeLearner, is_level_stat
from streamflow.learners.cwola import CWoLAConfig, CWoLALearner
from streamflow.learners.flow import FlowConfig, FlowLearner
from streamflow.learners.registry import (
    KINDS,
    AnyLearner,
    LearnerConfig,
    build_learner,
    learner_config,
    learner_from_state,
)

__all__ = [
    "AnodeConfig",
    "AnodeLearner",
    "AnyLearner",
    "CathodeConfig",
    "CathodeLearner",
    "CompositeLearner",
    "is_level_stat",
    "AutoencoderConfig",
    "AutoencoderLearner",
    "CATHODE_FEATURES",
    "CWoLAConfig",
    "CWoLALearner",
    "FlowConfig",
    "FlowLearner",
    "KINDS",
    "LearnerConfig",
    "LearnerConfigBase",
    "TorchLearner",
    "Window",
    "build_learner",
    "learner_config",
    "learner_from_state",
]
