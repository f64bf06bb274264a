"""Column names shared by every LHCO source and consumer."""

from __future__ import annotations

LHCO_NAMES: tuple[str, ...] = (
    "mjj",
    "mj1",
    "mj2",
    "mjmin",
    "mjmax",
    "delta_m",
    "tau1_j1",
    "tau2_j1",
    "tau3_j1",
    "tau1_j2",
    "tau2_j2",
    "tau3_j2",
    "tau21_jmin",
    "tau21_jmax",
    "tau32_jmin",
    "tau32_jmax",
)
"""The LHCO stream schema (float32, GeV, this order). j1/j2: the jets ordered by pT as
in the file; jmin/jmax: the lighter/heavier jet (CATHODE); delta_m = mjmax - mjmin;
tauNM = tauN / (tauM + 1e-5)."""

LHCO_FILE_COLUMNS: tuple[str, ...] = (
    "pxj1", "pyj1", "pzj1", "mj1", "tau1j1", "tau2j1", "tau3j1",
    "pxj2", "pyj2", "pzj2", "mj2", "tau1j2", "tau2j2", "tau3j2",
)  # fmt: skip
"""The 14 feature columns of the official events_anomalydetection_v2.features.h5, in order
(the file has a 15th, ``label``)."""

TAU_EPS = 1e-5
"""The guard in tau2/(tau1 + eps) and tau3/(tau2 + eps), as in common LHCO code."""
