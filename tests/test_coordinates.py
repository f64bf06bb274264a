"""`streamflow coordinates` on real LHCO background, its exact toy values, and bad input.

The toy through the command (AUCs against the exact models, the frames' ordering,
the selection overlaps) is tested in test_toy_pipeline.py, which runs it once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamflow.analysis.coordinate_study import auc_standard_error, toy_exact_auc
from streamflow.events import GaussianToy, get_coordinates
from streamflow.metrics import auc
from tests.helpers import free_port_block, streamflow


def test_exact_toy_aucs_match_exact_scores_on_a_large_sample():
    """The closed forms (likelihood ratio Phi(1), density |x|^2/2) against exact scores of 10^6 events."""
    import torch

    batch = next(GaussianToy(seed=5, n_events=1_000_000, reference_fraction=0.0).chunks(1_000_000))
    x, labels = batch.features[:, :2].astype(np.float64), batch.labels
    assert auc(labels, x.sum(axis=1)) == pytest.approx(toy_exact_auc("cwola", "tanh_shift"), abs=3e-3)
    density = (x**2).sum(axis=1) / 2  # -log p_X up to a constant
    assert auc(labels, density) == pytest.approx(toy_exact_auc("flow", "identity"), abs=3e-3)
    jacobian = get_coordinates("tanh_shift").log_abs_det_jacobian(torch.from_numpy(x), ["x0", "x1"]).numpy()
    assert auc(labels, density + jacobian) == pytest.approx(toy_exact_auc("flow", "tanh_shift"), abs=3e-3)
    assert toy_exact_auc("autoencoder", "identity") is None


AUC_AGREEMENT_SIGMAS = 3.0
"""CWoLA's AUCs in two frames must agree within 3 statistical errors of their difference: the DeLong error of
each AUC on the ~55k evaluation events with ~550 signal (~0.008), combined as for independent measurements
(~0.011). Both score the same events, so the evaluation sample's own noise in the difference is far smaller (paired
DeLong: 0.003 for the tau pair, 0.001 for the m pair); what remains is training noise of two separately trained
networks, which this scale covers: the tau pair's difference over stream seeds 0-3 was -0.026, -0.002, +0.007,
0.000 (the m pair's -0.004, 0.000, -0.002, -0.002). That spread (std 0.014 over four seeds) is the size of the
evaluation error itself, and seed 0 sits at 2.4 errors, so the tolerance adds it as a second, independent term
(TRAINING_NOISE): a different CPU's rounding changes the training trajectory, and must not flip the test."""
TRAINING_NOISE = 0.014


def test_auc_standard_error_is_the_spread_of_the_auc_over_samples():
    """DeLong's error of one sample against the AUC's spread over 300 samples the size of the LHCO evaluation's
    signal (550 events), with ties and unscored (NaN) events as CWoLA has."""
    rng = np.random.default_rng(7)
    n_s, n_b = 550, 5_000
    labels = np.r_[np.ones(n_s, np.int8), np.zeros(n_b, np.int8)]
    aucs, errors = [], []
    for _ in range(300):
        scores = np.round(np.r_[rng.normal(1.5, 1, n_s), rng.normal(0, 1, n_b)], 1)
        scores[rng.random(n_s + n_b) < 0.2] = np.nan
        aucs.append(auc(labels, scores))
        errors.append(auc_standard_error(labels, scores))
    # The std of 300 samples scatters by ~4%, each DeLong error by less.
    assert np.mean(errors) == pytest.approx(np.std(aucs, ddof=1), rel=0.12)


@pytest.mark.timeout(240)
def test_lhco_flow_selections_differ_between_frames(tmp_path, features_file):
    """Real LHCO background: the flow's top-1% in m and in log m are different events, CWoLA's less so;
    in (tau1, tau2) and (tau1, tau21) the flow's differ too; CWoLA's AUC is the same in both frames of each pair."""
    out = tmp_path / "study"
    result = streamflow("coordinates", "--source", str(features_file), "--device", "cpu", "--threads", "1",
                        "--out", str(out),
                        "--base-port", str(free_port_block()), timeout=230)
    assert result.returncode == 0, result.stderr[-3000:]
    study = json.loads((out / "coordinates.json").read_text())
    overlaps = {(o["a"], o["b"]): o for o in study["overlaps"]}
    flow = overlaps[("flow_m", "flow_logm")]
    cwola = overlaps[("cwola", "cwola_logm")]
    flow_tau, cwola_tau = overlaps[("flow_tau", "flow_tau21")], overlaps[("cwola_tau", "cwola_tau21")]
    print(f"top-1% background overlap: flow m vs log m {flow['fraction']:.1%}, CWoLA {cwola['fraction']:.1%}; "
          f"flow tau2 vs tau21 {flow_tau['fraction']:.1%}, CWoLA {cwola_tau['fraction']:.1%} "
          f"({flow['selected']} events each)")
    assert len(overlaps) == 4
    assert flow["selected"] > 300  # 1% of the ~55k background events of the file
    assert flow["fraction"] < 0.5
    assert cwola["fraction"] > flow["fraction"]
    assert flow_tau["fraction"] < 0.9  # measured 63.8%
    for pair in (cwola, cwola_tau):
        print(f"{pair['b']} - {pair['a']}: AUC {pair['auc_difference']:+.3f} +- {pair['auc_difference_error']:.3f}")
        assert 0 < pair["auc_difference_error"] < 0.03
        error = float(np.hypot(pair["auc_difference_error"], TRAINING_NOISE))
        assert abs(pair["auc_difference"]) < AUC_AGREEMENT_SIGMAS * error
    figures = {f["name"]: f for f in study["learners"]}
    assert {f["coordinates"] for f in figures.values()} == {"identity", "log_mass", "tau_ratio"}
    assert figures["flow_tau21"]["features"] == ["mjmin", "delta_m", "tau1_j1", "tau2_j1", "tau1_j2", "tau2_j2"]
    assert all(0.5 < f["auc"] < 1 for f in figures.values())
    assert "| flow | flow_m (identity) | flow_logm (log_mass) |" in result.stdout
    assert "| flow | flow_tau (identity) | flow_tau21 (tau_ratio) |" in result.stdout
    assert (out / "roc.png").stat().st_size > 0 and (out / "run" / "scorer.ckpt.pt").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "no-such-source"], "no-such-source: no such file"),
    (["--q", "0"], "--q 0.0: trigger line"),
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
