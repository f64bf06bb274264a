"""Figures of merit for anomaly scores with truth labels (numpy only).

Conventions: labels are 1 for signal, 0 for background; a higher score is more
anomalous; a NaN score means "not scored" and is treated as never selected (below
every threshold), as the trigger does -- so efficiencies are fractions of *all*
events, not only of the scored ones.

- ROC: signal efficiency eff_S(t) = P(score_S > t) against background efficiency
  eff_B(t) = P(score_B > t) over all thresholds t.
- AUC = P(score_S > score_B) + P(score_S = score_B) / 2 (Mann-Whitney U / n_S n_B);
  0.5 for a score blind to signal, below 0.5 when signal looks *less* anomalous.
- SIC = eff_S / sqrt(eff_B): the factor by which a cut improves the significance
  S / sqrt(B) of a signal.
- selection overlap: of the fraction q most anomalous events by score a, the
  fraction that are also among the q most anomalous by score b (the source paper:
  about 20% for top-1% selections of a flow in two coordinate maps on LHCO).
"""

from __future__ import annotations

import numpy as np

from streamflow.errors import StreamflowError


def _prepare(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise StreamflowError(f"labels {list(labels.shape)} and scores {list(scores.shape)} must be 1-d, same length")
    if not np.isin(labels, (0, 1)).all():
        raise StreamflowError("labels must be 0 (background) or 1 (signal)")
    positive = labels == 1
    if positive.all() or not positive.any():
        raise StreamflowError("metrics need both signal and background events")
    return positive, np.where(np.isnan(scores), -np.inf, scores)


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eff_B, eff_S, thresholds): efficiencies of ``score >= threshold`` for each distinct
    score from the highest down, after a first point (0, 0) at threshold +inf."""
    positive, scores = _prepare(labels, scores)
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    # The last index of each run of equal scores: one ROC point per distinct threshold.
    last = np.r_[np.flatnonzero(ranked[1:] != ranked[:-1]), len(ranked) - 1]
    signal_passing = np.cumsum(positive[order])[last]
    background_passing = (last + 1) - signal_passing
    eff_s = np.r_[0.0, signal_passing / positive.sum()]
    eff_b = np.r_[0.0, background_passing / (~positive).sum()]
    return eff_b, eff_s, np.r_[np.inf, ranked[last]]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(signal scores above background), ties counting half."""
    positive, scores = _prepare(labels, scores)
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    ranks = np.empty(len(scores))
    # Average (1-based) rank of each run of tied scores.
    starts = np.r_[0, np.flatnonzero(ranked[1:] != ranked[:-1]) + 1]
    ends = np.r_[starts[1:], len(ranked)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    n_s, n_b = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_s * (n_s + 1) / 2.0) / (n_s * n_b))


def sic_curve(labels: np.ndarray, scores: np.ndarray, min_background: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(eff_S, SIC) at every threshold that keeps at least ``min_background`` background events."""
    eff_b, eff_s, _ = roc_curve(labels, scores)
    n_b = int((np.asarray(labels) == 0).sum())
    ok = eff_b * n_b >= max(min_background, 1)
    return eff_s[ok], eff_s[ok] / np.sqrt(eff_b[ok])


def max_sic(labels: np.ndarray, scores: np.ndarray, min_background: int = 10) -> float:
    """The largest SIC over thresholds keeping at least ``min_background`` background events
    (below that the background efficiency is too poorly known for SIC to mean anything)."""
    _, sic = sic_curve(labels, scores, min_background)
    return float(sic.max()) if len(sic) else float("nan")


def top_fraction(scores: np.ndarray, q: float) -> np.ndarray:
    """Indices of the ceil(q n) highest scores (NaN never selected); ties broken by position."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 < q <= 1:
        raise StreamflowError(f"selection fraction q must be in (0, 1], got {q!r}")
    k = min(int(np.ceil(q * len(scores))), int((~np.isnan(scores)).sum()))
    order = np.argsort(-np.where(np.isnan(scores), -np.inf, scores), kind="stable")
    return order[:k]


def selection_overlap(scores_a: np.ndarray, scores_b: np.ndarray, q: float) -> float:
    """Fraction of the top-q events by ``scores_a`` that are also in the top-q by ``scores_b``
    (the same events scored two ways)."""
    scores_a, scores_b = np.asarray(scores_a), np.asarray(scores_b)
    if scores_a.shape != scores_b.shape or scores_a.ndim != 1:
        raise StreamflowError(f"score arrays {list(scores_a.shape)} and {list(scores_b.shape)} must match")
    a, b = top_fraction(scores_a, q), top_fraction(scores_b, q)
    if len(a) == 0:
        return float("nan")
    return float(np.isin(a, b).sum() / len(a))
