"""`streamflow coordinates` on real LHCO background, its exact toy values, and bad input.

The toy through the command (AUCs against the exact models, the frames' ordering,
the selection overlaps) is tested in test_toy_pipeline.py, which runs it once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamflow.events import GaussianToy, get_frame
from streamflow.metrics import auc
from streamflow.studies.coordinates import toy_exact_auc
from tests.helpers import free_port_block, streamflow


def test_exact_toy_aucs_match_exact_scores_on_a_large_sample():
    """The closed forms (likelihood ratio Phi(1), density |x|^2/2) against exact scores of 10^6 events."""
    import torch

    batch = next(GaussianToy(seed=5, n_events=1_000_000, reference_fraction=0.0).chunks(1_000_000))
    x, labels = batch.features[:, :2].astype(np.float64), batch.labels
    assert auc(labels, x.sum(axis=1)) == pytest.approx(toy_exact_auc("cwola", "tanh_shift"), abs=3e-3)
    density = (x**2).sum(axis=1) / 2  # -log p_X up to a constant
    assert auc(labels, density) == pytest.approx(toy_exact_auc("flow", "identity"), abs=3e-3)
    jacobian = get_frame("tanh_shift").log_abs_det_jacobian(torch.from_numpy(x), ["x0", "x1"]).numpy()
    assert auc(labels, density + jacobian) == pytest.approx(toy_exact_auc("flow", "tanh_shift"), abs=3e-3)
    assert toy_exact_auc("autoencoder", "identity") is None


@pytest.mark.timeout(240)
def test_lhco_flow_selections_differ_between_m_and_log_m(tmp_path, features_file):
    """Real LHCO background: the flow's top-1% in m and in log m are different events; CWoLA's less so."""
    out = tmp_path / "study"
    result = streamflow("coordinates", "--source", str(features_file), "--device", "cpu", "--out", str(out),
                        "--base-port", str(free_port_block()), timeout=230)
    assert result.returncode == 0, result.stderr[-3000:]
    study = json.loads((out / "coordinates.json").read_text())
    overlaps = {(o["a"], o["b"]): o for o in study["overlaps"]}
    flow = overlaps[("flow_m", "flow_logm")]
    cwola = overlaps[("cwola", "cwola_logm")]
    print(f"top-1% background overlap: flow m vs log m {flow['fraction']:.1%}, "
          f"CWoLA {cwola['fraction']:.1%} ({flow['selected']} events each)")
    assert flow["selected"] > 300  # 1% of the ~55k background events of the file
    assert flow["fraction"] < 0.5
    assert cwola["fraction"] > flow["fraction"]
    figures = {f["name"]: f for f in study["learners"]}
    assert {f["frame"] for f in figures.values()} == {"identity", "log_mass"}
    assert all(0 < figures[name]["auc"] < 1 for name in ("cwola", "cwola_logm", "flow_m", "flow_logm"))
    assert "| flow | flow_m (identity) | flow_logm (log_mass) |" in result.stdout
    assert (out / "roc.png").stat().st_size > 0 and (out / "run" / "scorer.ckpt.pt").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "no-such-source"], "no-such-source: no such file"),
    (["--q", "0"], "--q must be in (0, 1]"),
    (["--events", "0"], "--events must be at least 1"),
    (["--source", "gaussian", "--signal-fraction", "0.1"], "--signal-fraction is for LHCO streams"),
])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = streamflow("coordinates", *args, "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_option_is_a_usage_error(tmp_path):
    result = streamflow("coordinates", "--frames", "all", timeout=60)
    assert result.returncode == 2 and "unrecognized arguments: --frames" in result.stderr
