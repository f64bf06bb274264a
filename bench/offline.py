"""The offline anchor: every online line beside offline models trained on the same events.

``python -m bench.offline [--source S] [--events N] [--signal-fraction F]``

1. The stream: the events ``streamflow replay`` sends for the same source, signal
   fraction, seed and frame size (the producer's own frame cutter), in order.
2. Online: the ``lhco-density`` menu's single-network learners (flow in m and log m,
   CWoLA, autoencoder, one line each at q; CATHODE is judged by
   ``bench.cathode``) in-process on those frames, test-then-train, as a scorer does;
   every event keeps the score it got before it was learnt from, and each line
   its trigger decisions.
3. Offline, every event scored by a model that did not see it:
   - CWoLA with scikit-learn's HistGradientBoostingClassifier (the field's offline
     baseline): signal region (3.3-3.7 TeV) vs sidebands (3.1-3.9 TeV outside it)
     by mjj, on the CATHODE features, classes weighed equally, ``--folds``-fold
     (default 5) over the events in 3.1-3.9 TeV; events outside are not scored;
   - the online learners' own architectures and features, trained offline for
     ``--epochs`` passes, 2-fold (trained on one half of the stream, scoring the
     other).

Figures, all on the events from the first frame every online line judges (after
warm-up) on: in the signal region (SR events only) the max SIC (thresholds keeping
>= 10 background events) and AUC; stream-wide, at the online line's own rate r
(its accepted events / all events of that population) the signal efficiency and
the purity (signal / accepted) of each score's top r of *all* events (an unscored
event is never taken), and at 1% of the stream. The online line's row is its
trigger's real decisions on those events; the ratio column is online line /
offline eff_S at the same rate, for the same architecture (and against the
HistGradientBoosting CWoLA for the CWoLA line).

Writes a JSON of every figure with ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold

from bench.hotpaths import network_learners
from streamflow import metrics
from streamflow.analysis.coordinate_study import score_events
from streamflow.analysis.mass_coordinate_study import StudyConfig, train
from streamflow.events import EventBatch, open_source
from streamflow.events.chunking import first_events
from streamflow.learners import CATHODE_FEATURES
from streamflow.scoring.frame_scorer import FrameScorer, ScorerConfig
from streamflow.scoring.presets import preset
from streamflow.trigger.menu import SIGNAL_REGION

SIDEBANDS = (3100.0, 3900.0)
SIC_MIN_BACKGROUND = 10
BROAD_RATE = 0.01


@dataclass
class Stream:
    events: EventBatch
    start: int
    """Index of the first event every online line judged (the population of every figure)."""
    online_scores: dict[str, np.ndarray]
    bits: np.ndarray
    """uint64 per event: bit i set when online line i accepted it."""
    lines: list[dict[str, Any]]
    online_s: float


def stream_events(source: str, events: int | None, signal_fraction: float, seed: int,
                  frame_size: int) -> list[EventBatch]:
    """The frames the producer would send (same source, fraction, seed, frame cutter)."""
    opened = open_source(source, signal_fraction=signal_fraction, seed=seed)
    return list(first_events(opened.chunks(frame_size), events))


def anchored_menu(q: float, window: int, threads: int) -> ScorerConfig:
    """The lhco-density menu's single-network learners (flows, CWoLA, autoencoder) and their lines: the ones with an
    offline twin here. CATHODE and ANODE are composites (a flow and a classifier that learn together) and are
    judged by ``python -m bench.cathode``."""
    full = preset("lhco-density", q=q, window=window, device="cpu")
    learners = tuple(network_learners("lhco-density"))
    names = {c.name for c in learners}
    lines = tuple(line for line in full.lines if line.learner in names)
    return dataclasses.replace(full, learners=learners, lines=lines, threads=threads)


def online(batches: list[EventBatch], q: float, window: int, threads: int) -> Stream:
    """The lhco-density menu test-then-train over the frames: every event's score before learning, the lines'
    counts."""
    config = anchored_menu(q, window, threads)
    scorer = FrameScorer(config)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in scorer.learners}
    bits: list[np.ndarray] = []
    start, seen = None, 0
    started = time.monotonic()
    for batch in batches:
        result = scorer.process(batch)
        for name, values in result.scores.items():
            scores[name].append(values)
        bits.append(result.selection.bits)
        if start is None and not np.isnan(result.selection.thresholds).any():
            start = seen
        seen += len(batch)
    elapsed = time.monotonic() - started
    if start is None:
        raise SystemExit("bench.offline: the stream ended before every line was warm (give more --events)")
    events = EventBatch.concatenate(batches)
    lines = [dict(line) for line in scorer.line_stats()]
    return Stream(events, start, {k: np.concatenate(v) for k, v in scores.items()}, np.concatenate(bits), lines,
                  elapsed)


def hgb_cwola(events: EventBatch, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold HistGradientBoosting CWoLA scores (SR vs SB by mjj); NaN outside the sidebands."""
    mjj = events.column("mjj")
    window = (mjj >= SIDEBANDS[0]) & (mjj < SIDEBANDS[1])
    index = np.flatnonzero(window)
    x = events.features[index][:, [events.names.index(f) for f in CATHODE_FEATURES]]
    y = ((mjj[index] >= SIGNAL_REGION[0]) & (mjj[index] < SIGNAL_REGION[1])).astype(int)
    out = np.full(len(events), np.nan)
    for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        model = HistGradientBoostingClassifier(class_weight="balanced", random_state=seed)
        model.fit(x[train_idx], y[train_idx])
        out[index[test_idx]] = model.predict_proba(x[test_idx])[:, 1]
    return out


