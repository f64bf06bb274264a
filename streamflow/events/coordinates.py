"""Coordinate frames: invertible maps of the feature columns a learner selected.

A frame y = T(x) changes nothing about the events, only the coordinates they are
written in. It matters because densities are not invariant under a change of
coordinates:

    p_Y(y) = p_X(x) |dx/dy| = p_X(x) / |det dT/dx|,

so a density score (a flow's -log p, an autoencoder's reconstruction error) picks
different "most anomalous" events in different frames, while a likelihood ratio
p_SR(y)/p_SB(y) = p_SR(x)/p_SB(x) does not change (the Jacobian cancels). Every
frame here is elementwise or triangular, so ``log_abs_det_jacobian`` is a sum of
per-column terms.

Frames (names as in the shared contract):

- ``identity``: y = x.
- ``log_mass``: y = log(max(x, MASS_FLOOR)) for the invariant masses (names
  starting with "m": mjj, mj1, mj2, mjmin, mjmax); every other column unchanged --
  in particular delta_m = mjmax - mjmin stays linear. delta_m is a difference, not
  a mass: it goes to 0 for two jets of equal mass, and log(delta_m) would blow that
  ordinary corner (1.65% of LHCO background has delta_m < 3 GeV) up into the
  "rarest" events of a density score. The source paper compares (m_j1, m_j2) with
  (log m_j1, log m_j2); a learner on CATHODE features (mjmin, delta_m, ...) thus
  gets log mjmin and keeps its features. The floor (1 MeV) guards the tiny negative
  and zero masses of real data; the inverse is exact for x >= floor.
- ``bounded``: y = logit(u), u = (x - lo) / (hi - lo) on every column, with
  [lo, hi] the range observed on the first events the map is fitted on (CATHODE's
  min-max scaling then logit), widened by ``BOUNDED_MARGIN`` of its span and cut
  to the column's physical range (:func:`physical_range`: masses, delta_m and the
  N-subjettiness values >= 0). The inverse x = lo + (hi - lo) sigmoid(y) lies inside
  (lo, hi) for every finite y, so a flow's samples stay physical by construction.
  u is clamped to [BOUNDED_EPS, 1 - BOUNDED_EPS] (an event exactly at a physical
  edge, e.g. tau1 = 0, or later outside the fitted range, gets a finite value
  there; the map is not invertible beyond). log |dy/dx| = -log(hi - lo) - log u(1 - u).
  The map is stateful: ``get_coordinates("bounded")`` gives a new, unfitted one,
  which its owner fits once (:meth:`BoundedLogitMap.fit`) and checkpoints; before
  that it maps every value to NaN (not scored).
- ``tau_ratio``: tau2_jX -> tau2_jX / (tau1_jX + 1e-5) and tau3_jX ->
  tau3_jX / (tau2_jX + 1e-5) (the N-subjettiness ratios tau21, tau32 of jet X,
  guarded because tau1 = 0 occurs in real data); tau1_jX is kept, which makes the
  map triangular and invertible: tau2 = r21 (tau1 + 1e-5), tau3 = r32 (tau2 + 1e-5).
- ``normal_cdf``: y = Phi(x) = (1 + erf(x / sqrt 2)) / 2 elementwise (the paper's
  toy: maps N(0, 1) to U(0, 1)); inverse x = sqrt 2 erfinv(2y - 1).
- ``tanh_shift``: y = tanh(x + 2) elementwise (the paper's toy); inverse
  x = atanh(y) - 2.

All maps are vectorised torch code and run on the tensor's device and dtype.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from streamflow.errors import ConfigError
from streamflow.events.schema import TAU_EPS

MASS_FLOOR = 1e-3
"""GeV; masses below it (real data has a few tiny negatives) are raised to it before the log."""


_TAU_COLUMN = re.compile(r"^tau([123])_(j\w+)$")


def _check(x: Tensor, names: Sequence[str]) -> None:
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ConfigError(f"frame input has shape {list(x.shape)} but {len(names)} column names")


class CoordinateMap:
    """An invertible coordinate map of named feature columns.

    Subclasses implement ``forward``, ``inverse`` and ``log_abs_det_jacobian``
    (log |det dy/dx| per event, so that log p_Y(y) = log p_X(x) - that).
    """

    name: str = ""

    def forward(self, x: Tensor, names: Sequence[str]) -> Tensor:
        raise NotImplementedError

    def inverse(self, y: Tensor, names: Sequence[str]) -> Tensor:
        raise NotImplementedError

    def log_abs_det_jacobian(self, x: Tensor, names: Sequence[str]) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"CoordinateMap({self.name!r})"


class IdentityMap(CoordinateMap):
    """y = x."""

    name = "identity"

    def forward(self, x: Tensor, names: Sequence[str]) -> Tensor:
        _check(x, names)
        return x

    def inverse(self, y: Tensor, names: Sequence[str]) -> Tensor:
        _check(y, names)
        return y

    def log_abs_det_jacobian(self, x: Tensor, names: Sequence[str]) -> Tensor:
        _check(x, names)
        return x.new_zeros(x.shape[0])


class ElementwiseMap(CoordinateMap):
    """y = f(x) on every column, with inverse g and log |f'(x)| given."""

    def __init__(
        self,
        name: str,
        f: Callable[[Tensor], Tensor],
        g: Callable[[Tensor], Tensor],
        log_df: Callable[[Tensor], Tensor],
    ) -> None:
        self.name = name
        self._f, self._g, self._log_df = f, g, log_df

    def forward(self, x: Tensor, names: Sequence[str]) -> Tensor:
        _check(x, names)
        return self._f(x)

    def inverse(self, y: Tensor, names: Sequence[str]) -> Tensor:
        _check(y, names)
        return self._g(y)

    def log_abs_det_jacobian(self, x: Tensor, names: Sequence[str]) -> Tensor:
        _check(x, names)
        return self._log_df(x).sum(dim=1)


