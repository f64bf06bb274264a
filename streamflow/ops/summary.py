"""``summary.json``: every trigger line's figures, two ways, machine-readable.

Written by ``streamflow run`` into the run folder (and shown by the report). For
each scorer and each line, from the scorer's last telemetry message (whole-run
counts after the line's warm-up) and its scores sample (``scores-<scorer>.npz``):

- ``target`` (q), ``achieved`` (accepted / scored events: what the threshold
  holds), ``scored_fraction`` (scored / all events) and ``scores_all_events``
  (False for a learner that scores only some events, e.g. CWoLA: NaN outside its
  sidebands);
- ``stream``: over *all* events of the stream after warm-up -- ``fraction``
  (accepted / all events: what the line takes of the stream), eff_S, eff_B with
  binomial errors sqrt(e (1 - e) / n), SIC = eff_S / sqrt(eff_B), and the AUC of
  the learner on the scores sample with NaN ranked lowest (an unscored event is
  never selected);
- ``signal_region``: the same over the events with mjj inside the signal region
  (default 3.3-3.7 TeV, the scorer's ``signal_region``), the literature's
  convention; the AUC there too.

- ``operations``: the line's counts over the whole run, as in the scorer's
  ledger: ``seen`` (its population, warm-up included), ``not_judged`` (met in
  warm-up), ``accepted`` (passed its threshold: the ``passed`` bits),
  ``recorded`` (kept after its ``prescale``: the ``bits`` of ``selections.h5``),
  ``unique``, ``overlap`` (per other line), ``restarts``; ``kind`` "score" or "zero_bias".

``population`` states what the figures are of: events, signal fraction, and the
signal-region S/B. ``equal_rate`` compares the learners at one stream-wide rate
(the smallest any line achieved) on the scores sample: each learner's top
``rate`` of the sample's events (NaN lowest), eff_S, eff_B and SIC -- lines are
compared at equal stream-wide rate, not at their own. ``learning`` gives the
scorer's learning policy (ScorerConfig.learn) and per learner the events it
scored and learnt from in this run, and their ratio.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from streamflow import metrics
from streamflow.ops.dashboard import lookup, number
from streamflow.ops.run_folder import RunData
from streamflow.scoring.score_buffer import RESERVED
from streamflow.trigger.menu import SIGNAL_REGION

OPERATIONS = ("kind", "prescale", "seen", "not_judged", "accepted", "recorded", "unique", "overlap", "restarts")
"""A line's trigger-operation counts, as the scorer's ledger has them (whole run, warm-up included)."""

SUMMARY_FILE = "summary.json"


def signal_region(run: RunData) -> tuple[float, float]:
    """The run's signal region in GeV (the scorer config's, else the default)."""
    value = lookup(run.config, "scorer", "signal_region")
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(number(v) is not None for v in value):
        return float(value[0]), float(value[1])
    return SIGNAL_REGION


def _error(part: int, whole: int) -> float | None:
    if whole <= 0:
        return None
    e = part / whole
    return math.sqrt(e * (1.0 - e) / whole)


def _ratio(part: Any, whole: Any) -> float | None:
    p, w = number(part), number(whole)
    return p / w if p is not None and w else None


def _sic(eff_s: float | None, eff_b: float | None) -> float | None:
    return eff_s / math.sqrt(eff_b) if eff_s is not None and eff_b else None


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if not ((labels == 1).any() and (labels == 0).any()):
        return None
    return metrics.auc(labels, scores)


def _figures(line: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """fraction, eff_S, eff_B (with errors) and SIC from a line's counts named ``names``:
    (events, accepted, signal, signal accepted, background, background accepted)."""
    events, accepted, signal, signal_acc, background, background_acc = (int(number(line.get(n)) or 0)
                                                                        for n in names)
    eff_s, eff_b = _ratio(signal_acc, signal), _ratio(background_acc, background)
    return {"events": events, "fraction": _ratio(accepted, events),
            "eff_s": eff_s, "eff_s_error": _error(signal_acc, signal),
            "eff_b": eff_b, "eff_b_error": _error(background_acc, background), "sic": _sic(eff_s, eff_b),
            "signal_events": signal, "background_events": background}


STREAM_COUNTS = ("events", "accepted", "signal_events", "signal_accepted", "background_events", "background_accepted")
SR_COUNTS = ("sr_events", "sr_accepted", "sr_signal", "sr_signal_accepted", "sr_background", "sr_background_accepted")


def _sample(arrays: dict[str, np.ndarray],
            region: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(labels, in-signal-region mask, learner scores) of a scores sample's labelled events."""
    labels = np.asarray(arrays.get("labels", np.zeros(0, np.int8)))
    keep = (labels == 0) | (labels == 1)
    mjj = np.asarray(arrays["mjj"], np.float64)[keep] if "mjj" in arrays else np.full(int(keep.sum()), np.nan)
    inside = (mjj >= region[0]) & (mjj < region[1])
    learners = {name: np.asarray(values, np.float64)[keep] for name, values in arrays.items()
                if name not in RESERVED and np.shape(values) == keep.shape}
    return labels[keep], inside, learners