def offline_networks(events: EventBatch, epochs: int, batch_size: int, q: float, seed: int) -> dict[str, np.ndarray]:
    """The lhco-density menu's learners trained offline for ``epochs`` passes, 2-fold: each half scored by the
    model trained on the other half."""
    configs = network_learners("lhco-density")
    half = np.random.default_rng(seed).permutation(len(events)) < len(events) // 2
    out = {c.name: np.full(len(events), np.nan, np.float32) for c in configs}
    study = StudyConfig(epochs=epochs, batch_size=batch_size)
    for fold in (half, ~half):
        train_events, test_events = events.take(np.flatnonzero(fold)), events.take(np.flatnonzero(~fold))
        learners = {config.name: train(config, train_events, study) for config in configs}
        for name, values in score_events(learners, test_events).items():
            out[name][~fold] = values
    return out


def figures(labels: np.ndarray, mjj: np.ndarray, scores: np.ndarray, rate: float) -> dict[str, float]:
    """SR max SIC and AUC; stream-wide eff_S and purity of the top ``rate`` and of the top 1%."""
    inside = (mjj >= SIGNAL_REGION[0]) & (mjj < SIGNAL_REGION[1])
    sr_labels, sr_scores = labels[inside], scores[inside]
    out = {"sr_auc": metrics.auc(sr_labels, sr_scores),
           "sr_max_sic": metrics.max_sic(sr_labels, sr_scores, SIC_MIN_BACKGROUND)}
    for key, r in (("at_rate", rate), ("at_1pct", BROAD_RATE)):
        chosen = metrics.top_fraction(scores, r)
        signal = int((labels[chosen] == 1).sum())
        out[f"{key}_eff_s"] = signal / max(int((labels == 1).sum()), 1)
        out[f"{key}_purity"] = signal / len(chosen) if len(chosen) else math.nan
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    batches = stream_events(args.source, args.events, args.signal_fraction, args.seed, args.frame_size)
    stream = online(batches, args.q, args.window, args.threads)
    started = time.monotonic()
    offline = {"hgb_cwola": hgb_cwola(stream.events, args.folds, args.seed)}
    hgb_s = time.monotonic() - started
    networks = offline_networks(stream.events, args.epochs, args.batch_size, args.q, args.seed)
    offline_s = time.monotonic() - started
    pop = slice(stream.start, None)
    labels = stream.events.labels
    assert labels is not None
    labels, mjj = labels[pop], stream.events.column("mjj")[pop]
    inside = (mjj >= SIGNAL_REGION[0]) & (mjj < SIGNAL_REGION[1])
    rows = []
    bits = stream.bits[pop]
    for i, line in enumerate(stream.lines):
        learner = str(line["learner"])
        accepted = (bits >> np.uint64(i)) & np.uint64(1) == 1
        rate = float(accepted.mean())
        signal = int((accepted & (labels == 1)).sum())
        row: dict[str, Any] = {
            "line": line["name"], "rate": rate, "scored_fraction": line["scored_fraction"],
            "online_line": {"eff_s": signal / max(int((labels == 1).sum()), 1),
                            "purity": signal / max(int(accepted.sum()), 1),
                            "sr_eff_s": int((accepted & inside & (labels == 1)).sum())
                            / max(int((inside & (labels == 1)).sum()), 1)},
            "online_scores": figures(labels, mjj, stream.online_scores[learner][pop], rate),
            "offline_same_architecture": figures(labels, mjj, networks[learner][pop], rate),
        }
        if learner == "cwola":
            row["offline_hgb_cwola"] = figures(labels, mjj, offline["hgb_cwola"][pop], rate)
        rows.append(row)
    return {
        "source": args.source, "events": len(stream.events), "population_start": stream.start,
        "population_events": len(labels), "signal_fraction": float((labels == 1).mean()),
        "signal_region": list(SIGNAL_REGION), "sr_events": int(inside.sum()),
        "sr_s_over_b": float((labels[inside] == 1).sum() / max(int((labels[inside] == 0).sum()), 1)),
        "q": args.q, "window": args.window, "epochs": args.epochs, "batch_size": args.batch_size,
        "folds": args.folds,
        "online_s": round(stream.online_s, 1),
        "hgb_s": round(hgb_s, 1), "offline_s": round(offline_s, 1), "lines": rows,
    }


