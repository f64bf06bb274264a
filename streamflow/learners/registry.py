"""Learner kinds by name: configs from TOML tables, learners from configs and checkpoints.

A learner's TOML table names its kind, which selects the config dataclass::

    [learner]
    kind = "flow"            # "flow" | "cwola" | "autoencoder" | "cathode" | "anode"
    features = ["mjmin", "delta_m", "tau21_jmin", "tau21_jmax"]
    context = "mjj"
    coordinates = "identity"
    train_where = { feature = "mjj", low = 3300.0, high = 3700.0, outside = true }
"""

from __future__ import annotations

from typing import Any

import torch

from streamflow.config import coerce
from streamflow.errors import ConfigError
from streamflow.learners.anode import AnodeConfig, AnodeLearner
from streamflow.learners.autoencoder import AutoencoderConfig, AutoencoderLearner
from streamflow.learners.base import TorchLearner
from streamflow.learners.cathode import CathodeConfig, CathodeLearner
from streamflow.learners.composite import CompositeLearner
from streamflow.learners.cwola import CWoLAConfig, CWoLALearner
from streamflow.learners.flow import FlowConfig, FlowLearner

LearnerConfig = FlowConfig | CWoLAConfig | AutoencoderConfig | CathodeConfig | AnodeConfig

AnyLearner = TorchLearner | CompositeLearner
"""A learner the scorer runs: one torch model, or a composite of them (learners/composite.py)."""

KINDS: dict[str, type[TorchLearner] | type[CompositeLearner]] = {
    "flow": FlowLearner, "cwola": CWoLALearner, "autoencoder": AutoencoderLearner,
    "cathode": CathodeLearner, "anode": AnodeLearner,
}
"""The learner class of each kind (a config's own ``kind`` selects it; TOML tables: :func:`learner_config`)."""


def learner_config(data: dict[str, Any], where: str = "learner") -> LearnerConfig:
    """The config dataclass selected by ``data["kind"]`` (one of :data:`LearnerConfig`), built strictly."""
    config: LearnerConfig = coerce(LearnerConfig, data, where)
    return config


def build_learner(config: LearnerConfig, device: str | torch.device = "cpu") -> AnyLearner:
    """A fresh learner for ``config`` on ``device`` (bind it to a stream before use)."""
    return KINDS[config.kind](config, device)


def learner_from_state(state: Any, device: str | torch.device = "cpu", where: str = "learner") -> AnyLearner:
    """A trained learner rebuilt from its ``state_dict()`` (alone, or one of a scorer checkpoint's)."""
    if not isinstance(state, dict) or "config" not in state:
        raise ConfigError(f"{where}: not a learner checkpoint")
    learner = build_learner(learner_config(dict(state["config"]), where=where), device)
    learner.load_state_dict(state)
    return learner
