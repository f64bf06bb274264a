"""Coordinate frames: known values, exact inverses, Jacobians, and bad names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamflow.errors import ConfigError
from streamflow.events import COORDINATE_NAMES, LHCO_NAMES, get_coordinates
from streamflow.events.coordinates import BoundedLogitMap, CoordinateMap

POSITIVE = ("identity", "log_mass", "tau_ratio", "bounded")


def lhco_like(n: int = 500, seed: int = 0) -> torch.Tensor:
    """Positive LHCO-like values (masses 10-3000 GeV, taus in (0, 1], tau1 >= tau2 >= tau3)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, len(LHCO_NAMES), generator=g, dtype=torch.float64)
    x[:, :6] = 10.0 + 3000.0 * x[:, :6]
    return x


def test_known_values() -> None:
    names = ["a", "b"]
    x = torch.tensor([[0.0, 1.0], [-2.0, 2.0]], dtype=torch.float64)
    cdf = get_coordinates("normal_cdf").forward(x, names)
    assert cdf[0, 0] == pytest.approx(0.5) and cdf[0, 1] == pytest.approx(0.8413447460685429)
    tanh = get_coordinates("tanh_shift").forward(x, names)
    assert tanh[1, 0] == pytest.approx(0.0) and tanh[0, 0] == pytest.approx(math.tanh(2.0))
    assert torch.equal(get_coordinates("identity").forward(x, names), x)


def fitted(name: str, x: torch.Tensor, names) -> CoordinateMap:
    """The map called ``name``, fitted on x if it is the stateful bounded one."""
    coordinates = get_coordinates(name)
    if isinstance(coordinates, BoundedLogitMap):
        coordinates.fit(x, names)
    return coordinates


def test_log_mass_logs_invariant_masses_only_and_guards_nonpositive() -> None:
    names = ["mjj", "mjmin", "delta_m", "tau21_jmin"]
    x = torch.tensor([[3500.0, 100.0, 400.0, 0.3], [3000.0, -2e-5, 0.0, 0.7]], dtype=torch.float64)
    y = get_coordinates("log_mass").forward(x, names)
    assert y[0, 0] == pytest.approx(math.log(3500.0)) and y[0, 1] == pytest.approx(math.log(100.0))
    assert torch.equal(y[:, 2], x[:, 2]), "delta_m (a difference, often ~0) stays linear"
    assert torch.equal(y[:, 3], x[:, 3])
    assert torch.isfinite(y).all()
    # Its Jacobian has no delta_m term: only -log mjj - log mjmin.
    expected = -torch.log(x[0, 0]) - torch.log(x[0, 1])
    assert get_coordinates("log_mass").log_abs_det_jacobian(x[:1], names)[0] == pytest.approx(float(expected))


def test_bounded_map_keeps_every_value_it_returns_inside_the_physical_range() -> None:
    names = ["mjmin", "delta_m", "tau21_jmin", "x0"]
    x = torch.tensor([[0.0, 0.5, 0.0, -3.0], [300.0, 800.0, 1.2, 4.0], [50.0, 10.0, 0.4, 0.0]], dtype=torch.float64)
    bounded = fitted("bounded", x, names)
    assert isinstance(bounded, BoundedLogitMap) and bounded.low is not None and bounded.high is not None
    assert bounded.low[:3].tolist() == [0.0, 0.0, 0.0], "cut at the physical edge, not widened below 0"
    assert bounded.low[3] < -3.0 and bounded.high[3] > 4.0, "an unbounded column is widened on both sides"
    y = torch.linspace(-60, 60, 1001, dtype=torch.float64)[:, None].repeat(1, 4)
    back = bounded.inverse(y, names)
    assert (back[:, :3] >= 0).all() and torch.isfinite(back).all()
    assert torch.isfinite(bounded.forward(x, names)).all(), "events at the physical edge map to finite values"
    unfitted = get_coordinates("bounded")
    assert torch.isnan(unfitted.forward(x, names)).all(), "not fitted: not scored"
    with pytest.raises(ConfigError, match="two distinct"):
        get_coordinates("bounded").fit(torch.ones(5, 1, dtype=torch.float64), ["mjmin"])