def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def render(result: dict[str, Any]) -> str:
    out = [f"source {result['source']}: {result['events']:,} events; figures on the {result['population_events']:,} "
           f"from the first frame every line judges on; signal fraction {result['signal_fraction']:.3%}; "
           f"SR {result['signal_region'][0]:g}-{result['signal_region'][1]:g} GeV: {result['sr_events']:,} events, "
           f"S/B {result['sr_s_over_b']:.3%}. Online pass {result['online_s']} s; offline {result['offline_s']} s "
           f"(HGB CWoLA {result['hgb_s']} s, {result['folds']} folds; networks {result['epochs']} epochs of "
           f"minibatches of {result['batch_size']}, 2 folds).",
           "",
           "| line | model | stream rate r | eff_S at r | purity at r | online/offline eff_S at r "
           "| eff_S at 1% | SR AUC | SR max SIC |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["lines"]:
        rate = row["rate"]
        line = row["online_line"]
        out.append(f"| {row['line']} | online trigger line | {rate:.3%} | {_f(line['eff_s'])} | {_f(line['purity'])} "
                   "| - | - | - | - |")
        entries = [("online scores (test-then-train)", row["online_scores"]),
                   ("offline, same architecture", row["offline_same_architecture"])]
        if "offline_hgb_cwola" in row:
            entries.append(("offline HistGradientBoosting CWoLA", row["offline_hgb_cwola"]))
        for name, f in entries:
            ratio = line["eff_s"] / f["at_rate_eff_s"] if name.startswith("offline") and f["at_rate_eff_s"] else None
            out.append(f"| {row['line']} | {name} | {rate:.3%} | {_f(f['at_rate_eff_s'])} | {_f(f['at_rate_purity'])} "
                       f"| {_f(ratio)} | {_f(f['at_1pct_eff_s'])} | {_f(f['sr_auc'])} | {_f(f['sr_max_sic'])} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.offline", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="synthetic", help="synthetic (default) or an LHCO file")
    p.add_argument("--events", type=int, default=None,
                   help="events of the stream (default: 1,000,000 synthetic, a file once)")
    p.add_argument("--signal-fraction", type=float, default=0.01, help="signal fraction (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="the stream's seed (as streamflow replay --seed)")
    p.add_argument("--frame-size", type=int, default=4096, help="events per frame (default 4096)")
    p.add_argument("--q", type=float, default=0.01, help="the online lines' accept fraction (default 0.01)")
    p.add_argument("--window", type=int, default=20_000,
                   help="the online lines' window of scores (default 20000, as streamflow run; CWoLA scores ~29%% "
                        "of the events, so its line warms up after ~70k)")
    p.add_argument("--folds", type=int, default=5, help="HistGradientBoosting CWoLA folds (default 5)")
    p.add_argument("--epochs", type=int, default=3, help="offline epochs of the networks (default 3)")
    p.add_argument("--batch-size", type=int, default=1024,
                   help="offline minibatch of the networks (default 1024, the online learners'; smaller gives a "
                        "short stream more steps)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.events is None and args.source == "synthetic":
        args.events = 1_000_000
    if (args.folds < 2 or args.epochs < 1 or args.batch_size < 1 or not 0 < args.q < 1
            or not 0 <= args.signal_fraction <= 1):
        print("bench.offline: error: --folds >= 2, --epochs >= 1, --batch-size >= 1, 0 < --q < 1, "
              "0 <= --signal-fraction <= 1",
              file=sys.stderr)
        return 2
    result = run(args)
    print(render(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
