"""The coordinate study: the same online learners in several coordinate maps, side by side.

A density score depends on the coordinates the features are written in,
p_Y(y) = p_X(x) / |det dy/dx|, so a flow (or an autoencoder) picks different "most
anomalous" events in different frames; a likelihood ratio (CWoLA) does not, the
Jacobian cancels (DESIGN.md, "Science in one page"). This module measures that on
the final models of a stream:

- per learner and frame: AUC with its statistical error and max SIC (eff_S /
  sqrt(eff_B), thresholds keeping >= 10 background events) on an evaluation sample
  with truth labels, and, for the Gaussian toy, the value an exact model has;
- per learner kind and pair of frames (same features): the fraction of the top-q
  selection in one frame that is also selected in the other (symmetric when both
  score the same events, as they then select as many), on background events only
  (the trigger's accept set when there is no signal; the source paper finds about
  20% for top-1% selections of a flow in m and in log m on LHCO), and the pair's
  AUC difference beside its statistical error.

AUC error (DeLong et al. 1988): the AUC is the mean of the placements
V_i = F_B(s_i) (fraction of background below signal event i, ties half) over
signal, equally of W_j = 1 - F_S(b_j) over background, so over evaluation samples

    se(AUC)^2 = var_i(V_i) / n_S + var_j(W_j) / n_B,

computed from midranks (no assumption on the score distributions). A pair's
difference is given the error of two independent measurements,
sqrt(se_a^2 + se_b^2): both learners score the same events (correlated, a smaller
error of the difference) but were trained separately (training noise, not in se),
so it is the scale on which "the AUCs agree within statistical error" is read,
not an exact error of the difference.

On LHCO the source paper's own study, with its controls, is
streamflow.analysis.mass_coordinate_study.

Exact-model AUCs of the toy (d = 2, background N(0, I), signal N(1, I)):

- likelihood ratio p_S/p_B = exp(x0 + x1 - 1), monotone in s = x0 + x1 ~ N(0, 2) or
  N(2, 2): AUC = Phi(2 / sqrt(2 + 2)) = Phi(1) = 0.841, in every frame;
- density, identity frame: score |x|^2 / 2; |x_B|^2 ~ chi2_2 has P(|x_B|^2 < t) =
  1 - exp(-t/2), so AUC = 1 - E exp(-|x_S|^2 / 2) = 1 - exp(-1/2) / 2 = 0.697
  (Gaussian integral: E exp(-|x|^2/2) = 2^(-d/2) exp(-|mu|^2/4) for x ~ N(mu, I));
- density, normal_cdf frame: Phi maps N(0, 1) onto U(0, 1), the density is flat,
  the score constant: AUC = 0.5 (every pair tied). A learnt score is then ranked by
  its own estimation error alone, so its AUC is not pulled towards 0.5 by accuracy;
- density, tanh_shift frame: score |x|^2/2 + sum_j log(1 - tanh^2(x_j + 2)), no
  closed form; 0.175 (the paper; a 10^6-event Monte Carlo gives 0.174).

The study runs on whatever produced the models: ``streamflow coordinates`` streams
through the real pipeline and reads the scorer's checkpoint (see
:func:`load_learners`); tests may hand learners in directly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import rankdata

from streamflow import metrics
from streamflow.errors import ConfigError
from streamflow.events import EventBatch
from streamflow.learners import AnyLearner, learner_from_state
from streamflow.scoring.checkpoint import load_checkpoint

LIKELIHOOD_RATIO_AUC = 0.5 * (1.0 + math.erf(1.0 / math.sqrt(2.0)))
"""Phi(1): the exact likelihood ratio's AUC on the d = 2 toy, in every frame."""
TOY_DENSITY_AUC = {"identity": 1.0 - math.exp(-0.5) / 2.0, "normal_cdf": 0.5, "tanh_shift": 0.175}
"""The exact background density's AUC (score -log p) on the d = 2 toy, per frame."""
SCORE_CHUNK = 1 << 16
def auc_standard_error(labels: np.ndarray, scores: np.ndarray) -> float:
    """DeLong standard error of the AUC of ``scores`` (NaN: lowest, as in metrics.auc); see the module docstring."""
    positive = np.asarray(labels) == 1
    scores = np.where(np.isnan(scores), -np.inf, np.asarray(scores, np.float64))
    ranks = rankdata(scores)
    n_s, n_b = int(positive.sum()), int((~positive).sum())
    below_signal = (ranks[positive] - rankdata(scores[positive])) / n_b  # V_i
    above_background = 1.0 - (ranks[~positive] - rankdata(scores[~positive])) / n_s  # W_j
    return math.sqrt(below_signal.var(ddof=1) / n_s + above_background.var(ddof=1) / n_b)