def test_tau_ratio_values() -> None:
    names = ["tau1_j1", "tau2_j1", "tau3_j1", "mjj"]
    x = torch.tensor([[0.5, 0.25, 0.1, 3000.0], [0.0, 0.2, 0.1, 3100.0]], dtype=torch.float64)
    y = get_coordinates("tau_ratio").forward(x, names)
    assert y[0, 1] == pytest.approx(0.25 / (0.5 + 1e-5)) and y[0, 2] == pytest.approx(0.1 / (0.25 + 1e-5))
    assert torch.isfinite(y).all()  # tau1 = 0 occurs in real data
    assert torch.equal(y[:, [0, 3]], x[:, [0, 3]])


@pytest.mark.parametrize("name", COORDINATE_NAMES)
def test_round_trip(name: str) -> None:
    x = lhco_like() if name in POSITIVE else torch.randn(500, 16, dtype=torch.float64)
    coordinates = fitted(name, x, LHCO_NAMES)
    back = coordinates.inverse(coordinates.forward(x, LHCO_NAMES), LHCO_NAMES)
    torch.testing.assert_close(back, x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", COORDINATE_NAMES)
def test_float32_round_trip(name: str) -> None:
    x = lhco_like().float() if name in POSITIVE else torch.randn(500, 16).clamp(-3, 3)
    coordinates = fitted(name, x, LHCO_NAMES)
    back = coordinates.inverse(coordinates.forward(x, LHCO_NAMES), LHCO_NAMES)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", COORDINATE_NAMES)
def test_log_abs_det_jacobian_matches_autograd(name: str) -> None:
    # Jacobian of the map of one event, n = 4 events, 7 columns of the LHCO schema (delta_m among them).
    names = ["mjj", "mjmin", "delta_m", "tau1_j1", "tau2_j1", "tau3_j1", "tau21_jmin"]
    base = lhco_like(4)[:, [0, 3, 5, 6, 7, 8, 12]]
    x = base if name in POSITIVE else torch.randn(4, 7, dtype=torch.float64)
    coordinates = fitted(name, x, names)
    expected = torch.stack(
        [torch.linalg.slogdet(
            torch.autograd.functional.jacobian(lambda r: coordinates.forward(r[None], names)[0], row))[1]
         for row in x]
    )
    torch.testing.assert_close(coordinates.log_abs_det_jacobian(x, names), expected)


def test_density_changes_with_frame() -> None:
    # p_Y(y) = p_X(x) |dx/dy|: N(0,1) written in normal_cdf coordinates is uniform on (0, 1).
    x = torch.randn(1000, 2, dtype=torch.float64)
    log_px = (-0.5 * x * x - 0.5 * math.log(2 * math.pi)).sum(1)
    log_py = log_px - get_coordinates("normal_cdf").log_abs_det_jacobian(x, ["a", "b"])
    torch.testing.assert_close(log_py, torch.zeros_like(log_py))


def test_unknown_frame_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown coordinates 'logmass'.*identity, log_mass, tau_ratio"):
        get_coordinates("logmass")


def test_tau_ratio_needs_its_denominator() -> None:
    with pytest.raises(ConfigError, match="needs column 'tau1_j2'"):
        get_coordinates("tau_ratio").forward(torch.ones(3, 1), ["tau2_j2"])


def test_names_must_match_columns() -> None:
    with pytest.raises(ConfigError, match="2 column names"):
        get_coordinates("normal_cdf").forward(torch.ones(3, 3), ["a", "b"])


def test_tanh_shift_values() -> None:
    y = get_coordinates("tanh_shift").forward(torch.tensor([[0.0, -2.0]]), ["x0", "x1"])
    assert y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), [[math.tanh(2.0), 0.0]], atol=1e-7)
