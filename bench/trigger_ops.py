"""Trigger operations on a real stream: every line's warm-up, rate, per-interval rate, budget and zero-bias.

Drives :class:`~streamflow.scoring.frame_scorer.FrameScorer` directly (no sockets:
the same score -> select -> learn per frame as ``streamflow run``'s scorer) over
the first ``--events`` events of ``--source`` in frames of 4096 (the producer's
default), with the preset that fits the source (``lhco``: cathode, anode,
cwola, ae at q = 1%, window 20,000, the trigger defaults), and prints per line:

- population: the finite scores the line met (all events for the autoencoder;
  SR events for CATHODE -- its fallback score before its gate opens -- and ANODE;
  SR or sideband events for CWoLA), and the share of it spent in warm-up
  (``not_judged``);
- the accepted fraction of the whole population, warm-up included, with its
  binomial error sqrt(q / population), and its deviation from the target;
- the accepted fraction over the population's first 20% (warm-up included; to
  the end of the frame that reaches 20%);
- per stream interval (``--interval`` events; only whole intervals after the
  one in which the line started judging): the accepted fraction of the line's population in it, and the
  largest deviation from target, beside the rate control's counting floor and the
  tail's dispersion at a fixed threshold (see :func:`_counting_floor`).

``--budget`` and ``--zero-bias`` run a second menu beside the default one on the
same scores (the learners learn from every event whatever a menu selects, so it
is the menu a run with those options would have): the default menu's lines plus
a zero-bias line, within the budget. Printed: the union's recorded fraction of
the stream against the budget, each line's share, and the zero-bias line's
recorded count against rate x events with its binomial error.

``--done-when`` runs issue 16's two streams in one command -- ``--lhco``'s first
40,000 events at 1% signal (intervals of 10,000), then the synthetic million
(intervals of 100,000) with a 3% budget and a 0.2% zero-bias line -- and ends
with a verdict per point (see :func:`verdicts`).

    python -m bench.trigger_ops --done-when --lhco ../shared/data/lhco/lhco_rnd_first60k.features.h5
    python -m bench.trigger_ops --source synthetic --events 1000000 --budget 0.03 --zero-bias 0.002
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from streamflow.events import open_source
from streamflow.events.chunking import first_events
from streamflow.scoring.frame_scorer import FrameScorer
from streamflow.scoring.presets import preset, preset_for_source
from streamflow.trigger import LineConfig, TriggerMenu
from streamflow.trigger.lines import RateControl
from streamflow.trigger.menu import step_size

FRAME = 4096


def run(source: str, events: int, signal_fraction: float, learners: list[str] | None, budget: float | None,
        zero_bias: float | None, interval: int, threads: int, seed: int,
        control: float | None = None, scores_file: str | None = None) -> dict[str, Any]:
    config = preset(preset_for_source(source), device="cpu")
    if learners:
        config = dataclasses.replace(config, learners=tuple(c for c in config.learners if c.name in learners),
                                     lines=tuple(line for line in config.lines if line.learner in learners))
    if control is not None:
        config = dataclasses.replace(config, lines=tuple(dataclasses.replace(line, control=control)
                                                         for line in config.lines))
    config = dataclasses.replace(config, threads=threads)
    budgeted = None
    if budget is not None or zero_bias is not None:
        lines = config.lines
        if zero_bias is not None:
            lines += (LineConfig("zero_bias", accept=zero_bias, kind="zero_bias", seed=seed),)
        budgeted = TriggerMenu(lines, signal_region=config.signal_region, budget=budget,
                               budget_control=config.budget_control)
    replay = scores_file is not None and Path(scores_file).exists()
    if replay:
        menu = TriggerMenu(config.lines, signal_region=config.signal_region, budget=config.budget,
                           budget_control=config.budget_control)
        stream_frames = _replayed(Path(scores_file), menu)  # type: ignore[arg-type]
    else:
        scorer = FrameScorer(config)
        menu = scorer.menu
        stream_frames = _scored(scorer, open_source(source, signal_fraction=signal_fraction, seed=seed), events)
    recorded: list[tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]] = []
    frames: list[tuple[int, list[int], list[int], list[bool]]] = []  # (stream offset, seen, accepted, judged)
    line_scores: list[list[np.ndarray]] = [[] for _ in config.lines]  # per line, each frame's finite scores
    union = 0
    done = 0
    start = time.perf_counter()
    before = menu.stats()
    for scores, labels, region in stream_frames:
        if scores_file is not None and not replay:
            recorded.append((scores, labels, region))
        after = menu.stats()
        frames.append((done, [b.seen - a.seen for a, b in zip(before, after, strict=True)],
                       [b.accepted - a.accepted for a, b in zip(before, after, strict=True)],
                       [b.judged > 0 for b in after]))
        for kept, line in zip(line_scores, config.lines, strict=True):
            values = np.asarray(scores[line.learner]) if line.learner in scores else np.empty(0)
            kept.append(values[np.isfinite(values)])
        if budgeted is not None:
            union += int(budgeted.select(scores, labels, region).accept.sum())
        done += len(next(iter(scores.values())))
        before = after
    if recorded:
        _record(Path(scores_file), recorded)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    n_intervals = -(-done // interval)
    offsets = np.array([f[0] for f in frames]) // interval
    frame_seen = np.array([f[1] for f in frames], dtype=np.int64)
    frame_accepted = np.array([f[2] for f in frames], dtype=np.int64)
    judged = np.array([f[3] for f in frames], dtype=bool)
    seen = np.zeros((n_intervals, frame_seen.shape[1]), dtype=np.int64)
    accepted = np.zeros_like(seen)
    np.add.at(seen, offsets, frame_seen)
    np.add.at(accepted, offsets, frame_accepted)
    out: dict[str, Any] = {"source": source, "events": done, "signal_fraction": signal_fraction,
                           "interval": interval, "seconds": seconds, "lines": []}
    for i, (line, stats) in enumerate(zip(config.lines, menu.stats(), strict=True)):
        q = line.accept
        first_fifth = _first_share(frame_seen[:, i], frame_accepted[:, i], 0.2)
        warm_from = offsets[np.argmax(judged[:, i])] if judged[:, i].any() else n_intervals
        whole = [j for j in range(n_intervals) if j > warm_from and (j + 1) * interval <= done and seen[j, i]]
        fractions = [accepted[j, i] / seen[j, i] for j in whole]
        out["lines"].append({
            "name": line.name, "q": q, "population": stats.seen, "not_judged": stats.not_judged,
            "warmup_share": stats.not_judged / stats.seen if stats.seen else math.nan,
            "fraction": stats.population_fraction, "error": math.sqrt(q / stats.seen) if stats.seen else math.nan,
            "deviation": stats.population_fraction / q - 1, "first_20pc": first_fifth,
            "intervals": fractions, "worst_interval": max((abs(f / q - 1) for f in fractions), default=math.nan),
            "recorded": stats.recorded, "unique": stats.unique, "overlap": stats.overlap,
            "correction": stats.correction, "restarts": stats.restarts,
            "eff_s": stats.eff_s, "sr_sic": stats.sr_sic, "sr_sic_error": _sic_error(stats),
            **_counting_floor(line, line_scores[i], judged[:, i], seen[whole, i].mean() if whole else math.nan),
        })
    if budgeted is not None:
        shares = {s.name: {"fraction": s.population_fraction, "recorded": s.recorded, "unique": s.unique,
                           "budget_factor": s.budget_factor} for s in budgeted.stats()}
        out["budgeted_menu"] = shares
        if budget is not None:
            out["budget"] = {"target": budget, "union": union / done, "deviation": union / done / budget - 1}
        if zero_bias is not None:
            out["zero_bias"] = {"rate": zero_bias, "recorded": shares["zero_bias"]["recorded"],
                                "expected": zero_bias * done,
                                "binomial_error": math.sqrt(zero_bias * (1 - zero_bias) * done)}
    return out


def _counting_floor(line: LineConfig, frames: list[np.ndarray], judged: np.ndarray,
                    interval_population: float) -> dict[str, float]:
    """How far a line's interval rate scatters from counting noise alone, and how much more its tail moves.

    ``floor``: the relative standard deviation of an interval's accepted count that
    the rate control (:mod:`streamflow.trigger.lines`) leaves from the steps'
    Poisson noise alone: the count error is max(tau, q m) |delta log c| between the
    interval's ends, log c jitters by sqrt(g / ((2 - g) q m)) (g = min(1, q m / tau),
    m the finite scores of a step of the line's mean frame,
    :func:`~streamflow.trigger.menu.step_size`), so the error is sqrt(2) max(tau, q m) times
    that, over q x the interval's population. A worst of 9 intervals is typically
    about 2 floors off: a line that sees few accepts per interval cannot hold a
    tighter interval rate than this whatever its score. ``dispersion``: the frames'
    counts above one fixed threshold -- the (1 - q) quantile of all the line's finite
    scores in its judged frames -- against binomial counts, sum (c - p n)^2 / sum
    p n (1 - p): 1 for a score whose tail is as stable from frame to frame as
    counting allows (a calibrated score such as CATHODE's and ANODE's z); a jittering
    calibration adds to it, and a drifting raw score (a learning classifier's, an
    autoencoder's) makes it large -- which the rate control absorbs, not a fault."""
    kept = [f for f, j in zip(frames, judged, strict=True) if j and len(f)]
    if not kept or line.kind != "score":
        return {"dispersion": math.nan, "floor": math.nan}
    q = line.accept
    threshold = np.quantile(np.concatenate(kept), 1 - q)
    counts = np.array([np.count_nonzero(f > threshold) for f in kept], dtype=float)
    sizes = np.array([len(f) for f in kept], dtype=float)
    p = counts.sum() / sizes.sum()
    dispersion = float(((counts - p * sizes) ** 2).sum() / (p * (1 - p) * sizes).sum()) if p > 0 else math.nan
    tau = line.control
    if tau <= 0:  # no control: the interval's own binomial error
        return {"dispersion": dispersion, "floor": 1 / math.sqrt(q * interval_population)}
    per_step = q * step_size(q, round(sizes.mean()))
    return {"dispersion": dispersion,
            "floor": math.sqrt(2) * max(tau, per_step) * RateControl(tau).jitter(per_step) / (q * interval_population)}


def verdicts(out: dict[str, Any]) -> list[tuple[str, bool]]:
    """Issue 16's Done-when points on one run's figures: (what was measured, whether it holds).

    A file source (the real LHCO stream): each line's accepted fraction over the
    first 20% of its population and over its whole population, warm-up included,
    within 10% of target. The synthetic stream: each line within +-5% of target on
    every whole interval after warm-up and within +-2% overall. A line that never
    scored holds neither. The budget: the union within +-5% of it. Zero-bias: the
    recorded count within 2 binomial sigmas of rate x events.
    """
    found = []
    real = out["source"] not in ("synthetic", "gaussian")
    for line in out["lines"]:
        name, q = line["name"], line["q"]
        if not line["population"]:
            found.append((f"{name}: population 0 (its learner never scored an event)", False))
            continue
        if real:
            first = line["first_20pc"] / q - 1
            found.append((f"{name}: first 20% of its population {line['first_20pc']:.3%} ({first:+.1%})",
                          abs(first) <= 0.10))
            found.append((f"{name}: whole population {line['fraction']:.3%} ({line['deviation']:+.1%})",
                          abs(line["deviation"]) <= 0.10))
        else:
            worst = line["worst_interval"]
            found.append((f"{name}: worst of {len(line['intervals'])} intervals after warm-up {worst:.1%} off"
                          if line["intervals"] else f"{name}: no whole interval after warm-up",
                          bool(line["intervals"]) and worst <= 0.05))
            found.append((f"{name}: overall {line['fraction']:.3%} ({line['deviation']:+.1%})",
                          abs(line["deviation"]) <= 0.02))
    if "budget" in out:
        b = out["budget"]
        found.append((f"budget {b['target']:.2%}: union {b['union']:.3%} ({b['deviation']:+.1%})",
                      abs(b["deviation"]) <= 0.05))
    if "zero_bias" in out:
        z = out["zero_bias"]
        pull = (z["recorded"] - z["expected"]) / z["binomial_error"]
        found.append((f"zero-bias: {z['recorded']:,} recorded, {z['expected']:,.0f} +- {z['binomial_error']:.0f} "
                      f"expected ({pull:+.1f} sigma)", abs(pull) <= 2))
    return found


Frame = tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]
"""One frame's scores by learner, its labels and its mjj (None where the source has none)."""