def is_mass_column(name: str) -> bool:
    """The invariant masses of the LHCO schema (mjj, mj1, mj2, mjmin, mjmax): names starting with "m".

    delta_m is not one (a difference of masses, often near 0): ``log_mass`` leaves it linear."""
    return name.startswith("m")


_TAU_VALUE = re.compile(r"^tau\d+_j\w+$")


def physical_range(name: str) -> tuple[float, float]:
    """The range a column's values can physically take: masses, delta_m and N-subjettiness
    values (tau_N and their ratios) are >= 0; anything else is unbounded.

    The ratios tau21, tau32 are not capped at 1: with the file's subjet axes tau2 > tau1
    happens (tau21_jmin > 1 for 4.0% of the LHCO 60k file's events, up to 2.0)."""
    if is_mass_column(name) or name == "delta_m" or _TAU_VALUE.match(name):
        return 0.0, math.inf
    return -math.inf, math.inf


@functools.lru_cache(maxsize=64)
def _mass_mask(names: tuple[str, ...], device: torch.device) -> Tensor:
    """Which columns are masses, built once per (columns, device): no host-to-device copy per call."""
    return torch.tensor([is_mass_column(n) for n in names], device=device)


class LogMassMap(CoordinateMap):
    """y = log(max(x, MASS_FLOOR)) on mass-like columns, identity elsewhere."""

    name = "log_mass"

    @staticmethod
    def _mask(x: Tensor, names: Sequence[str]) -> Tensor:
        _check(x, names)
        return _mass_mask(tuple(names), x.device)

    def forward(self, x: Tensor, names: Sequence[str]) -> Tensor:
        mask = self._mask(x, names)
        return torch.where(mask, torch.log(x.clamp(min=MASS_FLOOR)), x)

    def inverse(self, y: Tensor, names: Sequence[str]) -> Tensor:
        mask = self._mask(y, names)
        return torch.where(mask, torch.exp(y), y)

    def log_abs_det_jacobian(self, x: Tensor, names: Sequence[str]) -> Tensor:
        mask = self._mask(x, names)
        # d log(m) / dm = 1/m; below the floor the map is constant (not invertible there).
        return torch.where(mask, -torch.log(x.clamp(min=MASS_FLOOR)), torch.zeros_like(x)).sum(dim=1)


