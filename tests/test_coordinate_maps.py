"""Coordinate frames: known values, exact inverses, Jacobians, and bad names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamflow.errors import ConfigError
from streamflow.events import COORDINATE_NAMES, LHCO_NAMES, get_coordinates


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


def test_log_mass_touches_only_masses_and_guards_nonpositive() -> None:
    names = ["mjj", "mjmin", "delta_m", "tau21_jmin"]
    x = torch.tensor([[3500.0, 100.0, 400.0, 0.3], [3000.0, -2e-5, 0.0, 0.7]], dtype=torch.float64)
    y = get_coordinates("log_mass").forward(x, names)
    assert y[0, 0] == pytest.approx(math.log(3500.0)) and y[0, 2] == pytest.approx(math.log(400.0))
    assert torch.equal(y[:, 3], x[:, 3])
    assert torch.isfinite(y).all()


def test_tau_ratio_values() -> None:
    names = ["tau1_j1", "tau2_j1", "tau3_j1", "mjj"]
    x = torch.tensor([[0.5, 0.25, 0.1, 3000.0], [0.0, 0.2, 0.1, 3100.0]], dtype=torch.float64)
    y = get_coordinates("tau_ratio").forward(x, names)
    assert y[0, 1] == pytest.approx(0.25 / (0.5 + 1e-5)) and y[0, 2] == pytest.approx(0.1 / (0.25 + 1e-5))
    assert torch.isfinite(y).all()  # tau1 = 0 occurs in real data
    assert torch.equal(y[:, [0, 3]], x[:, [0, 3]])


@pytest.mark.parametrize("name", COORDINATE_NAMES)
def test_round_trip(name: str) -> None:
    x = lhco_like() if name in ("identity", "log_mass", "tau_ratio") else torch.randn(500, 16, dtype=torch.float64)
    coordinates = get_coordinates(name)
    back = coordinates.inverse(coordinates.forward(x, LHCO_NAMES), LHCO_NAMES)
    torch.testing.assert_close(back, x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", COORDINATE_NAMES)
def test_float32_round_trip(name: str) -> None:
    x = lhco_like().float() if name in ("identity", "log_mass", "tau_ratio") else torch.randn(500, 16).clamp(-3, 3)
    coordinates = get_coordinates(name)
    back = coordinates.inverse(coordinates.forward(x, LHCO_NAMES), LHCO_NAMES)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", COORDINATE_NAMES)
def test_log_abs_det_jacobian_matches_autograd(name: str) -> None:
    # Jacobian of the map of one event, n = 4 events, 6 columns of the LHCO schema.
    names = ["mjj", "mjmin", "tau1_j1", "tau2_j1", "tau3_j1", "tau21_jmin"]
    base = lhco_like(4)[:, [0, 3, 6, 7, 8, 12]]
    x = base if name in ("identity", "log_mass", "tau_ratio") else torch.randn(4, 6, dtype=torch.float64)
    coordinates = get_coordinates(name)
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