def _scored(scorer: FrameScorer, stream: Any, events: int) -> Iterator[Frame]:
    """Score, select and learn each frame of the stream (the scorer's own menu selects)."""
    for batch in first_events(stream.chunks(FRAME), events):
        result = scorer.process(batch)
        region = batch.column("mjj") if "mjj" in batch.names else None
        yield {name: np.asarray(v) for name, v in result.scores.items()}, batch.labels, region


def _record(path: Path, frames: list[Frame]) -> None:
    """Keep a run's scores, labels and mjj per frame, so that menus can be replayed on them (``--scores``)."""
    arrays = {f"scores/{name}": np.concatenate([f[0][name] for f in frames]) for name in frames[0][0]}
    if frames[0][1] is not None:
        arrays["labels"] = np.concatenate([f[1] for f in frames])  # type: ignore[misc]
    if frames[0][2] is not None:
        arrays["mjj"] = np.concatenate([f[2] for f in frames])  # type: ignore[misc]
    np.savez(path, sizes=np.array([len(f[0][next(iter(f[0]))]) for f in frames]), **arrays)


def _replayed(path: Path, menu: TriggerMenu) -> Iterator[Frame]:
    """The frames of a ``--scores`` file, each selected by ``menu`` (no learner runs)."""
    with np.load(path) as data:
        names = [key.removeprefix("scores/") for key in data.files if key.startswith("scores/")]
        edges = np.concatenate([[0], np.cumsum(data["sizes"])])
        columns = {name: data[f"scores/{name}"] for name in names}
        labels = data["labels"] if "labels" in data.files else None
        mjj = data["mjj"] if "mjj" in data.files else None
    missing = [name for name in menu.learners if name not in columns]
    if missing:
        raise SystemExit(f"{path}: no scores of {', '.join(missing)} (recorded: {', '.join(names)})")
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        frame = ({name: values[a:b] for name, values in columns.items()},
                 None if labels is None else labels[a:b], None if mjj is None else mjj[a:b])
        menu.select(*frame)
        yield frame


