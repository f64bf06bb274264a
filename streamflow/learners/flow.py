"""Normalizing-flow learner: score = -log p(y | context), the density in the learner's frame.

The flow models z, the standardised features in the learner's coordinates
y = T(x) (see preprocessing.py), optionally conditional on a context feature c
(mjj for LHCO, itself put through ``context_coordinates`` -- log by default -- and
standardised). Because z = (y - mu) / sigma is affine,

    score = -log p_Y(y | c) = -log p_Z(z | c) + sum_j log sigma_j,

the negative log density in the *frame's* coordinates, not in physical units:
p_Y(y) = p_X(x) |dx/dy|, so the same events rank differently in different frames.
That is the point of the coordinate study, not a bug; a likelihood ratio (CWoLA)
does not have this dependence.

``model_coordinates`` lets the flow learn in other coordinates u = T_m(x) than the ones
it reports in, y = T(x), by the exact change of variables

    log p_Y(y) = log p_U(u) + log|det dT_m/dx| - log|det dT/dx|

(both Jacobians from events.frames). One well-learnt model then gives the density
in any frame, separating the coordinate effect from how hard a frame is to learn
in: normal_cdf squeezes a Gaussian into a box with hard edges, tanh_shift into a
spike against y = 1, and a flow learning there directly needs splines and longer.

Trained on all events by default; ``train_where`` restricts it to e.g. the
background-only reference sample (Gaussian toy) or the mjj sidebands (LHCO), so
that p is the background density. ``sample`` draws events back in physical units
(the flow as a compressed copy of the stream it has seen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from streamflow.errors import ConfigError
from streamflow.events.coordinates import get_coordinates
from streamflow.learners.base import LearnerConfigBase, TorchLearner
from streamflow.learners.flow_backends import Density, build_density
from streamflow.learners.preprocessing import Preprocessor

SAMPLE_ROUNDS = 20
"""How often a sample outside a bounded frame's image is redrawn."""


@dataclass(frozen=True, kw_only=True)
class FlowConfig(LearnerConfigBase):
    """A masked autoregressive flow (see flow_backends.py for the layers).

    context: a stream feature the density is conditional on (e.g. "mjj"), or None.
    context_coordinates: the coordinates of the context before standardisation.
    model_coordinates: the frame the flow learns in, if not ``frame`` (see FlowLearner).
    """

    kind: Literal["flow"] = "flow"
    backend: Literal["nflows", "zuko"] = "nflows"
    transform: Literal["affine", "spline"] = "affine"
    context: str | None = None
    context_coordinates: str = "log_mass"
    model_coordinates: str | None = None
    transforms: int = 4
    hidden: int = 64
    blocks: int = 2
    bins: int = 8
    tail_bound: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        get_coordinates(self.context_coordinates)
        if self.model_coordinates is not None:
            get_coordinates(self.model_coordinates)
            if "bounded" in (self.coordinates, self.model_coordinates) and self.model_coordinates != self.coordinates:
                raise ConfigError("flow: the bounded frame fits its range on the events it learns; it cannot be "
                                  "combined with another model_coordinates")
        if self.context is not None and self.context in self.features:
            raise ConfigError(f"flow: context {self.context!r} is also an input feature")
        for key in ("transforms", "hidden", "blocks"):
            if getattr(self, key) < 1:
                raise ConfigError(f"flow: {key} must be >= 1, got {getattr(self, key)!r}")
        if self.bins < 2:
            raise ConfigError(f"flow: bins must be >= 2, got {self.bins!r}")
        if not self.tail_bound > 0:
            raise ConfigError(f"flow: tail_bound must be > 0, got {self.tail_bound!r}")


class FlowLearner(TorchLearner):
    """Online density estimation with a (conditional) masked autoregressive flow."""

    kind = "flow"
    config: FlowConfig
    model: nn.Module

    def __init__(self, config: FlowConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(config, device)
        self._report_coordinates = (None if self._input_coordinates() == config.coordinates
                                    else get_coordinates(config.coordinates))
        self.context: Preprocessor | None = None
        if config.context is not None:
            self.context = Preprocessor(
                (config.context,), config.context_coordinates, config.warmup_events, self.device
            )
            self.preprocessors.append(self.context)

    def _input_coordinates(self) -> str:
        return self.config.model_coordinates or self.config.coordinates

    def _build_model(self) -> nn.Module:
        config: FlowConfig = self.config
        return build_density(config.backend, len(config.features), int(config.context is not None), config)

    def _context(self, x: Tensor) -> Tensor | None:
        return None if self.context is None else self.context(x)

    def _score(self, model: nn.Module, x: Tensor) -> Tensor:
        density: Density = model  # type: ignore[assignment]
        log_p = density.log_prob(self.inputs(x), self._context(x)) - self.inputs.log_scale
        if self._report_coordinates is not None:
            raw = x.index_select(1, self.inputs.columns)
            log_p = log_p + self.inputs.coordinates.log_abs_det_jacobian(raw, self.features)
            log_p = log_p - self._report_coordinates.log_abs_det_jacobian(raw, self.features)
        return -log_p

    def _training_tensors(self, x: Tensor) -> tuple[Tensor, ...]:
        z = self.inputs.fit(x)
        if self.context is None:
            return (z,)
        return z, self.context.fit(x)

    def _loss(self, model: nn.Module, *batch: Tensor) -> Tensor:
        density: Density = model  # type: ignore[assignment]
        z, context = batch if len(batch) == 2 else (batch[0], None)
        return -density.log_prob(z, context).mean()

    def sample(self, n: int, context: np.ndarray | None = None) -> np.ndarray:
        """n events float32[n, len(features)] in physical units (inverse standardisation and frame).

        context: float[n] physical values of the context feature (e.g. mjj in GeV), one
        per sample; required for a conditional flow, refused for an unconditional one.
        A bounded frame (tanh_shift maps onto (-1, 1)) has no inverse for a sample the
        flow puts outside its image: such samples are redrawn (the flow's density
        truncated to the image), up to ``SAMPLE_ROUNDS`` times; any left are NaN rows.
        """
        if context is not None:
            values = np.asarray(context, dtype=np.float32).reshape(-1)
            if values.shape[0] != n:
                raise ConfigError(f"sample: {values.shape[0]} context values for {n} samples")
            return self.sample_tensor(n, torch.from_numpy(values).to(self.device)).float().cpu().numpy()
        return self.sample_tensor(n, None).float().cpu().numpy()

    def sample_tensor(self, n: int, context: Tensor | None) -> Tensor:
        """:meth:`sample` on the learner's device: context float[n] physical values, a tensor."""
        if self.context is None:
            if context is not None:
                raise ConfigError(f"learner {self.name!r} is not conditional: sample it without context")
            c = None
        else:
            if context is None:
                raise ConfigError(f"learner {self.name!r} is conditional on {self.config.context!r}: give context")
            c = self.context.encode(context.reshape(-1, 1).float())
        density: Density = self.scoring_model  # type: ignore[assignment]
        with torch.no_grad():
            x = self.inputs.decode(density.sample(n, c))
            for _ in range(SAMPLE_ROUNDS):
                bad = ~torch.isfinite(x).all(dim=1)
                if not bad.any():
                    break
                redo = bad.nonzero().squeeze(1)
                x[redo] = self.inputs.decode(density.sample(len(redo), None if c is None else c[redo]))
        return x
