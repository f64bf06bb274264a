"""ROC, AUC, SIC and selection overlap against brute force and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from streamflow.errors import StreamflowError
from streamflow.metrics import auc, max_sic, roc_curve, selection_overlap, sic_curve, top_fraction


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    s, b = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float(((s > b) + 0.5 * (s == b)).mean())


def test_auc_matches_pairwise_counting_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounded: many ties
    assert auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_of_two_gaussians_is_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(200_000), np.ones(200_000)].astype(np.int8)
    scores = rng.normal(labels * 1.0, 1.0)
    assert auc(labels, scores) == pytest.approx(norm.cdf(1 / np.sqrt(2)), abs=3e-3)


def test_auc_extremes_and_nan_scores() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(labels, np.ones(4)) == 0.5
    # NaN = never selected, below every score.
    assert auc(labels, np.array([0.1, 0.2, np.nan, np.nan])) == 0.0
    assert auc(labels, np.array([np.nan, 0.2, np.nan, 0.3])) == 0.625  # NaN ties NaN: (0.5 + 0 + 1 + 1) / 4


def test_roc_curve_is_monotone_and_its_area_is_the_auc() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 1000)
    scores = np.round(rng.normal(labels, 1.0), 2)
    eff_b, eff_s, thresholds = roc_curve(labels, scores)
    assert (eff_b[0], eff_s[0], eff_b[-1], eff_s[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert (np.diff(eff_b) >= 0).all() and (np.diff(eff_s) >= 0).all() and (np.diff(thresholds) < 0).all()
    assert np.trapezoid(eff_s, eff_b) == pytest.approx(auc(labels, scores), abs=1e-12)
    t = thresholds[10]
    assert eff_s[10] == pytest.approx((scores[labels == 1] >= t).mean())
    assert eff_b[10] == pytest.approx((scores[labels == 0] >= t).mean())


def test_sic() -> None:
    labels = np.array([1, 1, 0, 0, 0, 0])
    scores = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    eff_s, sic = sic_curve(labels, scores)
    # Cut after the third event: eff_S = 1, eff_B = 1/4 -> SIC = 2.
    assert eff_s[0] == 1.0 and sic[0] == pytest.approx(2.0)
    assert max_sic(labels, scores, min_background=1) == pytest.approx(2.0)
    # Requiring 2 background events passing: eff_B = 1/2 -> SIC = sqrt 2.
    assert max_sic(labels, scores, min_background=2) == pytest.approx(np.sqrt(2))
    assert np.isnan(max_sic(labels, scores, min_background=5))


def test_selection_overlap() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=1000)
    assert selection_overlap(a, a, 0.01) == 1.0
    assert selection_overlap(a, -a, 0.1) == 0.0
    assert selection_overlap(a, 2 * a + 1, 0.05) == 1.0  # only the ranking matters
    b = np.where(np.arange(1000) < 500, np.nan, a)
    assert set(top_fraction(b, 0.1)) <= set(range(500, 1000))
    independent = selection_overlap(a, rng.normal(size=1000), 0.2)
    assert 0.1 < independent < 0.3  # about q by chance


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        (np.array([1, 1]), np.array([0.1, 0.2]), "both signal and background"),
        (np.array([0, 2]), np.array([0.1, 0.2]), "labels must be"),
        (np.array([0, 1]), np.array([0.1]), "same length"),
    ],
)
def test_bad_inputs_raise_a_clear_error(labels: np.ndarray, scores: np.ndarray, message: str) -> None:
    with pytest.raises(StreamflowError, match=message):
        auc(labels, scores)
    with pytest.raises(StreamflowError, match="q must be"):
        top_fraction(np.ones(3), 0.0)