def _sic_error(stats: Any) -> float:
    """Binomial error of the signal-region SIC eff_s / sqrt(eff_b), propagated from both efficiencies."""
    if not stats.sr_signal_accepted or not stats.sr_background_accepted:
        return math.nan
    rel_s = (1 - stats.sr_eff_s) / stats.sr_signal_accepted
    rel_b = (1 - stats.sr_eff_b) / stats.sr_background_accepted
    return stats.sr_sic * math.sqrt(rel_s + rel_b / 4)


def _first_share(seen: np.ndarray, accepted: np.ndarray, share: float) -> float:
    """Accepted fraction over the first ``share`` of the population, to the end of the frame that reaches it."""
    total = seen.sum()
    cumulative = np.cumsum(seen)
    last = int(np.searchsorted(cumulative, share * total)) + 1
    return float(accepted[:last].sum() / cumulative[last - 1]) if total else math.nan


def report(out: dict[str, Any]) -> None:
    """Print one run's figures and its verdicts."""
    print(f"{out['source']}: {out['events']:,} events, signal {out['signal_fraction']:.1%}, {out['seconds']:.0f} s "
          "(2-core CPU VM)")
    print(f"{'line':<10} {'q':>6} {'population':>10} {'warm-up':>8} {'fraction':>18} {'dev':>7} "
          f"{'first 20%':>9} {'worst interval':>14} {'unique':>7}")
    for line in out["lines"]:
        print(f"{line['name']:<10} {line['q']:>6.2%} {line['population']:>10,} {line['warmup_share']:>8.1%} "
              f"{line['fraction']:>9.3%} ± {line['error']:.3%} {line['deviation']:>+7.1%} "
              f"{line['first_20pc']:>9.3%} {line['worst_interval']:>14.1%} {line['unique']:>7,}")
        if line["intervals"]:
            print(f"   per {out['interval']:,}-event interval: " + " ".join(f"{f:.3%}" for f in line["intervals"])
                  + f"; counting floor {line['floor']:.1%}, dispersion {line['dispersion']:.2f}")
        if not math.isnan(line["sr_sic"]):
            print(f"   signal efficiency {line['eff_s']:.3f}, SR SIC {line['sr_sic']:.2f} ± {line['sr_sic_error']:.2f}")
    if "budgeted_menu" in out:
        print("beside it, the same lines within the budget: " + ", ".join(
            f"{name} {share['fraction']:.3%} (g {share['budget_factor']:.2f})"
            for name, share in out["budgeted_menu"].items()))
    for what, holds in verdicts(out):
        print(f"  {'holds ' if holds else 'FAILS '} {what}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.trigger_ops", description=__doc__.split("\n")[0])
    p.add_argument("--source", default="synthetic")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--signal-fraction", type=float, default=0.01)
    p.add_argument("--learners", help="comma-separated learners of the preset to keep (default: all)")
    p.add_argument("--budget", type=float)
    p.add_argument("--zero-bias", type=float)
    p.add_argument("--interval", type=int, default=100_000, help="stream events per interval (default 100000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--control", type=float, help="every line's rate-control time constant tau, in accepts "
                   "(default: the preset's)")
    p.add_argument("--done-when", action="store_true",
                   help="the LHCO file's first 40,000 events, then the synthetic million with a 3%% budget and "
                        "a 0.2%% zero-bias line, each with its verdicts")
    p.add_argument("--lhco", default="../shared/data/lhco/lhco_rnd_first60k.features.h5",
                   help="the real LHCO features file of --done-when")
    p.add_argument("--json", help="write the figures here too")
    p.add_argument("--scores", help="an .npz of the run's scores: written by a run (with --done-when: "
                   "FILE.real.npz and FILE.synthetic.npz), replayed when it exists -- the menus run on the "
                   "recorded scores, no learner (seconds instead of minutes; e.g. to compare --control values)")
    args = p.parse_args(argv)
    learners = args.learners.split(",") if args.learners else None
    if args.done_when:
        scores = (None, None) if args.scores is None else (f"{args.scores}.real.npz", f"{args.scores}.synthetic.npz")
        runs = [run(args.lhco, 40_000, 0.01, learners, None, None, 10_000, args.threads, args.seed, args.control,
                    scores[0]),
                run("synthetic", 1_000_000, 0.01, learners, 0.03, 0.002, 100_000, args.threads, args.seed,
                    args.control, scores[1])]
    else:
        runs = [run(args.source, args.events, args.signal_fraction, learners, args.budget, args.zero_bias,
                    args.interval, args.threads, args.seed, args.control, args.scores)]
    for out in runs:
        report(out)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(runs if args.done_when else runs[0], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
