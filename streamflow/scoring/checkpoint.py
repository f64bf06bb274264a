"""Checkpoints: a scorer's whole state in one file, written atomically.

A checkpoint is a plain dict of tensors, numbers and strings written with
``torch.save`` and read with ``torch.load(weights_only=True)``: nothing in it is
unpickled as code. It is written to a temporary file and renamed over the old one,
so a crash while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from streamflow.errors import ConfigError

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus the format version) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"checkpoint_version": CHECKPOINT_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; a missing, corrupt or other-version file is a one-line ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"checkpoint {path} is a folder, not a checkpoint file (e.g. RUN_DIR/scorer.ckpt.pt)")
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise ConfigError(f"{path}: corrupt or not a streamflow checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "checkpoint_version" not in state:
        raise ConfigError(f"{path}: not a streamflow checkpoint")
    if state["checkpoint_version"] != CHECKPOINT_VERSION:
        raise ConfigError(
            f"{path}: checkpoint format {state['checkpoint_version']}, this streamflow reads {CHECKPOINT_VERSION}"
        )
    return state
