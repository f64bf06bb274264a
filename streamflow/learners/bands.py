"""Bands of the resonance variable (mjj): a signal region, its two sidebands, and a flow confined to bands.

A bump hunt in mjj assumes the background's feature distribution p(x | m) varies
smoothly with m, so what a model learns in the sidebands SB = [b0, s0) u [s1, b1)
interpolates into the signal region SR = [s0, s1) (Hallin et al. 2022, CATHODE;
Nachman & Shih 2020, ANODE). The bands are half-open and must not overlap: an SR
event in a sideband would leak a possible signal into the background model.

:class:`BandFlow` is a :class:`~streamflow.learners.flow.FlowLearner` that learns
only from events in its bands (the sidebands for a background model, the SR for
ANODE's data model) and counts the events it learnt from that lie in its
``forbidden`` bands -- a check, not a filter: the count must stay 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from streamflow.errors import ConfigError
from streamflow.learners.base import LearnerConfigBase
from streamflow.learners.flow import FlowConfig, FlowLearner

Band = tuple[float, float]


@dataclass(frozen=True)
class FlowShape:
    """The conditional flow of a composite learner (a TOML table ``flow = {...}``; see FlowConfig)."""

    backend: Literal["nflows", "zuko"] = "nflows"
    transform: Literal["affine", "spline"] = "affine"
    transforms: int = 4
    hidden: int = 64
    blocks: int = 2
    bins: int = 8
    tail_bound: float = 4.0
    context_coordinates: str = "log_mass"


def part_options(config: LearnerConfigBase) -> dict[str, Any]:
    """The options a composite passes on to each of its parts (features, coordinates, optimiser, EMA)."""
    keys = ("features", "coordinates", "warmup_events", "lr", "batch_size", "steps_per_frame", "grad_clip",
            "ema_decay", "seed")
    return {key: getattr(config, key) for key in keys}


def band_flow_config(config: LearnerConfigBase, part: str, shape: FlowShape, context: str) -> FlowConfig:
    """The FlowConfig of a composite's flow part ``part``: the composite's features, coordinates, optimiser."""
    return FlowConfig(name=f"{config.name}.{part}", context=context, **vars(shape), **part_options(config))


def check_band_options(config: Any) -> None:
    """The checks every band learner's config shares: its bands (:func:`check_bands`), a region feature that
    is not an input, and no ``train_where`` (the bands route the events)."""
    kind = config.kind
    check_bands(kind, config.signal_region, config.sidebands)
    if config.region_feature in config.features:
        raise ConfigError(f"{kind}: the region feature {config.region_feature!r} must not be an input feature")
    if config.train_where is not None:
        raise ConfigError(f"{kind}: train_where is not an option (the bands route the events)")


def check_slices(config: Any) -> None:
    """ConfigError unless the per-mass-slice standardisation's options are >= 1 (see learners.mass_slices)."""
    for key in ("mass_slices", "reference_events"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{config.kind}: {key} must be >= 1, got {getattr(config, key)!r}")


def check_bands(kind: str, signal_region: Band, sidebands: tuple[Band, Band]) -> None:
    """ConfigError unless SR and sidebands are ordered, positive, non-overlapping bands: SB_low < SR < SB_high."""
    bands = {"signal_region": signal_region, "low sideband": sidebands[0], "high sideband": sidebands[1]}
    for label, (lo, hi) in bands.items():
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigError(f"{kind}: {label} [{lo}, {hi}] must have finite low < high")
        if lo < 0:
            raise ConfigError(f"{kind}: {label} [{lo}, {hi}] lies outside the data (masses are >= 0)")
    (s0, s1), low_end, high_start = signal_region, sidebands[0][1], sidebands[1][0]
    if low_end > s0 or high_start < s1:
        raise ConfigError(
            f"{kind}: sidebands {[list(b) for b in sidebands]} overlap the signal_region {list(signal_region)}: "
            f"the low sideband must end at or below {s0}, the high one start at or above {s1}"
        )


def in_bands(values: Tensor, bands: Sequence[Band]) -> Tensor:
    """True where ``low <= value < high`` for one of ``bands`` (NaN is in none)."""
    inside = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    for lo, hi in bands:
        inside |= (values >= lo) & (values < hi)
    return inside


class BandFlow(FlowLearner):
    """A conditional flow (context: the band feature) that learns only from events inside ``bands``.

    ``forbidden_events`` counts the events learnt from inside ``forbidden`` (all ranks'):
    the sideband background model of CATHODE must never see an SR event.
    """

    def __init__(self, config: FlowConfig, bands: Sequence[Band], forbidden: Sequence[Band],
                 device: str | torch.device = "cpu") -> None:
        if config.context is None:
            raise ConfigError(f"{config.name}: a band flow is conditional on its band feature")
        super().__init__(config, device)
        self.bands = tuple(bands)
        self.forbidden = tuple(forbidden)
        self.aux_features["band"] = config.context
        self.forbidden_events = 0

    def _learnable(self, x: Tensor) -> Tensor:
        return in_bands(self.aux(x, "band"), self.bands)

    def _training_tensors(self, x: Tensor) -> tuple[Tensor, ...]:
        leaked = int(in_bands(self.aux(x, "band"), self.forbidden).sum())
        leaked = int(self.collective.totals([leaked])[0])
        self.forbidden_events += leaked
        return super()._training_tensors(x)

    def share_standardisation(self, source: FlowLearner) -> None:
        """Standardise inputs and context with ``source``'s preprocessors (the same objects, so the same
        frozen moments); the owner then fits them, this flow only reads them."""
        assert source.context is not None
        self.inputs, self.context = source.inputs, source.context
        self.preprocessors = [source.inputs, source.context]

    def _extra_state(self) -> dict[str, Any]:
        return {"forbidden_events": self.forbidden_events}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.forbidden_events = int(state["forbidden_events"])
