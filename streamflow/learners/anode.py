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
warm-up: the composite first merges ``warmup_events`` sideband events into the
shared moments, then both start in the same frame and learn every frame after
with the same batch size and passes per frame (the SR flow, with fewer events per
frame, takes proportionally fewer steps: per event learnt they are equally far
along). Both count the events they learnt from the other's bands (stay 0).

Score: R on SR events once the flows have started; NaN elsewhere and before.
Cost per frame: two flow forwards on the SR events (score), one flow training pass
on each region's events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from streamflow.learners.bands import Band, BandFlow, FlowShape, band_flow_config, check_band_options, in_bands
from streamflow.learners.base import LearnerConfigBase, TorchLearner
from streamflow.learners.composite import CompositeLearner


@dataclass(frozen=True, kw_only=True)
class AnodeConfig(LearnerConfigBase):
    """Online ANODE (see the module docstring); flow: the shape of both flows.

    Defaults as CATHODE's flow: log-mass coordinates, batches of 256, two passes per frame at lr 3e-3 (a
    flow learning only one band's ~15% of the stream needs many more steps per event than one on all of it).
    """

    kind: Literal["anode"] = "anode"
    coordinates: str = "log_mass"
    lr: float = 3e-3
    batch_size: int = 256
    steps_per_frame: int = 2
    region_feature: str = "mjj"
    signal_region: Band = (3300.0, 3700.0)
    sidebands: tuple[Band, Band] = ((3100.0, 3300.0), (3700.0, 3900.0))
    flow: FlowShape = field(default_factory=FlowShape)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_band_options(self)
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

    def _score(self, x: Tensor) -> Tensor:
        nan = torch.full((x.shape[0],), math.nan, device=self.device)
        if not self.started:
            return nan
        # Each flow's score is -log p in the learner's coordinates; the Jacobians and scales cancel.
        ratio = self.background.score(x) - self.signal_region.score(x)
        return torch.where(in_bands(self.region(x), (self.config.signal_region,)), ratio, nan)

    def _learn(self, x: Tensor) -> dict[str, float]:
        background, signal_region = self.background, self.signal_region
        if not self.started:
            sideband = x[in_bands(self.region(x), self.config.sidebands)]
            for pre in background.preprocessors:
                pre.observe(pre.in_coordinates(sideband))
        if not self.started:
            return self.combine({})
        leaked = [background.forbidden_events, signal_region.forbidden_events]
        bkg, sr = background.learn(x), signal_region.learn(x)
        stats = self.combine(bkg, sr)
        stats.update(signal_region_loss=sr["loss"],
                     background_sr_events=float(background.forbidden_events - leaked[0]),
                     signal_region_sb_events=float(signal_region.forbidden_events - leaked[1]))
        return stats
