"""CWoLA learner: classification without labels (Metodiev, Nachman, Thaler 2017).

An MLP h(x) learns to tell events in a signal region of a *region feature* (mjj for
LHCO) from events in the sideband around it; truth labels are never used:

    label 1: signal_region[0] <= r < signal_region[1]
    label 0: sideband[0] <= r < sideband[1], outside the signal region
    neither: outside the sideband -- not learnt from, and scored NaN (the trigger
             never accepts them).

The region feature is not an input. Trained with class weights from the running
class counts (each class weighs half of the loss), the optimal h is
p_SR(x) / (p_SR(x) + p_SB(x)), so the score logit h = log p_SR(x)/p_SB(x) is
monotone in the likelihood ratio of signal to background (for a narrow resonance
in the SR) and, unlike a density, does not depend on the coordinates: the
Jacobian of a change of coordinates cancels in the ratio.

The Gaussian toy uses the same learner "data vs reference": region_feature =
"sample", signal_region = (0.5, 1.5), sideband = (-0.5, 1.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from streamflow.errors import ConfigError
from streamflow.learners.bands import in_bands
from streamflow.learners.base import LearnerConfigBase, TorchLearner, mlp


@dataclass(frozen=True, kw_only=True)
class CWoLAConfig(LearnerConfigBase):
    """CWoLA classifier; hidden: widths of the MLP's hidden layers."""

    kind: Literal["cwola"] = "cwola"
    region_feature: str = "mjj"
    signal_region: tuple[float, float] = (3300.0, 3700.0)
    sideband: tuple[float, float] = (3100.0, 3900.0)
    hidden: tuple[int, ...] = (64, 64, 64)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.region_feature in self.features:
            raise ConfigError(f"cwola: the region feature {self.region_feature!r} must not be an input feature")
        (s_lo, s_hi), (b_lo, b_hi) = self.signal_region, self.sideband
        if not (b_lo <= s_lo < s_hi <= b_hi) or (b_lo, b_hi) == (s_lo, s_hi):
            raise ConfigError(
                f"cwola: signal_region {list(self.signal_region)} must lie inside, and be narrower than, "
                f"the sideband {list(self.sideband)}"
            )
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"cwola: hidden widths must be >= 1, got {list(self.hidden)}")


class CWoLALearner(TorchLearner):
    """Online weakly supervised classifier, signal region vs sideband."""

    kind = "cwola"
    config: CWoLAConfig

    def __init__(self, config: CWoLAConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(config, device)
        self.aux_features["region"] = config.region_feature
        self.class_counts = [0, 0]
        """Events learnt from with label 0 (sideband) and 1 (signal region)."""

    def _build_model(self) -> nn.Module:
        config: CWoLAConfig = self.config
        return mlp((len(config.features), *config.hidden, 1))

    def _in_sideband(self, x: Tensor) -> Tensor:
        return in_bands(self.aux(x, "region"), (self.config.sideband,))

    _learnable = _in_sideband

    def _in_signal_region(self, x: Tensor) -> Tensor:
        return in_bands(self.aux(x, "region"), (self.config.signal_region,))

    def _score(self, model: nn.Module, x: Tensor) -> Tensor:
        logit = model(self.inputs(x)).squeeze(-1)
        return torch.where(self._in_sideband(x), logit, torch.full_like(logit, float("nan")))

    def _training_tensors(self, x: Tensor) -> tuple[Tensor, ...]:
        label = self._in_signal_region(x).float()
        n1 = int(label.sum())
        # The weights follow all ranks' counts, as the gradient does.
        counts = [int(c) for c in self.collective.totals([len(label) - n1, n1])]
        self.class_counts[0] += counts[0]
        self.class_counts[1] += counts[1]
        # w_c = N / (2 N_c): both classes weigh the same in the loss.
        total = sum(self.class_counts)
        w0, w1 = (total / (2 * c) if c else 0.0 for c in self.class_counts)
        weight = torch.where(label > 0, w1, w0)
        return self.inputs.fit(x), label, weight

    def _loss(self, model: nn.Module, *batch: Tensor) -> Tensor:
        z, label, weight = batch
        logit = model(z).squeeze(-1)
        losses = nn.functional.binary_cross_entropy_with_logits(logit, label, reduction="none")
        return (weight * losses).sum() / weight.sum()

    def _step_weight(self, *batch: Tensor) -> Tensor:
        return batch[2].sum()  # the loss is normalised by the class weights, not the event count

    def _extra_state(self) -> dict[str, Any]:
        return {"class_counts": list(self.class_counts)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.class_counts = [int(c) for c in state["class_counts"]]
