"""Autoencoder learner: score = reconstruction error, the source paper's small AE.

Dense encoder k -> 50 -> 20 -> 10 -> 1 (a one-unit bottleneck), mirrored decoder
1 -> 10 -> 20 -> 50 -> k, ReLU between layers, linear bottleneck and output. It
learns the bulk of the stream; an event far from the bulk reconstructs badly:

    score = (1/k) sum_j (z_j - AE(z)_j)^2

in the learner's standardised frame z. Like a density, this depends on the
coordinates the features are written in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from streamflow.errors import ConfigError
from streamflow.learners.base import LearnerConfigBase, TorchLearner, mlp


@dataclass(frozen=True, kw_only=True)
class AutoencoderConfig(LearnerConfigBase):
    """hidden: encoder widths (the decoder mirrors them); bottleneck: latent width."""

    kind: Literal["autoencoder"] = "autoencoder"
    hidden: tuple[int, ...] = (50, 20, 10)
    bottleneck: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bottleneck < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError(
                f"autoencoder: widths must be >= 1, got hidden {list(self.hidden)}, bottleneck {self.bottleneck}"
            )


class AutoencoderLearner(TorchLearner):
    """Online autoencoder; score = mean squared reconstruction error."""

    kind = "autoencoder"
    config: AutoencoderConfig

    def _build_model(self) -> nn.Module:
        config: AutoencoderConfig = self.config
        widths = (len(config.features), *config.hidden, config.bottleneck)
        return nn.Sequential(mlp(widths), mlp(widths[::-1]))

    @staticmethod
    def _errors(model: nn.Module, z: Tensor) -> Tensor:
        return ((model(z) - z) ** 2).mean(dim=1)

    def _score(self, model: nn.Module, x: Tensor) -> Tensor:
        return self._errors(model, self.inputs(x))

    def _training_tensors(self, x: Tensor) -> tuple[Tensor, ...]:
        return (self.inputs.fit(x),)

    def _loss(self, model: nn.Module, *batch: Tensor) -> Tensor:
        return self._errors(model, batch[0]).mean()
