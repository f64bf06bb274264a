"""Online CATHODE and ANODE beside CWoLA and the density flow: closure, sculpting and injection figures.

    python -m bench.cathode closure   [--events N]                   # background-only synthetic stream
    python -m bench.cathode injection [--events N] [--signal-fraction F] [--source S]
    python -m bench.cathode scan      [--events N] [--signal-fraction F] [--kinds cwola,cathode] [--budget B]
    python -m bench.cathode invariance [--events N] [--signal-fraction F] [--kinds anode] [--seeds 0,1,2,3]
                                       [--options JSON]
    python -m bench.cathode early     [--events N] [--signal-fraction F] [--source S]   # a small stream

Each runs one :class:`~streamflow.scoring.frame_scorer.FrameScorer` over the stream,
test-then-train (every event scored before it is learnt from), frames of 4096,
one CPU thread, and prints a markdown table.

closure (no signal): CATHODE's classifier AUC for SR data against as many fresh
samples of its background flow at SR masses (the last 40k events held out, checked
every 5 frames once the gate is open), in the default SR (3.3-3.7 TeV) and a fake
SR at 3.1-3.3 TeV (where the default sidebands are: an interpolation check); and per
line (q = 5% of its scored events, window 2,000) the KS distance and p-value between
the accepted events' mjj and every scored event's: a line that sculpts a bump has a
small p.

injection (1% signal by default): the stream's last ``--held-out`` events are kept
apart; on the streamed events, per learner, (a) **online**: the test-then-train
scores, SR-only (3.3-3.7 TeV events) AUC and max SIC, and the stream-wide signal
efficiency when the top 1% of the *whole stream* by that score is accepted (NaN
never accepted); (b) **final model**: the same figures on the held-out events
scored by the final learners. Statistical errors: AUC by DeLong
(analysis.coordinate_study.auc_standard_error); max SIC is quoted with the signal
count behind it (its relative error is about 1/sqrt(2 n_S) at the optimum).
The population is stated per row: SR events, or the whole stream.

scan: the mjj scan (scoring/scan.py, 2.6-6 TeV, 14 windows) over the stream; per
window its SR, the line's q, achieved accept fraction (of its scored events), and
its running eff_S, eff_B and SIC at the end (as the trigger counts them: fractions
of the signal and background events the line judged, i.e. its window's events).

early (a small stream, e.g. the first 40,000 events of the real file): the default
``lhco`` menu's resonance lines (CWoLA, CATHODE, ANODE; q = 1%, window 20,000, the
trigger's defaults) over the first ``--events`` events, every event counted from
the first: per line its population (the events it scores) and the SR events, the
share of each the line judged (its learner scored the event and the line was past
its warm-up), the accepted fraction of each counted from the first event (binomial
error sqrt(q / n)), and on the SR events eff_S, eff_B and SIC of its decisions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from scipy import stats

from streamflow import metrics
from streamflow.analysis.coordinate_study import auc_standard_error
from streamflow.config import from_dict
from streamflow.events import EventBatch, open_source
from streamflow.events.chunking import first_events
from streamflow.learners import CATHODE_FEATURES, AnodeLearner, CathodeLearner
from streamflow.scoring.frame_scorer import FrameScorer, ScorerConfig
from streamflow.scoring.presets import preset

FRAME = 4096
SR = (3300.0, 3700.0)
MODELS = (("m", "identity", 0), ("logm", "log_mass", 0), ("m_seed1", "identity", 1))
"""invariance: each learner in the m frame, in the log m frame, and in the m frame again from another seed."""
FAKE_SR = {"signal_region": [3100.0, 3300.0], "sidebands": [[2900.0, 3100.0], [3300.0, 3500.0]]}


def stream(source: str, n_events: int, signal_fraction: float, seed: int) -> list[EventBatch]:
    src = open_source(source, signal_fraction=signal_fraction, seed=seed)
    return [batch for _, batch in zip(range(n_events // FRAME), src.chunks(FRAME), strict=False)]


def closure(n_events: int, seed: int) -> None:
    frames = stream("synthetic", n_events + 40_000, 0.0, seed)
    held_out = torch.from_numpy(np.concatenate([b.features for b in frames[-10:]]))
    config = from_dict(ScorerConfig, {
        "learners": [{"kind": "cathode", "name": "cathode"}, {"kind": "cathode", "name": "cathode_fake_sr", **FAKE_SR},
                     {"kind": "anode", "name": "anode"}, {"kind": "cwola", "name": "cwola"}],
        "lines": [{"name": n, "learner": n, "accept": 0.05, "window": 2000}
                  for n in ("cathode", "cathode_fake_sr", "anode", "cwola")],
        "device": "cpu", "threads": 1})
    scorer = FrameScorer(config)
    names = [line.name for line in config.lines]
    aucs: dict[str, list[tuple[int, float, float]]] = {"cathode": [], "cathode_fake_sr": []}
    mjj, bits, scores = [], [], {n: [] for n in names}
    started = time.time()
    for i, batch in enumerate(frames[:-10]):
        result = scorer.process(batch)
        mjj.append(batch.column("mjj"))
        bits.append(result.selection.bits)
        for n in names:
            scores[n].append(result.scores[n])
        if i % 5 == 4:
            for n in aucs:
                learner = scorer.learners[n]
                assert isinstance(learner, CathodeLearner)
                if learner.gate.open:
                    data, samples = (t.numpy() for t in learner.closure_logits(held_out))
                    labels, values = np.r_[np.ones(len(data)), np.zeros(len(samples))], np.r_[data, samples]
                    aucs[n].append(((i + 1) * FRAME, metrics.auc(labels, values),
                                    auc_standard_error(labels, values)))
    elapsed = time.time() - started
    print(f"closure: {len(frames) - 10} frames x {FRAME} background-only synthetic events (seed {seed}), "
          f"{elapsed:.0f} s on this machine\n")
    print("| learner | gate opened at (sideband events learnt) | closure AUC (events streamed: AUC +- DeLong) |")
    print("|---|---|---|")
    for n, values in aucs.items():
        learner = scorer.learners[n]
        assert isinstance(learner, CathodeLearner)
        row = ", ".join(f"{e // 1000}k: {a:.3f} +- {s:.3f}" for e, a, s in values)
        print(f"| {n} | {learner.gate.opened_at} | {row} |")
    all_mjj, all_bits = np.concatenate(mjj), np.concatenate(bits)
    half = len(all_mjj) // 2
    print("\n| line | scored events | accepted | KS D (accepted vs scored mjj) | KS p | second half: KS D | p |")
    print("|---|---|---|---|---|---|---|")
    for i, n in enumerate(names):
        scored = np.isfinite(np.concatenate(scores[n]))
        accepted = (all_bits & np.uint64(1 << i)) > 0
        ks = stats.ks_2samp(all_mjj[accepted], all_mjj[scored])
        late = stats.ks_2samp(all_mjj[half:][accepted[half:]], all_mjj[half:][scored[half:]])
        print(f"| {n} | {scored.sum()} | {accepted.sum()} | {ks.statistic:.3f} | {ks.pvalue:.2g} | "
              f"{late.statistic:.3f} | {late.pvalue:.2g} |")


def _figures(labels: np.ndarray, mjj: np.ndarray, scores: np.ndarray) -> str:
    in_sr = (mjj >= SR[0]) & (mjj < SR[1])
    sr_labels, sr_scores = labels[in_sr], scores[in_sr]
    auc = metrics.auc(sr_labels, sr_scores)
    error = auc_standard_error(sr_labels, sr_scores)
    sic = metrics.max_sic(sr_labels, sr_scores)
    top = metrics.top_fraction(scores, 0.01)
    efficiency = labels[top].sum() / max(labels.sum(), 1)
    return f"{auc:.3f} +- {error:.3f} | {sic:.2f} | {100 * efficiency:.1f}%"


def injection(source: str, n_events: int, signal_fraction: float, held_out: int, seed: int) -> None:
    frames = stream(source, n_events, signal_fraction, seed)
    n_held = held_out // FRAME
    train, test = frames[:-n_held], frames[-n_held:]
    config = from_dict(ScorerConfig, {
        "learners": [{"kind": "cathode", "name": "cathode"}, {"kind": "anode", "name": "anode"},
                     {"kind": "cwola", "name": "cwola"},
                     {"kind": "flow", "name": "flow_logm", "context": "mjj", "coordinates": "log_mass"}],
        "lines": [{"name": n, "learner": n, "accept": 0.01, "window": 20_000}
                  for n in ("cathode", "anode", "cwola", "flow_logm")],
        "device": "cpu", "threads": 1})
    scorer = FrameScorer(config)
    online: dict[str, list[np.ndarray]] = {n: [] for n in scorer.learners}
    started = time.time()
    for batch in train:
        result = scorer.process(batch)
        for n in online:
            online[n].append(result.scores[n])
    elapsed = time.time() - started
    labels = np.concatenate([b.labels for b in train]).astype(int)
    mjj = np.concatenate([b.column("mjj") for b in train])
    test_labels = np.concatenate([b.labels for b in test]).astype(int)
    test_mjj = np.concatenate([b.column("mjj") for b in test])
    test_x = torch.from_numpy(np.concatenate([b.features for b in test]))
    in_sr = (mjj >= SR[0]) & (mjj < SR[1])
    n_s, n_b = int(labels[in_sr].sum()), int((1 - labels[in_sr]).sum())
    print(f"injection: {source}, {len(train) * FRAME} streamed + {len(test) * FRAME} held-out events, "
          f"signal fraction {signal_fraction} (stream: {int(labels.sum())} signal); SR 3.3-3.7 TeV holds "
          f"{n_s} signal and {n_b} background streamed events (S/B = {n_s / max(n_b, 1):.4f}); "
          f"{elapsed:.0f} s on this machine\n")
    print("| learner | scores | SR-only AUC +- DeLong | SR-only max SIC | stream-wide eff_S at 1% accept |")
    print("|---|---|---|---|---|")
    for n, learner in scorer.learners.items():
        print(f"| {n} | online (test-then-train) | {_figures(labels, mjj, np.concatenate(online[n]))} |")
        final = learner.score(test_x).numpy()
        print(f"| {n} | final model, held-out | {_figures(test_labels, test_mjj, final)} |")
    cathode = scorer.learners["cathode"]
    assert isinstance(cathode, CathodeLearner)
    gate = (f"opened after {cathode.gate.opened_at} sideband events" if cathode.gate.open
            else f"never opened (it needs {cathode.config.gate_events} sideband events and a settled loss)")
    print(f"\ncathode gate {gate}; SR events learnt by its background flow: {cathode.background.forbidden_events}")


def scan(n_events: int, signal_fraction: float, kinds: list[str], budget: float, seed: int) -> None:
    frames = stream("synthetic", n_events, signal_fraction, seed)
    config = from_dict(ScorerConfig, {"scan": {"kinds": kinds, "budget": budget, "window": 5000},
                                       "device": "cpu", "threads": 1})
    scorer = FrameScorer(config)
    started = time.time()
    for batch in frames:
        scorer.process(batch)
    elapsed = time.time() - started
    print(f"scan: {len(frames) * FRAME} synthetic events, signal fraction {signal_fraction} (seed {seed}), "
          f"{len(config.lines)} lines sharing a budget of {budget}; {len(frames) * FRAME / elapsed:.0f} events/s "
          f"on this machine\n")
    regions = {c.name: c.signal_region for c in config.learners}
    print("| line | SR (GeV) | q | achieved | eff_S | eff_B | SIC |")
    print("|---|---|---|---|---|---|---|")
    for line in scorer.line_stats():
        lo, hi = regions[line["name"]]
        print(f"| {line['name']} | {lo:.0f}-{hi:.0f} | {line['q']:.4f} | {line['achieved']:.4f} | "
              f"{line['eff_s']:.4f} | {line['eff_b']:.4f} | {line['sic']:.2f} |")


OVERLAPS = ("m vs log m, same seed: SR events", "same, SR background", "m vs log m, across seeds: SR events",
            "same, SR background", "m vs m, across seeds: SR background", "coordinate effect")
"""invariance: the columns of a learner's row (percent; the coordinate effect in points)."""


