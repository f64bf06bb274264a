"""Learners built from learners: a composite owns its parts and is one learner to the scorer.

CATHODE needs a background flow and a classifier that reads samples from it;
ANODE two flows that share a standardisation. Both are a
:class:`CompositeLearner`: one TOML table (``kind = "cathode"``), one name, one
score, one checkpoint entry. Its parts are ordinary :class:`TorchLearner` objects
built from the composite's config, so everything the template guarantees holds
per part (non-finite rows dropped, non-finite steps skipped, EMA scoring,
standardisation warm-up), and the protocol carries through by delegation:

- ``bind`` / ``distribute``: every part (data-parallel, each part averages its own
  gradients across ranks; the composite sums its own running state, e.g. a mass
  histogram, with the same collective);
- ``state_dict``: ``{kind, config, parts: {name: part.state_dict()}, extra, totals}``;
  ``load_state_dict`` checks kind and config like a TorchLearner, then each part
  checks its own;
- ``learn`` returns the template's stats (loss, grad_norm, steps, skipped, dropped,
  events) plus the composite's own: counts (summed by the telemetry) and levels
  (``loss``, ``grad_norm``, ``*_loss``, ``gate_*``: the latest value is kept, see :func:`is_level_stat`).

Why a composite, not learners naming another learner (``background = "flow_sb"``):
the parts of CATHODE only make sense together -- the classifier's class 0 *is* the
flow's samples, the gate couples their schedules, ANODE's flows must share one
frozen standardisation -- and a checkpoint of one part without the other could not
resume. Owning them keeps one config to validate, one checkpoint to load, one
learn order (background first, then what reads it) and no cross-learner lookup in
the scorer. The cost: two CATHODE lines cannot share one background flow; each
composite trains its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from streamflow.config import to_dict
from streamflow.distributed import Collective, SoloCollective
from streamflow.learners.base import LearnerConfigBase, TorchLearner, Totals, check_checkpoint
from streamflow.learners.preprocessing import column_indices


def is_level_stat(key: str) -> bool:
    """A learn stat whose latest value is the figure (a loss, a gate state), not a count to sum."""
    return key in ("loss", "grad_norm") or key.endswith("_loss") or key.startswith("gate_")


class CompositeLearner(ABC):
    """A learner made of named :class:`TorchLearner` parts (see the module docstring)."""

    kind: ClassVar[str]

    def __init__(self, config: LearnerConfigBase, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.features = config.features
        self.coordinates = config.coordinates
        self.name = config.name or f"{config.kind}-{config.coordinates}"
        self.parts: dict[str, TorchLearner] = self._build_parts()
        self.totals = Totals()
        self.collective: Collective = SoloCollective(device=self.device)
        self._region_column: int | None = None
        self._width: int | None = None

    @abstractmethod
    def _build_parts(self) -> dict[str, TorchLearner]:
        """The parts, built from the composite's config (deterministically: a checkpoint relies on it)."""

    @abstractmethod
    def _score(self, x: Tensor) -> Tensor:
        """Scores of stream rows x (on the device, float32), called without gradient."""

    @abstractmethod
    def _learn(self, x: Tensor) -> dict[str, float]:
        """Let the parts learn from frame x; the template's stats plus the composite's own."""

    @property
    @abstractmethod
    def region_feature(self) -> str:
        """The stream column whose bands the composite routes events by (mjj)."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    @property
    def warming_up(self) -> bool:
        """True while any part's input standardisation is still moving (see TorchLearner.warming_up)."""
        return any(part.warming_up for part in self.parts.values())

    @property
    def model(self) -> nn.Module:
        """Every part's trained module (for weight digests across ranks)."""
        return nn.ModuleDict({name: part.model for name, part in self.parts.items()})

    def distribute(self, collective: Collective) -> None:
        self.collective = collective
        for part in self.parts.values():
            part.distribute(collective)

    def bind(self, names: Sequence[str]) -> None:
        for part in self.parts.values():
            part.bind(names)
        self._region_column = column_indices([self.region_feature], list(names))[0]
        self._width = len(names)

    def region(self, x: Tensor) -> Tensor:
        """The band feature of stream rows x."""
        if self._region_column is None:
            raise RuntimeError(f"learner {self.name!r} is not bound to a stream: call bind(names) first")
        return x[:, self._region_column]

    def score(self, x: Tensor) -> Tensor:
        x = x.to(self.device, torch.float32)
        if x.shape[0] == 0:
            return torch.empty(0, device=self.device)
        with torch.no_grad():
            return self._score(x).float()

    def learn(self, x: Tensor) -> dict[str, float]:
        stats = self._learn(x.to(self.device, torch.float32))
        self.totals.add(stats)
        return stats

    def _sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the data-parallel ranks (unchanged alone)."""
        return self.collective.totals(values)

    @staticmethod
    def combine(main: dict[str, float], *others: dict[str, float]) -> dict[str, float]:
        """The template's stats of several parts' learn calls: loss and grad_norm of ``main``, counts summed;
        ``dropped`` is the most any part dropped (each part drops the same stream rows by its own columns)."""
        stats = {"loss": main.get("loss", float("nan")), "grad_norm": main.get("grad_norm", float("nan"))}
        every = (main, *others)
        for key in ("steps", "skipped", "events"):
            stats[key] = float(sum(s.get(key, 0) for s in every))
        stats["dropped"] = float(max(s.get("dropped", 0) for s in every))
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "config": to_dict(self.config),
            "parts": {name: part.state_dict() for name, part in self.parts.items()},
            "extra": self._extra_state(),
            "totals": to_dict(self.totals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_checkpoint(self, state, "parts")
        for name, part in self.parts.items():
            part.load_state_dict(state["parts"][name])
        self._load_extra_state(state["extra"])
        self.totals = Totals(**state["totals"])