def toy_exact_auc(kind: str, frame: str) -> float | None:
    """The exact model's AUC on the d = 2, 10%-signal Gaussian toy; None where there is none (autoencoder)."""
    if kind == "cwola":
        return LIKELIHOOD_RATIO_AUC
    if kind == "flow":
        return TOY_DENSITY_AUC.get(frame)
    return None


@dataclass(frozen=True)
class LearnerFigures:
    """One learner's figures on the evaluation sample (NaN where the sample has one class only)."""

    name: str
    kind: str
    coordinates: str
    features: tuple[str, ...]
    auc: float
    auc_error: float
    """Statistical (DeLong) standard error of ``auc`` on this evaluation sample."""
    max_sic: float
    exact_auc: float | None
    background_iqr: float
    """Interquartile range of the background's scores: how much the score varies at all
    (a flow's is in nats; a flat exact density, as the toy's in the normal_cdf frame, has 0)."""


@dataclass(frozen=True)
class Overlap:
    """Fraction of learner ``a``'s top-q background selection also selected by learner ``b``."""

    kind: str
    a: str
    b: str
    coordinates_a: str
    coordinates_b: str
    q: float
    fraction: float
    selected: int
    auc_difference: float
    """AUC of b minus AUC of a (NaN without truth labels of both classes)."""
    auc_difference_error: float
    """sqrt(se_a^2 + se_b^2): the statistical scale of that difference (module docstring)."""


@dataclass
class CoordinateStudy:
    """Everything the study measured, with the ROC curves (eff_B, eff_S) for the plot."""

    source: str
    events: int
    learners: list[LearnerFigures]
    overlaps: list[Overlap]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (no curves)."""
        return {
            "source": self.source, "events": self.events,
            "learners": [vars(f) for f in self.learners], "overlaps": [vars(o) for o in self.overlaps],
        }


def load_learners(checkpoint: str | Path, device: str = "cpu") -> dict[str, AnyLearner]:
    """The trained learners of a scorer checkpoint (``streamflow run`` / ``consume``), by name."""
    state = load_checkpoint(checkpoint, device)
    learners = state["scorer"].get("learners") if isinstance(state.get("scorer"), dict) else None
    if not isinstance(learners, dict) or not learners:
        raise ConfigError(f"{checkpoint}: not a scorer checkpoint (no learners in it)")
    return {name: learner_from_state(learner, device, where=f"{checkpoint} learner {name!r}")
            for name, learner in learners.items()}


def score_events(learners: Mapping[str, AnyLearner], events: EventBatch) -> dict[str, np.ndarray]:
    """Every learner's float32 scores of ``events`` (NaN: not scored), in chunks."""
    scores: dict[str, list[np.ndarray]] = {name: [] for name in learners}
    for learner in learners.values():
        learner.bind(events.names)
    for start in range(0, max(len(events), 1), SCORE_CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(events.features[start:start + SCORE_CHUNK], np.float32))
        for name, learner in learners.items():
            scores[name].append(learner.score(x.to(learner.device)).cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in scores.items()}