def invariance(n_events: int, signal_fraction: float, held_out: int, seeds: list[int], kinds: tuple[str, ...],
               options: dict) -> None:
    """CATHODE, ANODE and CWoLA (or ``kinds``) each in the m and the log m coordinates (identity / log_mass),
    and once more in m from another seed (the control), streamed side by side; on the held-out SR events,
    the share of the top 1% by one that is also in the top 1% by the other -- over all of them, and over
    their background events only (the coordinate study's definition,
    :mod:`streamflow.analysis.coordinate_study`: what a line selects where there is no signal, so a learner
    that finds the signal in both frames does not score by that alone).

    The seed control separates the two causes of a low overlap. Two models learnt from the same initial
    weights in two frames see the same batches and start alike: the same-seed overlap carries that
    shared start as much as the coordinates (a classifier whose input changes in one feature stays close
    to its twin). Across seeds the start is not shared: m from seed 1 against log m from seed 0 differs
    in the frame *and* the training noise, m from seed 0 against m from seed 1 in the noise alone; the
    **coordinate effect** = seed overlap - cross overlap (background events) is what the frame moves
    beyond training noise. For a likelihood ratio it is 0 within errors (the Jacobian cancels); for a
    density it is what the Jacobian moves.

    One stream per seed in ``seeds`` (run side by side, a process each, up to the CPU count); with more
    than one, the mean of each figure over the streams and its standard error. ``options`` go to the
    CATHODE and ANODE configs; for ANODE the overlaps of its raw log ratio R (before the per-mass-slice
    calibration) are printed too."""
    jobs = [(n_events, signal_fraction, held_out, seed, kinds, options) for seed in seeds]
    with ProcessPoolExecutor(min(len(seeds), os.cpu_count() or 1)) as pool:
        streams = list(pool.map(invariance_stream, *zip(*jobs)))
    header = f"| learner | {' | '.join(OVERLAPS)} | SR-only AUC: m, log m, m seed 1 |"
    rule = "|---" * (len(OVERLAPS) + 2) + "|"
    for summary, rows in streams:
        print(f"{summary}\n\n{header}\n{rule}")
        for name, (overlaps, aucs) in rows.items():
            figures = " | ".join(f"{v:+.1f}" if column == OVERLAPS[-1] else f"{v:.1f}%"
                                 for column, v in zip(OVERLAPS, overlaps))
            print(f"| {name} | {figures} | {', '.join(f'{a:.3f}' for a in aucs)} |")
        print()
    if len(seeds) > 1:
        print(f"mean over the {len(seeds)} streams (seeds {', '.join(map(str, seeds))}) +- standard error:\n")
        print(f"| learner | {' | '.join(OVERLAPS)} | SR-only AUC, m |\n{rule}")
        for name in streams[0][1]:
            per_stream = np.array([rows[name][0] for _, rows in streams])
            sem = per_stream.std(axis=0, ddof=1) / math.sqrt(len(seeds))
            auc = np.mean([rows[name][1][0] for _, rows in streams])
            print(f"| {name} | " + " | ".join(f"{m:.1f} +- {e:.1f}" for m, e in zip(per_stream.mean(axis=0), sem))
                  + f" | {auc:.3f} |")


