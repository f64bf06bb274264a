"""Learner kinds by name: configs from TOML tables, learners from configs and checkpoints.

A learner's TOML table names its kind, which selects the config dataclass::

    [learner]
    kind = "flow"            # "flow" | "cwola" | "autoencoder" | "cathode" | "anode"
    features = ["mjmin", "delta_m", "tau21_jmin", "tau21_jmax"]
    context = "mjj"
    frame = "identity"
    train_where = { feature = "mjj", low = 3300.0, high = 3700.0, outside = true }
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from streamflow.config import from_dict
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

KINDS: dict[str, tuple[type, type[TorchLearner] | type[CompositeLearner]]] = {
    "flow": (FlowConfig, FlowLearner),
    "cwola": (CWoLAConfig, CWoLALearner),
    "autoencoder": (AutoencoderConfig, AutoencoderLearner),
    "cathode": (CathodeConfig, CathodeLearner),
    "anode": (AnodeConfig, AnodeLearner),
}


def learner_config(data: dict[str, Any], where: str = "learner") -> LearnerConfig:
    """The config dataclass selected by ``data["kind"]``, built strictly from ``data``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    return from_dict(KINDS[kind][0], data, where)


def build_learner(config: LearnerConfig, device: str | torch.device = "cpu") -> AnyLearner:
    """A fresh learner for ``config`` on ``device`` (bind it to a stream before use)."""
    return KINDS[config.kind][1](config, device)


def save_learner(learner: AnyLearner, path: str | Path) -> None:
    """Write the learner's checkpoint (readable with torch.load(weights_only=True))."""
    torch.save(learner.state_dict(), Path(path))


def load_learner(path: str | Path, device: str | torch.device = "cpu") -> AnyLearner:
    """The learner saved at ``path``, rebuilt from the config inside the checkpoint."""
    try:
        state = torch.load(Path(path), map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"learner checkpoint not found: {path}") from None
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise ConfigError(f"{path}: not a learner checkpoint ({type(exc).__name__})") from None
    return learner_from_state(state, device, where=str(path))


def learner_from_state(state: Any, device: str | torch.device = "cpu", where: str = "learner") -> AnyLearner:
    """A trained learner rebuilt from its ``state_dict()`` (alone, or one of a scorer checkpoint's)."""
    if not isinstance(state, dict) or "config" not in state:
        raise ConfigError(f"{where}: not a learner checkpoint")
    learner = build_learner(learner_config(dict(state["config"]), where=where), device)
    learner.load_state_dict(state)
    return learner