class TauRatioMap(CoordinateMap):
    """tau2_jX -> tau2/(tau1 + eps), tau3_jX -> tau3/(tau2 + eps); tau1_jX kept."""

    name = "tau_ratio"

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _pairs(names: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
        """(column to divide, column of its denominator) for every tau2_jX, tau3_jX present."""
        index = {n: i for i, n in enumerate(names)}
        pairs = []
        for i, n in enumerate(names):
            match = _TAU_COLUMN.match(n)
            if match is None or match.group(1) == "1":
                continue
            below = f"tau{int(match.group(1)) - 1}_{match.group(2)}"
            if below not in index:
                raise ConfigError(f"frame 'tau_ratio' needs column {below!r} to transform {n!r}")
            pairs.append((i, index[below]))
        return tuple(pairs)

    def forward(self, x: Tensor, names: Sequence[str]) -> Tensor:
        _check(x, names)
        y = x.clone()
        for i, j in self._pairs(tuple(names)):
            y[:, i] = x[:, i] / (x[:, j] + TAU_EPS)
        return y

    def inverse(self, y: Tensor, names: Sequence[str]) -> Tensor:
        _check(y, names)
        x = y.clone()
        # tau2 before tau3: tau3's denominator is the recovered tau2.
        for i, j in sorted(self._pairs(tuple(names)), key=lambda p: names[p[0]]):
            x[:, i] = y[:, i] * (x[:, j] + TAU_EPS)
        return x

    def log_abs_det_jacobian(self, x: Tensor, names: Sequence[str]) -> Tensor:
        _check(x, names)
        total = x.new_zeros(x.shape[0])
        for _, j in self._pairs(tuple(names)):
            total = total - torch.log((x[:, j] + TAU_EPS).abs())
        return total


BOUNDED_MARGIN = 0.01
"""The bounded map's range is the observed one widened by this fraction of its span on each side."""
BOUNDED_EPS = 1e-6
"""u = (x - lo) / (hi - lo) is clamped to [eps, 1 - eps] before the logit."""


class BoundedLogitMap(CoordinateMap):
    """y = logit((x - lo) / (hi - lo)) per column, [lo, hi] fitted once on observed events (module docstring)."""

    name = "bounded"

    def __init__(self) -> None:
        self.low: Tensor | None = None
        self.high: Tensor | None = None

    @property
    def fitted(self) -> bool:
        return self.low is not None

    def fit(self, x: Tensor, names: Sequence[str], reduce_max: Callable[[Tensor], Tensor] | None = None) -> None:
        """Fix [lo, hi] from the finite values of x (every column needs at least two distinct ones).

        ``reduce_max``: an element-wise maximum over data-parallel ranks, so all ranks fit one range."""
        _check(x, names)
        values = x.double()
        finite = torch.isfinite(values)
        big = torch.full_like(values, math.inf)
        low = torch.where(finite, values, big).amin(dim=0) if len(values) else big.new_full((x.shape[1],), math.inf)
        high = (-torch.where(finite, -values, big).amin(dim=0) if len(values)
                else big.new_full((x.shape[1],), -math.inf))
        if reduce_max is not None:
            both = reduce_max(torch.cat([-low, high]))
            low, high = -both[: x.shape[1]], both[x.shape[1]:]
        if not bool(torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
            raise ConfigError(f"coordinates 'bounded': a column of {list(names)} has fewer than two distinct "
                              "finite values to fit its range on")
        span = high - low
        limits = torch.tensor([physical_range(n) for n in names], dtype=torch.float64, device=x.device)
        self.low = torch.maximum(low - BOUNDED_MARGIN * span, limits[:, 0])
        self.high = torch.minimum(high + BOUNDED_MARGIN * span, limits[:, 1])

    def _range(self, x: Tensor, names: Sequence[str]) -> tuple[Tensor, Tensor] | None:
        _check(x, names)
        if self.low is None or self.high is None:
            return None
        return self.low.to(x.device, x.dtype), self.high.to(x.device, x.dtype)

    def _unit(self, x: Tensor, low: Tensor, high: Tensor) -> Tensor:
        return ((x - low) / (high - low)).clamp(BOUNDED_EPS, 1.0 - BOUNDED_EPS)

    def forward(self, x: Tensor, names: Sequence[str]) -> Tensor:
        bounds = self._range(x, names)
        if bounds is None:
            return torch.full_like(x, math.nan)
        return torch.logit(self._unit(x, *bounds))

    def inverse(self, y: Tensor, names: Sequence[str]) -> Tensor:
        bounds = self._range(y, names)
        if bounds is None:
            return torch.full_like(y, math.nan)
        low, high = bounds
        return low + (high - low) * torch.sigmoid(y)

    def log_abs_det_jacobian(self, x: Tensor, names: Sequence[str]) -> Tensor:
        bounds = self._range(x, names)
        if bounds is None:
            return torch.full_like(x[:, 0], math.nan)
        low, high = bounds
        u = self._unit(x, low, high)
        return (-torch.log(high - low) - torch.log(u) - torch.log1p(-u)).sum(dim=1)

    def state_dict(self) -> dict[str, Tensor | None]:
        return {"low": self.low, "high": self.high}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        low, high = state.get("low"), state.get("high")
        self.low = None if low is None else low.double()
        self.high = None if high is None else high.double()


_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

_FRAMES: dict[str, CoordinateMap] = {
    "identity": IdentityMap(),
    "log_mass": LogMassMap(),
    "tau_ratio": TauRatioMap(),
    "normal_cdf": ElementwiseMap(
        "normal_cdf",
        f=lambda x: 0.5 * (1.0 + torch.erf(x / _SQRT2)),
        g=lambda y: _SQRT2 * torch.erfinv(2.0 * y - 1.0),
        log_df=lambda x: -0.5 * x * x - _LOG_SQRT_2PI,
    ),
    "tanh_shift": ElementwiseMap(
        "tanh_shift",
        f=lambda x: torch.tanh(x + 2.0),
        g=lambda y: torch.atanh(y) - 2.0,
        # d tanh(u)/du = 1 - tanh(u)^2 = 4 / (e^u + e^-u)^2
        log_df=lambda x: math.log(4.0) - 2.0 * torch.logaddexp(x + 2.0, -(x + 2.0)),
    ),
}

COORDINATE_NAMES: tuple[str, ...] = (*_FRAMES, BoundedLogitMap.name)


def get_coordinates(name: str) -> CoordinateMap:
    """The frame called ``name`` (a new, unfitted one for the stateful "bounded"); ConfigError
    listing the valid names otherwise."""
    if name == BoundedLogitMap.name:
        return BoundedLogitMap()
    try:
        return _FRAMES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown coordinates {name!r} (valid: {', '.join(COORDINATE_NAMES)})") from None