def invariance_stream(n_events: int, signal_fraction: float, held_out: int, seed: int, kinds: tuple[str, ...],
                       options: dict) -> tuple[str, dict[str, tuple[list[float], list[float]]]]:
    """One stream of :func:`invariance`: its summary line and, per learner, its overlaps and AUCs."""
    torch.set_num_threads(1)
    frames = stream("synthetic", n_events, signal_fraction, seed)
    n_held = held_out // FRAME
    train, test = frames[:-n_held], frames[-n_held:]
    density = {"features": list(CATHODE_FEATURES), "context": "mjj"}  # kind "flow": the lhco-density flows
    learners = [{"kind": kind, "name": f"{kind}_{short}",
                 **(options if kind in ("cathode", "anode") else density if kind == "flow" else {}),
                 "coordinates": coordinates, "seed": seed_}  # the frame and the seed are the study's own
                for kind in kinds for short, coordinates, seed_ in MODELS]
    config = from_dict(ScorerConfig, {
        "learners": learners,
        "lines": [{"name": c["name"], "learner": c["name"], "accept": 0.01, "window": 20_000} for c in learners],
        "device": "cpu", "threads": 1})
    scorer = FrameScorer(config)
    started = time.perf_counter()
    for batch in train:
        scorer.process(batch)
    elapsed = time.perf_counter() - started
    test_x = torch.from_numpy(np.concatenate([b.features for b in test]))
    mjj = np.concatenate([b.column("mjj") for b in test])
    labels = np.concatenate([b.labels for b in test]).astype(int)
    in_sr = (mjj >= SR[0]) & (mjj < SR[1])
    background = labels[in_sr] == 0
    n_top = max(1, round(0.01 * background.sum()))
    summary = (f"invariance: {len(train) * FRAME} synthetic events streamed (seed {seed}, {elapsed:.0f} s), signal "
               f"fraction {signal_fraction}; {in_sr.sum()} held-out SR events ({labels[in_sr].sum()} signal); "
               f"background top 1% = {n_top} events, an overlap's binomial error about "
               f"+- {100 * math.sqrt(0.25 / n_top):.1f} points at most")

    def figures(m: np.ndarray, logm: np.ndarray, m_seed1: np.ndarray) -> tuple[list[float], list[float]]:
        pairs = [(m, logm), (m_seed1, logm), (m, m_seed1)]
        overlaps = [metrics.selection_overlap(a, b, 0.01) for a, b in pairs[:2]]
        quiet = [metrics.selection_overlap(a[background], b[background], 0.01) for a, b in pairs]
        percent = [100 * v for v in (overlaps[0], quiet[0], overlaps[1], quiet[1], quiet[2], quiet[2] - quiet[1])]
        return percent, [metrics.auc(labels[in_sr], s) for s in (m, logm, m_seed1)]

    rows = {}
    for kind in kinds:
        rows[kind] = figures(*(scorer.learners[f"{kind}_{short}"].score(test_x).numpy()[in_sr]
                               for short, _, _ in MODELS))
        if kind == "anode":
            models = [scorer.learners[f"anode_{short}"] for short, _, _ in MODELS]
            with torch.no_grad():
                rows["anode, raw R"] = figures(*(a.log_ratio(test_x).numpy()[in_sr] for a in models
                                                 if isinstance(a, AnodeLearner)))
    return summary, rows


