"""Derived LHCO features on hand-made jets with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from streamflow.events import LHCO_NAMES
from streamflow.events.derived import lhco_features


def jets(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float64)


def col(out: np.ndarray, name: str) -> np.ndarray:
    return out[:, LHCO_NAMES.index(name)]


def test_back_to_back_jets() -> None:
    # j1: pT 1000 along x, mass 300; j2: pT 1000 along -x, mass 100 -> mjj = E1 + E2
    out = lhco_features(jets([[1000, 0, 0, 300, 0.5, 0.25, 0.1, -1000, 0, 0, 100, 0.4, 0.3, 0.15]]))
    assert out.dtype == np.float32 and out.shape == (1, 16)
    assert col(out, "mjj")[0] == pytest.approx(np.hypot(1000, 300) + np.hypot(1000, 100), rel=1e-7)
    assert (col(out, "mjmin")[0], col(out, "mjmax")[0], col(out, "delta_m")[0]) == (100, 300, 200)
    assert col(out, "tau21_jmin")[0] == pytest.approx(0.3 / (0.4 + 1e-5))  # the lighter jet is j2
    assert col(out, "tau21_jmax")[0] == pytest.approx(0.25 / (0.5 + 1e-5))
    assert col(out, "tau32_jmin")[0] == pytest.approx(0.15 / (0.3 + 1e-5))
    assert col(out, "tau32_jmax")[0] == pytest.approx(0.1 / (0.25 + 1e-5))


def test_collinear_massless_jets_and_real_data_quirks() -> None:
    # collinear massless jets: mjj^2 rounds to a tiny negative -> 0, not NaN; tau1 = 0 and m = -2e-5 as in real files
    out = lhco_features(jets([[1e3, 1e3, 5e2, -2e-5, 0.0, 0.1, 0.05, 1e3, 1e3, 5e2, 0.0, 0.0, 0.0, 0.0]]))
    assert np.isfinite(out).all()
    assert col(out, "mjj")[0] == pytest.approx(0.0, abs=0.1)
    assert col(out, "mj1")[0] == 0.0 and col(out, "tau21_jmin")[0] == pytest.approx(0.1 / 1e-5)


def test_equal_masses_keep_two_different_jets() -> None:
    out = lhco_features(jets([[1000, 0, 0, 200, 0.5, 0.2, 0.1, -1000, 0, 0, 200, 0.5, 0.4, 0.1]]))
    assert col(out, "tau21_jmin")[0] == pytest.approx(0.2 / (0.5 + 1e-5))  # j1 as the lighter
    assert col(out, "tau21_jmax")[0] == pytest.approx(0.4 / (0.5 + 1e-5))  # j2 as the heavier


def test_wrong_shape() -> None:
    with pytest.raises(ValueError, match="expected \\[n, 14\\]"):
        lhco_features(np.zeros((3, 15)))