def equal_rate(labels: np.ndarray, learners: dict[str, np.ndarray], rate: float) -> dict[str, Any]:
    """Each learner's eff_S, eff_B and SIC when it takes the top ``rate`` of all events (NaN lowest)."""
    out: dict[str, Any] = {}
    signal, background = labels == 1, labels == 0
    for name, scores in learners.items():
        chosen = np.zeros(len(scores), bool)
        chosen[metrics.top_fraction(scores, rate)] = True
        eff_s = _ratio(int((chosen & signal).sum()), int(signal.sum()))
        eff_b = _ratio(int((chosen & background).sum()), int(background.sum()))
        out[name] = {"eff_s": eff_s, "eff_b": eff_b, "sic": _sic(eff_s, eff_b),
                     "scored_fraction": float(np.isfinite(scores).mean()) if len(scores) else None}
    return out


def learning(final: dict[str, Any]) -> dict[str, Any]:
    """A scorer's learning policy and, per learner, the events it scored and learnt from and their ratio
    (this run's, from its last telemetry message; ScorerConfig.learn)."""
    learners = final.get("learners") if isinstance(final.get("learners"), dict) else {}
    return {"policy": final.get("learn", "all"), "learners": {
        str(name): {key: number(stats.get(key)) for key in ("scored", "learned_from", "learned_fraction")}
        for name, stats in (learners or {}).items() if isinstance(stats, dict) and "learned_from" in stats}}


def run_summary(run: RunData) -> dict[str, Any]:
    """The summary of a loaded run folder (see the module docstring)."""
    region = signal_region(run)
    scorers: dict[str, Any] = {}
    population: dict[str, Any] = {}
    for stream in run.of_kind("scorer"):
        lines = [line for line in stream.final.get("lines") or [] if isinstance(line, dict)]
        labels, inside, learners = _sample(run.scores.get(stream.role, {}), region)
        rows = []
        for line in lines:
            learner = str(line.get("learner") or "")
            scores = learners.get(learner)
            scored = _ratio(line.get("judged"), line.get("events"))
            stream_part, sr_part = _figures(line, STREAM_COUNTS), _figures(line, SR_COUNTS)
            stream_part["auc"] = _auc(labels, scores) if scores is not None else None
            sr_part["auc"] = _auc(labels[inside], scores[inside]) if scores is not None else None
            row: dict[str, Any] = {
                "name": line.get("name"), "learner": learner, "target": number(line.get("q")),
                "achieved": number(line.get("achieved")), "threshold": number(line.get("threshold")),
                "scored_fraction": scored, "scores_all_events": None if scored is None else scored >= 0.999,
                "stream": stream_part, "signal_region": sr_part,
                "operations": {key: line.get(key) for key in OPERATIONS},
            }
            rows.append(row)
        rates = [float(r["stream"]["fraction"]) for r in rows if r["stream"]["fraction"]]
        entry: dict[str, Any] = {"lines": rows, "sample_events": len(labels), "learning": learning(stream.final)}
        if rates and len(labels) and learners:
            entry["equal_rate"] = {"rate": min(rates), "population": "the scores sample, all events",
                                   "learners": equal_rate(labels, learners, min(rates))}
        scorers[stream.role] = entry
        if rows and not population:
            stream_part, sr_part = rows[0]["stream"], rows[0]["signal_region"]
            population = {
                "events_after_warmup": stream_part["events"],
                "signal_fraction": _ratio(stream_part["signal_events"], stream_part["events"]),
                "signal_region_events": sr_part["events"],
                "signal_region_s_over_b": _ratio(sr_part["signal_events"], sr_part["background_events"]),
                "note": "counts of the first line, from its first judged frame on",
            }
    return {"run": run.run_dir.resolve().name, "source": run.source, "signal_region_gev": list(region),
            "population": population, "scorers": scorers}


def write_summary(run: RunData) -> Path:
    """Write ``summary.json`` into the run folder; returns its path."""
    path = run.run_dir / SUMMARY_FILE
    path.write_text(json.dumps(_plain(run_summary(run)), indent=2, allow_nan=False) + "\n")
    return path


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, NaN and infinities as null."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