def early(source: str, n_events: int, signal_fraction: float, seed: int) -> None:
    names = ("cwola", "cathode", "anode")
    menu = preset("lhco", device="cpu")
    config = dataclasses.replace(menu, learners=tuple(c for c in menu.learners if c.name in names),
                                 lines=tuple(line for line in menu.lines if line.learner in names), threads=1)
    scorer = FrameScorer(config)
    lines = [line.name for line in config.lines]
    mjj, labels, bits, judged, scored = [], [], [], {n: [] for n in lines}, {n: [] for n in lines}
    started = time.time()
    for batch in first_events(open_source(source, signal_fraction=signal_fraction, seed=seed).chunks(FRAME),
                              n_events):
        result = scorer.process(batch)
        mjj.append(batch.column("mjj"))
        labels.append(batch.labels)
        bits.append(result.selection.bits)
        for i, n in enumerate(lines):
            finite = np.isfinite(result.scores[config.lines[i].learner])
            scored[n].append(finite)
            judged[n].append(finite & bool(np.isfinite(result.selection.thresholds[i])))
    elapsed = time.time() - started
    all_mjj, y, all_bits = np.concatenate(mjj), np.concatenate(labels).astype(int), np.concatenate(bits)
    in_sr = (all_mjj >= SR[0]) & (all_mjj < SR[1])
    n_s, n_b = int(y[in_sr].sum()), int((1 - y[in_sr]).sum())
    print(f"early: {source}, first {len(y)} events, signal fraction {signal_fraction} (seed {seed}); SR 3.3-3.7 "
          f"TeV holds {n_s} signal and {n_b} background events (S/B = {n_s / max(n_b, 1):.4f}); {elapsed:.0f} s\n")
    print("| line | population | judged | accepted / population (from the first event) | SR events judged | "
          "accepted / SR events | SR eff_S | SR eff_B | SR SIC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, n in enumerate(lines):
        population, seen = np.concatenate(scored[n]), np.concatenate(judged[n])
        accepted = (all_bits & np.uint64(1 << i)) > 0
        q = config.lines[i].accept
        pop, sr = int(population.sum()), int(in_sr.sum())
        eff_s = (accepted & in_sr & (y == 1)).sum() / max(n_s, 1)
        eff_b = (accepted & in_sr & (y == 0)).sum() / max(n_b, 1)
        sic = eff_s / math.sqrt(eff_b) if eff_b > 0 else math.nan
        print(f"| {n} | {pop} | {seen.sum() / max(pop, 1):.1%} | {accepted.sum() / max(pop, 1):.2%} +- "
              f"{math.sqrt(q / max(pop, 1)):.2%} | {(seen & in_sr).sum() / sr:.1%} | "
              f"{(accepted & in_sr).sum() / sr:.2%} +- {math.sqrt(q / sr):.2%} | {eff_s:.3f} | {eff_b:.4f} | "
              f"{sic:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=("closure", "injection", "scan", "invariance", "early"))
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--signal-fraction", type=float, default=0.01)
    parser.add_argument("--source", default="synthetic")
    parser.add_argument("--held-out", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--seeds", default=None, help="invariance: streams to average over, e.g. 0,1,2,3 "
                        "(a process each; default --seed)")
    parser.add_argument("--kinds", default=None, help="scan: kinds per window (default cwola); "
                        "invariance: learners to compare (default cathode,anode,cwola; flow: the density flow)")
    parser.add_argument("--budget", type=float, default=0.14)
    parser.add_argument("--options", default="{}", help="invariance: JSON options for the CATHODE and ANODE configs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.study == "closure":
        closure(args.events, args.seed)
    elif args.study == "invariance":
        kinds = tuple((args.kinds or "cathode,anode,cwola").split(","))
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [args.seed]
        invariance(args.events, args.signal_fraction, args.held_out, seeds, kinds, json.loads(args.options))
    elif args.study == "early":
        early(args.source, args.events, args.signal_fraction, args.seed)
    elif args.study == "scan":
        scan(args.events, args.signal_fraction, (args.kinds or "cwola").split(","), args.budget, args.seed)
    else:
        injection(args.source, args.events, args.signal_fraction, args.held_out, args.seed)


if __name__ == "__main__":
    main()
