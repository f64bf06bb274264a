"""The 16 LHCO stream features from the 14 columns of an LHCO features file.

Input: float[n, 14] in ``LHCO_FILE_COLUMNS`` order (px, py, pz, m, tau1, tau2, tau3
of the pT-leading jet j1, then of j2; GeV). Output: float32[n, 16] in ``LHCO_NAMES``
order, computed in float64:

- jet masses: m_j = max(m_j, 0) (real files hold tiny negatives, ~ -2e-5 GeV, from rounding);
- mjj: the dijet invariant mass, with E_j = sqrt(|p_j|^2 + m_j^2),
  mjj^2 = (E1 + E2)^2 - |p1 + p2|^2, clipped at 0 before the square root;
- mjmin, mjmax: the lighter and the heavier jet as in CATHODE (argmin/argmax of
  (mj1, mj2)); on an exact tie j1 counts as the lighter and j2 as the heavier, so
  the two are always different jets; delta_m = mjmax - mjmin;
- tau1..3 of j1 and j2 as stored; tau21 = tau2 / (tau1 + 1e-5) and
  tau32 = tau3 / (tau2 + 1e-5) of the lighter and of the heavier jet (guarded: tau1 = 0
  occurs in real data).
"""

from __future__ import annotations

import numpy as np

from streamflow.events.schema import LHCO_FILE_COLUMNS, LHCO_NAMES, TAU_EPS


def dijet_mass(p1: np.ndarray, m1: np.ndarray, p2: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """mjj of two jets with 3-momenta p[n, 3] and masses m[n] (float64)."""
    e1 = np.sqrt(np.einsum("ij,ij->i", p1, p1) + m1 * m1)
    e2 = np.sqrt(np.einsum("ij,ij->i", p2, p2) + m2 * m2)
    p = p1 + p2
    return np.sqrt(np.clip((e1 + e2) ** 2 - np.einsum("ij,ij->i", p, p), 0.0, None))


def lhco_features(raw: np.ndarray) -> np.ndarray:
    """float32[n, 16] LHCO stream features from raw[n, 14] (see the module docstring)."""
    if raw.ndim != 2 or raw.shape[1] != len(LHCO_FILE_COLUMNS):
        raise ValueError(f"expected [n, {len(LHCO_FILE_COLUMNS)}] jet columns, got {list(raw.shape)}")
    raw = raw.astype(np.float64, copy=False)
    p1, p2 = raw[:, 0:3], raw[:, 7:10]
    m1, m2 = np.clip(raw[:, 3], 0.0, None), np.clip(raw[:, 10], 0.0, None)
    taus = raw[:, [4, 5, 6, 11, 12, 13]]  # tau1..3 of j1, then of j2
    return assemble(dijet_mass(p1, m1, p2, m2), m1, m2, taus)


def assemble(mjj: np.ndarray, m1: np.ndarray, m2: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """float32[n, 16] in LHCO_NAMES order from mjj, the jet masses and taus[n, 6] (tau1..3 j1, j2)."""
    j2_lighter = m2 < m1
    tau21_j1, tau21_j2 = taus[:, 1] / (taus[:, 0] + TAU_EPS), taus[:, 4] / (taus[:, 3] + TAU_EPS)
    tau32_j1, tau32_j2 = taus[:, 2] / (taus[:, 1] + TAU_EPS), taus[:, 5] / (taus[:, 4] + TAU_EPS)
    mjmin = np.where(j2_lighter, m2, m1)
    mjmax = np.where(j2_lighter, m1, m2)
    columns = np.empty((len(LHCO_NAMES), len(mjj)), dtype=np.float32)
    for i, column in enumerate((mjj, m1, m2, mjmin, mjmax, mjmax - mjmin)):
        columns[i] = column
    columns[6:12] = taus.T
    columns[12] = np.where(j2_lighter, tau21_j2, tau21_j1)
    columns[13] = np.where(j2_lighter, tau21_j1, tau21_j2)
    columns[14] = np.where(j2_lighter, tau32_j2, tau32_j1)
    columns[15] = np.where(j2_lighter, tau32_j1, tau32_j2)
    return np.ascontiguousarray(columns.T)
