"""`streamflow coordinates`: the m vs log m study on real LHCO events, its exact toy values, and bad input.

The toy through the command (AUCs against the exact models, the frames' ordering,
the selection overlaps) is tested in test_toy_pipeline.py, which runs it once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamflow.analysis.coordinate_study import auc_standard_error, score_events, toy_exact_auc
from streamflow.analysis.mass_coordinate_study import JET_MASSES, StudyConfig, evaluated_in, split, train
from streamflow.events import GaussianToy, get_coordinates, open_source
from streamflow.learners import CATHODE_FEATURES, FlowConfig
from streamflow.metrics import auc
from tests.helpers import streamflow


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
def test_lhco_mass_study_has_both_tables_with_both_controls_and_errors(tmp_path, features_file):
    """The paper's study on real LHCO events (a short version): m vs log m for a flow and the
    autoencoder, with the two-seed and the exact-Jacobian controls, each overlap with its error."""
    out = tmp_path / "study"
    result = streamflow("coordinates", "--source", str(features_file), "--events", "12000", "--epochs", "1",
                        "--device", "cpu", "--threads", "1", "--out", str(out), timeout=230)
    assert result.returncode == 0, result.stderr[-3000:]
    study = json.loads((out / "coordinates.json").read_text())
    assert study["paper_overlap"] == 0.2
    assert abs(study["train_background_events"] - study["test_background_events"]) <= 1  # halves
    assert [t["features"] for t in study["tables"]] == [["mj1", "mj2"], list(CATHODE_FEATURES)]
    for table in study["tables"]:
        controls = {(o["kind"], o["control"]) for o in table["overlaps"]}
        assert ("flow", "training noise (two seeds)") in controls and ("ae", "training noise (two seeds)") in controls
        assert ("flow", "coordinates alone (one model, exact Jacobian)") in controls
        for o in table["overlaps"]:
            assert o["selected"] == int(np.ceil(0.01 * study["test_background_events"]))
            assert 0 <= o["fraction"] <= 1 and 0 <= o["error"] < 0.1
        noise = [o["fraction"] for o in table["overlaps"] if o["control"].startswith("training noise")]
        assert min(noise) < 1.0, "two seeds never select exactly the same events"
    assert "| flow | m vs log m | flow_m_s0 | flow_logm_s0 |" in result.stdout
    assert "about 20%" in result.stdout


def test_the_jacobian_control_is_the_same_model_in_the_other_frame():
    """flow_m evaluated in log m: its score is the m score minus sum log m_j, exactly (one model, two frames)."""
    events = next(iter(open_source("synthetic", signal_fraction=0.05, seed=1).chunks(6000)))
    train_events, test = split(events, 0.5, seed=0)
    flow = train(FlowConfig(name="flow_m", features=JET_MASSES), train_events, StudyConfig(epochs=1))
    twin = evaluated_in(flow, "log_mass")
    scores = score_events({"m": flow, "logm": twin}, test)
    masses = test.features[:, [test.names.index(n) for n in JET_MASSES]].astype(np.float64)
    np.testing.assert_allclose(scores["logm"], scores["m"] - np.log(masses).sum(axis=1), rtol=1e-5, atol=1e-4)
    assert (test.labels == 1).sum() == (events.labels == 1).sum(), "every signal event is held out"
    assert (train_events.labels == 0).all()


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "no-such-source"], "no-such-source: no such file"),
    (["--q", "0"], "--q must be in (0, 1], got 0.0"),
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
