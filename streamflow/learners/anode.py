"""Online ANODE: two conditional flows, the SR data and the sideband background, and their log ratio.

ANODE (Nachman & Shih 2020) in a stream: the score of an SR event is

    R(x | m) = log p_SR(x | m) - log p_bkg(x | m),

with p_SR a conditional flow learning SR events only and p_bkg one learning
sideband events only, interpolated into the SR through its mjj context. For a
narrow resonance on a smooth background, R = log(1 + S(x|m)/B(x|m)): monotone in
the local S/B. It is a likelihood ratio: under a change of coordinates y = T(x)
both densities gain the same log|det dT/dx|, which cancels -- ANODE's selections do
not depend on the coordinates, unlike the density score -log p of one flow.

The two flows are built alike so that R measures the data, not a difference
between the models: the same architecture, coordinates, optimiser, EMA and seed
(so R = 0 exactly before either learns), and **one standardisation**, frozen from
the sideband events' moments (the SR flow reads the background flow's
preprocessors, see BandFlow.share_standardisation). Neither flow learns during the
warm-up: the composite first merges ``warmup_events`` events of the SR and the
sidebands into the shared moments (an affine map applied to both flows: R does not
depend on it, so SR events in it cannot fake a signal; taking both bands halves
the wait on a small stream; default 1,000 events, means and widths to ~3%, about
one frame of 4,096), then
both start in the same frame and learn every frame after with the same batch size
and passes per frame (the SR flow, with fewer events per frame, takes
proportionally fewer steps: per event learnt they are equally far along). Both
count the events they learnt from the other's bands (stay 0).

Score: R standardised per mass slice of the SR
(:class:`~streamflow.learners.mass_slices.MassSliceStandardiser`, ``mass_slices``
slices, F_b measured on the last ``reference_events`` SR events re-scored by the
current flows after each frame): z = Phi^-1(F_b(R)), R's quantile in its slice, on SR events
once the flows have started; NaN elsewhere and before. Raw R sculpts mjj: its
spread on background grows across the SR towards the sparser high-mass end, so
one threshold on R gathered the accepted events there (KS D = 0.10 on a
background-only stream); z is N(0, 1) in every slice.
Cost per frame: two flow forwards on the SR events to score, two over the
reference sample for the calibration, one flow training pass on each region's
events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from streamflow.learners.bands import (
    Band,
    BandFlow,
    FlowShape,
    band_flow_config,
    check_band_options,
    check_slices,
    in_bands,
)
from streamflow.learners.base import LearnerConfigBase, TorchLearner
from streamflow.learners.composite import CompositeLearner
from streamflow.learners.mass_slices import MassSliceCalibration


@dataclass(frozen=True, kw_only=True)
class AnodeConfig(LearnerConfigBase):
    """Online ANODE (see the module docstring); flow: the shape of both flows.

    Defaults as CATHODE's flow: log-mass coordinates, batches of 256, two passes per frame at lr 3e-3 (a
    flow learning only one band's ~15% of the stream needs many more steps per event than one on all of it).
    mass_slices, reference_events: the score's per-mass-slice standardisation (see the module docstring).
    """

    kind: Literal["anode"] = "anode"
    coordinates: str = "log_mass"
    warmup_events: int = 1000
    lr: float = 3e-3
    batch_size: int = 256
    steps_per_frame: int = 2
    region_feature: str = "mjj"
    signal_region: Band = (3300.0, 3700.0)
    sidebands: tuple[Band, Band] = ((3100.0, 3300.0), (3700.0, 3900.0))
    flow: FlowShape = field(default_factory=FlowShape)
    mass_slices: int = 8
    reference_events: int = 4_000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_band_options(self)
        check_slices(self)
        band_flow_config(self, "background", self.flow, self.region_feature)  # the flows' own checks


class AnodeLearner(CompositeLearner):
    """Online ANODE: parts ``signal_region`` and ``background``, two band flows with one standardisation."""

    kind = "anode"
    config: AnodeConfig

    @property
    def region_feature(self) -> str:
        return self.config.region_feature

    def _build_parts(self) -> dict[str, TorchLearner]:
        config = self.config
        background = BandFlow(band_flow_config(config, "background", config.flow, config.region_feature),
                              config.sidebands, (config.signal_region,), self.device)
        signal_region = BandFlow(band_flow_config(config, "signal_region", config.flow, config.region_feature),
                                 (config.signal_region,), config.sidebands, self.device)
        signal_region.share_standardisation(background)
        self.calibration = MassSliceCalibration(config.signal_region, config.mass_slices, config.reference_events,
                                                self.device)
        return {"signal_region": signal_region, "background": background}

    @property
    def background(self) -> BandFlow:
        return self.parts["background"]  # type: ignore[return-value]

    @property
    def signal_region(self) -> BandFlow:
        return self.parts["signal_region"]  # type: ignore[return-value]

    @property
    def started(self) -> bool:
        """True once the shared standardisation is frozen and both flows learn."""
        return all(pre.frozen for pre in self.background.preprocessors)

    def log_ratio(self, x: Tensor) -> Tensor:
        """R(x | m) of rows x; each flow's score is -log p in the learner's coordinates, so the Jacobians and
        scales cancel."""
        return self.background.score(x) - self.signal_region.score(x)

    def _score(self, x: Tensor) -> Tensor:
        if not self.started:
            return torch.full((x.shape[0],), math.nan, device=self.device)
        inside = in_bands(self.region(x), (self.config.signal_region,))
        return self.calibration.score(x, inside, self.log_ratio, self.region)

    def _learn(self, x: Tensor) -> dict[str, float]:
        background, signal_region, config = self.background, self.signal_region, self.config
        if not self.started:
            bands = x[in_bands(self.region(x), (config.signal_region, *config.sidebands))]
            for pre in background.preprocessors:
                pre.observe(pre.in_coordinates(bands))
        if not self.started:
            return self.combine({})
        self.calibration.add(x[in_bands(self.region(x), (config.signal_region,))])
        leaked = [background.forbidden_events, signal_region.forbidden_events]
        bkg, sr = background.learn(x), signal_region.learn(x)
        stats = self.combine(bkg, sr)
        stats.update(signal_region_loss=sr["loss"],
                     background_sr_events=float(background.forbidden_events - leaked[0]),
                     signal_region_sb_events=float(signal_region.forbidden_events - leaked[1]))
        self.calibration.recalibrate(self.log_ratio, self.region, self.collective.sum_)
        return stats

    def _extra_state(self) -> dict[str, Any]:
        return {"calibration": self.calibration.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.calibration.load_state_dict(state["calibration"])
