"""A learner's view of the stream: select columns, change coordinates, standardise.

    x (stream, F columns) --select--> x_k (k named columns)
                          --coordinates--> y = T(x_k)           (streamflow.events.coordinates)
                          --scale---> z = (y - mu) / sigma

mu and sigma are the running mean and standard deviation of y over the events
the learner trains on (batched Welford / Chan et al. moment merging, in float64 on
the device), frozen once ``warmup_events`` have been merged (whole frames: the
frame that crosses the mark still counts): after the warm-up the model's input
scale stops moving, so its score scale does too. The model learns during the
warm-up as well, on the moments so far. Before any event is seen mu = 0, sigma = 1.

A stateful frame (``bounded``: min-max range then logit) is fitted once, by
:meth:`Preprocessor.prepare` on the first ``BOUNDED_FIT_EVENTS`` or more events the
learner learns from, before any moment is taken; its range is checkpointed with
the moments. Until then it scores nothing (NaN).

The standardisation is affine, so densities in z and y differ by a constant:
log p_Y(y) = log p_Z(z) - sum_j log sigma_j (``log_scale``).
Everything is vectorised torch code on the learner's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from streamflow.distributed import Collective, SoloCollective
from streamflow.errors import ConfigError
from streamflow.events.coordinates import BoundedLogitMap, get_coordinates

BOUNDED_FIT_EVENTS = 100
"""A bounded frame's range is fitted on the first batch of learnt events at least this large (all ranks')."""


class Preprocessor:
    """Columns ``features`` of the stream, in coordinates ``coordinates``, standardised."""

    def __init__(self, features: Sequence[str], coordinates: str, warmup_events: int, device: torch.device) -> None:
        if not features:
            raise ConfigError("a learner needs at least one feature")
        self.features = tuple(features)
        self.coordinates = get_coordinates(coordinates)
        self.warmup_events = warmup_events
        self.device = device
        k = len(self.features)
        self._columns: Tensor | None = None
        self.count = 0
        self.mean = torch.zeros(k, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(k, dtype=torch.float64, device=device)
        self.collective: Collective = SoloCollective(device=device)
        """A data-parallel scorer's ranks: the warm-up moments are then those of all ranks' events."""
        self._refresh()

    def bind(self, names: Sequence[str]) -> None:
        """Resolve the stream's column indices of this preprocessor's features."""
        self._columns = torch.tensor(column_indices(self.features, names), device=self.device)

    @property
    def columns(self) -> Tensor:
        if self._columns is None:
            raise RuntimeError("learner is not bound to a stream schema: call bind(names) first")
        return self._columns

    @property
    def frozen(self) -> bool:
        """True once the warm-up is over and mu, sigma no longer move."""
        return self.count >= self.warmup_events

    def prepare(self, x: Tensor) -> None:
        """Fit a stateful frame's range on stream rows x (finite, learnt-from rows), once.

        Data-parallel, every rank calls this together: the range is fitted on all ranks' rows."""
        coordinates = self.coordinates
        if not isinstance(coordinates, BoundedLogitMap) or coordinates.fitted:
            return
        n = int(self.collective.totals([x.shape[0]])[0])
        if n < BOUNDED_FIT_EVENTS:
            return
        coordinates.fit(x.index_select(1, self.columns), self.features, reduce_max=self.collective.max_)

    def in_coordinates(self, x: Tensor) -> Tensor:
        """y = T(selected columns of x), float32."""
        return self.coordinates.forward(x.index_select(1, self.columns), self.features)

    def observe(self, y: Tensor) -> None:
        """Merge the finite rows of in_coordinates values ``y`` into the moments, unless frozen.

        Data-parallel (``collective`` of several ranks), the batch is the union of every
        rank's rows: their counts and sums about the current mean (the same on all ranks)
        are summed across ranks (:meth:`Collective.pooled_moments`), so all ranks hold the
        same moments and freeze together.
        """
        if self.frozen:
            return
        y = y[torch.isfinite(y).all(dim=1)].double()
        n, batch_mean, batch_m2 = self.collective.pooled_moments(y, self.mean)
        if n == 0:
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total
        self._refresh()

    def _refresh(self) -> None:
        var = self.m2 / (self.count - 1) if self.count > 1 else torch.ones_like(self.m2)
        std = var.sqrt()
        # A constant column (std 0) is left unscaled rather than divided by zero.
        std = torch.where(std > 0, std, torch.ones_like(std))
        self._mu = self.mean.float()
        self._sigma = std.float()
        self.log_scale = float(std.log().sum())

    def __call__(self, x: Tensor) -> Tensor:
        """z for stream rows x (no side effects)."""
        return self.encode(x.index_select(1, self.columns))

    def fit(self, x: Tensor) -> Tensor:
        """z for stream rows x, after merging them into the moments during the warm-up."""
        y = self.in_coordinates(x)
        self.observe(y)
        return (y - self._mu) / self._sigma

    def encode(self, values: Tensor) -> Tensor:
        """z for physical values of the selected columns, values[n, k]."""
        return (self.coordinates.forward(values, self.features) - self._mu) / self._sigma

    def decode(self, z: Tensor) -> Tensor:
        """Physical values of the selected columns for standardised z (inverse scale, inverse frame)."""
        return self.coordinates.inverse(z * self._sigma + self._mu, self.features)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"count": self.count, "mean": self.mean.clone(), "m2": self.m2.clone()}
        if isinstance(self.coordinates, BoundedLogitMap):
            state["bounds"] = self.coordinates.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.coordinates, BoundedLogitMap):
            self.coordinates.load_state_dict(state.get("bounds") or {})
        self.count = int(state["count"])
        self.mean = state["mean"].to(self.device, torch.float64)
        self.m2 = state["m2"].to(self.device, torch.float64)
        self._refresh()


def column_indices(features: Sequence[str], names: Sequence[str]) -> list[int]:
    """Index of each of ``features`` in the stream's ``names``; ConfigError naming a missing one."""
    index = {name: i for i, name in enumerate(names)}
    missing = [f for f in features if f not in index]
    if missing:
        raise ConfigError(f"feature {missing[0]!r} is not in the stream (it has: {', '.join(names)})")
    return [index[f] for f in features]