def run_study(learners: Mapping[str, AnyLearner], events: EventBatch, *, source: str, q: float = 0.01,
              exact: bool = False) -> CoordinateStudy:
    """Score ``events`` with every learner; figures per learner, overlaps per kind and pair of frames.

    exact: put the toy's exact-model AUCs beside the measured ones (for the d = 2 Gaussian toy).
    """
    if events.labels is None:
        raise ConfigError(f"{source}: the evaluation events have no truth labels")
    if not 0 < q <= 1:
        raise ConfigError(f"q must be in (0, 1], got {q!r}")
    scores = score_events(learners, events)
    labels = events.labels
    n_signal = int((labels == 1).sum())
    both_classes = 0 < n_signal < len(labels)
    figures, curves = {}, {}
    background = labels == 0
    for name, learner in learners.items():
        kind = learner.config.kind
        if both_classes:
            auc, sic = metrics.auc(labels, scores[name]), metrics.max_sic(labels, scores[name])
            error = auc_standard_error(labels, scores[name])
            eff_b, eff_s, _ = metrics.roc_curve(labels, scores[name])
            curves[name] = (eff_b, eff_s)
        else:
            auc = error = sic = math.nan
        finite = scores[name][background & np.isfinite(scores[name])]
        iqr = float(np.subtract(*np.percentile(finite, [75, 25]))) if len(finite) else math.nan
        figures[name] = LearnerFigures(name, kind, learner.coordinates, learner.features, auc, error, sic,
                                       toy_exact_auc(kind, learner.coordinates) if exact else None, iqr)
    overlaps = []
    # Learners that score the same events select as many: the shared fraction is then symmetric.
    for a, b in itertools.combinations(learners.values(), 2):
        if a.config.kind == b.config.kind and a.coordinates != b.coordinates and a.features == b.features:
            top = metrics.top_fraction(scores[a.name][background], q)
            fa, fb = figures[a.name], figures[b.name]
            overlaps.append(Overlap(a.config.kind, a.name, b.name, a.coordinates, b.coordinates, q,
                                    metrics.selection_overlap(scores[a.name][background],
                                                              scores[b.name][background], q), len(top),
                                    fb.auc - fa.auc, math.hypot(fa.auc_error, fb.auc_error)))
    return CoordinateStudy(source=source, events=len(events), learners=list(figures.values()), overlaps=overlaps,
                           curves=curves)


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown(study: CoordinateStudy) -> str:
    """The study as markdown: one table of figures per learner, one of top-q overlaps."""
    truth = " (AUC, SIC: signal vs background by truth label)" if study.curves else " (one class: no AUC, SIC)"
    lines = [
        f"# Coordinate study: {study.source}", "",
        f"Final models of the stream, scored on {study.events:,} evaluation events{truth}; "
        "an event a learner does not score (NaN, e.g. CWoLA outside its sideband) counts as never selected.", "",
        "| learner | kind | frame | AUC | AUC stat. error | exact-model AUC | AUC - exact | max SIC "
        "| background score IQR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in study.learners:
        gap = None if f.exact_auc is None or math.isnan(f.auc) else f.auc - f.exact_auc
        lines.append(f"| {f.name} | {f.kind} | {f.coordinates} | {_number(f.auc)} | {_number(f.auc_error)} | "
                     f"{_number(f.exact_auc)} | "
                     f"{'-' if gap is None else f'{gap:+.3f}'} | {_number(f.max_sic, 2)} | "
                     f"{_number(f.background_iqr)} |")
    if study.overlaps:
        q = study.overlaps[0].q
        lines += [
            "", f"Top-{q:g} selections on background events: the fraction of the events selected by "
            "learner a that learner b selects too (1 for a frame-independent score); the pair's AUC "
            "difference beside the statistical error of two such measurements.", "",
            "| kind | a (frame) | b (frame) | selected by a | shared | AUC b - a | stat. error |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {o.kind} | {o.a} ({o.coordinates_a}) | {o.b} ({o.coordinates_b}) | {o.selected:,} | "
                  f"{o.fraction:.1%} | "
                  f"{'-' if math.isnan(o.auc_difference) else f'{o.auc_difference:+.3f}'} | "
                  f"{_number(o.auc_difference_error)} |" for o in study.overlaps]
    return "\n".join(lines) + "\n"


def plot_roc(study: CoordinateStudy, path: str | Path) -> bool:
    """ROC curves of every learner (signal efficiency vs background rejection); False if no curves."""
    if not study.curves:
        return False
    figure = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = figure.subplots()
    styles = {"identity": "-", "normal_cdf": "--", "tanh_shift": ":", "log_mass": "--", "tau_ratio": ":"}
    groups: dict[tuple[str, tuple[str, ...]], str] = {}
    for f in study.learners:  # colour: learner kind and features; line style: frame
        color = groups.setdefault((f.kind, tuple(f.features)), f"C{len(groups)}")
        eff_b, eff_s = study.curves[f.name]
        ax.plot(eff_s, 1.0 - eff_b, ls=styles.get(f.coordinates, "-."), color=color,
                label=f"{f.name} ({f.coordinates}) AUC {f.auc:.3f}")
    ax.plot([0, 1], [1, 0], color="grey", lw=0.8, label="random")
    ax.set_xlabel("signal efficiency")
    ax.set_ylabel("background rejection (1 - eff_B)")
    ax.set_title(f"{Path(study.source).name}: learners by coordinates")
    ax.legend(fontsize=7, loc="lower left")
    figure.savefig(path, dpi=110)
    return True

