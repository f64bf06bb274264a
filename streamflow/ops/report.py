"""The run report: figures and a markdown summary of a finished run folder.

Inputs, all written by the run's processes (each optional but the telemetry):

- ``telemetry-<role>.jsonl``: every stats message of each process, about two a
  second -- rates, latency percentiles (of a whole-run histogram, so cumulative),
  learner losses, and per trigger line its threshold, accept fraction and, when
  the stream carries truth labels, its running signal and background
  efficiencies eff_S, eff_B and SIC = eff_S / sqrt(eff_B).
- ``scores-<scorer>.npz``: a sample of the last scored events (``ids``, ``mjj``,
  ``labels`` and one score array per learner, NaN = not scored). The selections
  file holds only accepted events, so ROC and SIC curves can only come from this sample.

The trigger-line table is the run's summary (streamflow.ops.summary, also
``summary.json``): every line on the signal-region events and on all events.
- ``selections.h5``: the accepted events (counts per line, signal among them).
- ``run.json`` (or the selections file's ``config``): the run config, which says
  the source and each learner's kind and coordinates.

A random classifier has eff_S = eff_B: its ROC is the diagonal and its SIC at
accept fraction q is sqrt(q). On the Gaussian toy (background N(0, I2), signal
N(1, I2)) exact models have known AUCs: the likelihood ratio (CWoLA) 0.841 in
every frame, the density -log p 0.696, 0.500 and 0.175 in the identity,
normal-CDF and tanh(x + 2) frames; the report quotes them beside the measured AUCs.

Figures are drawn with matplotlib's object API (no pyplot, no global backend):
``Figure.savefig`` renders PNGs with Agg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from streamflow import metrics
from streamflow.ops.dashboard import fmt_count, fmt_fraction, fmt_ms, lookup, number, problems
from streamflow.ops.run_folder import RunData, Stream, load_run, nan_of
from streamflow.ops.summary import run_summary
from streamflow.scoring.score_buffer import RESERVED
from streamflow.stream.telemetry import ScorerRecord, read_record

FIGURES_DIR = "figures"
SIC_MIN_BACKGROUND = 10  # SIC points need this many background events passing, else eff_B is noise
EXACT_AUC_LIKELIHOOD_RATIO = 0.841
EXACT_AUC_DENSITY = {"identity": 0.696, "normal_cdf": 0.500, "tanh_shift": 0.175}
_DPI = 110


# ---------------------------------------------------------------- figures

def _figure(rows: int, cols: int = 1, height: float = 2.6, width: float = 7.5) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(width, height * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, cols, sharex=cols == 1, squeeze=False)).ravel()
    return figure, axes


def _save(figure: Figure, run_dir: Path, name: str) -> str:
    (run_dir / FIGURES_DIR).mkdir(exist_ok=True)
    figure.savefig(run_dir / FIGURES_DIR / name, dpi=_DPI)
    return f"{FIGURES_DIR}/{name}"


def _time_axis(ax: Axes) -> None:
    ax.set_xlabel("time since the run started (s)")


def _throughput_figure(run: RunData) -> str:
    with_latency = [s for s in run.streams if np.isfinite(s.values("latency", "p99_ms")).any()]
    figure, axes = _figure(2 if with_latency else 1)
    for stream in run.streams:
        axes[0].plot(stream.times(run.t0), stream.values("events_per_s"), label=stream.role)
    axes[0].set_ylabel("events / s")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize="small")
    axes[0].set_title("Throughput per stage")
    if with_latency:
        for stream in with_latency:
            t = stream.times(run.t0)
            line, = axes[1].plot(t, stream.values("latency", "p50_ms"), label=f"{stream.role} p50")
            axes[1].plot(t, stream.values("latency", "p99_ms"), "--", color=line.get_color(),
                         label=f"{stream.role} p99")
        axes[1].set_yscale("log")
        # Plain numbers (4, 6, 10) rather than 4x10^0; minor labels only where the range is narrow.
        axes[1].yaxis.set_major_formatter(LogFormatter())
        axes[1].yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(1.5, 0.5)))
        axes[1].set_ylabel("latency (ms)")
        axes[1].set_title("Producer send -> stage latency (whole-run percentiles so far)")
        axes[1].legend(fontsize="small", ncol=2)
    _time_axis(axes[-1])
    return _save(figure, run.run_dir, "throughput.png")


def _line_names(stream: Stream) -> list[str]:
    """Trigger line names of a scorer, in menu order, over all its messages."""
    names: dict[str, None] = {}
    for message in stream.messages:
        for line in message.get("lines") or []:
            if isinstance(line, dict) and line.get("name") is not None:
                names.setdefault(str(line["name"]), None)
    return list(names)


def _line_values(stream: Stream, name: str, key: str) -> np.ndarray:
    """One field of trigger line ``name`` over the scorer's messages (NaN where absent)."""
    out = np.full(len(stream.messages), np.nan)
    for i, message in enumerate(stream.messages):
        for line in message.get("lines") or []:
            if isinstance(line, dict) and line.get("name") == name:
                out[i] = nan_of(line.get(key))
    return out


def _line_label(run: RunData, stream: Stream, name: str) -> str:
    return name if len(run.of_kind("scorer")) == 1 else f"{stream.role}/{name}"


def _trigger_figure(run: RunData) -> str | None:
    scorers = [(s, name) for s in run.of_kind("scorer") for name in _line_names(s)]
    if not scorers:
        return None
    figure, axes = _figure(2, height=3.0)
    targets = []
    for stream, name in scorers:
        t, label = stream.times(run.t0), _line_label(run, stream, name)
        line, = axes[0].plot(t, _line_values(stream, name, "threshold"), label=label)
        color = line.get_color()
        seen, accepted = _line_values(stream, name, "seen"), _line_values(stream, name, "accepted")
        with np.errstate(invalid="ignore", divide="ignore"):
            interval = np.diff(accepted) / np.diff(seen)
        axes[1].plot(t[1:], 100 * interval, color=color, alpha=0.3, lw=0.8)
        axes[1].plot(t, 100 * _line_values(stream, name, "achieved"), color=color, label=f"{label} achieved")
        q = _line_values(stream, name, "q")
        axes[1].plot(t, 100 * q, ":", color=color, lw=1.5)
        targets += [x for x in q if np.isfinite(x)]
    axes[0].set_ylabel("threshold (score)")
    axes[0].set_title("Trigger thresholds: rolling (1 - q) quantile of each line's scores")
    axes[0].legend(fontsize="small", ncol=3)
    axes[1].set_ylabel("accept fraction (%)")
    # The interesting range is around the targets: a short interval's fraction may spike far above.
    axes[1].set_ylim(0, 300 * max(targets) if targets else None)
    axes[1].set_title("Accepted fraction: since warm-up (solid), per interval (faint), target q (dotted)")
    _time_axis(axes[-1])
    return _save(figure, run.run_dir, "trigger.png")


def _efficiency_figure(run: RunData) -> str | None:
    series = [(s, name) for s in run.of_kind("scorer") for name in _line_names(s)
              if np.isfinite(_line_values(s, name, "eff_s")).any()]
    if not series:
        return None
    figure, axes = _figure(2, height=3.0)
    for stream, name in series:
        t, label = stream.times(run.t0), _line_label(run, stream, name)
        line, = axes[0].plot(t, _line_values(stream, name, "eff_s"), label=f"{label} eff_S")
        axes[0].plot(t, _line_values(stream, name, "eff_b"), "--", color=line.get_color())
        axes[1].plot(t, _line_values(stream, name, "sic"), color=line.get_color(), label=label)
        axes[1].plot(t, np.sqrt(_line_values(stream, name, "q")), ":", color=line.get_color(), lw=1.2)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("efficiency")
    axes[0].set_title("Running signal (solid) and background (dashed) efficiency per line")
    axes[0].legend(fontsize="small", ncol=3)
    axes[1].set_ylabel("SIC = eff_S / sqrt(eff_B)")
    axes[1].set_title("Running SIC; dotted: a random selection at the same q (sqrt q)")
    axes[1].set_ylim(bottom=0)
    _time_axis(axes[-1])
    return _save(figure, run.run_dir, "efficiency.png")


def _loss_figure(run: RunData) -> str | None:
    panels = []
    for stream in run.of_kind("scorer"):
        names: dict[str, None] = {}
        for message in stream.messages:
            names.update(dict.fromkeys(str(k) for k in (message.get("learners") or {})))
        panels += [(stream, name) for name in names]
    panels = [(s, n) for s, n in panels if np.isfinite(s.values("learners", n, "loss")).any()]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    figure = Figure(figsize=(3.2 * cols, 2.4 * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, (stream, name) in zip(axes, panels, strict=False):
        ax.plot(stream.times(run.t0), stream.values("learners", name, "loss"), lw=1.0)
        ax.set_title(name if len(run.of_kind("scorer")) == 1 else f"{stream.role}/{name}", fontsize="medium")
        ax.set_xlabel("time (s)", fontsize="small")
        ax.tick_params(labelsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].set_ylabel("training loss")
    figure.suptitle("Learner loss (last minibatch before each report)")
    return _save(figure, run.run_dir, "losses.png")


def _learnt_figure(run: RunData) -> str | None:
    """Per learner, the fraction of the events scored between two telemetry messages that it learnt from."""
    curves = []
    for stream in run.of_kind("scorer"):
        names = dict.fromkeys(str(k) for m in stream.messages for k, v in (m.get("learners") or {}).items()
                              if isinstance(v, dict) and "learned_from" in v)
        for name in names:
            scored, learned = stream.values("learners", name, "scored"), stream.values("learners", name, "learned_from")
            with np.errstate(invalid="ignore", divide="ignore"):
                fraction = np.diff(learned) / np.diff(scored)  # NaN where no event was scored in between
            label = name if len(run.of_kind("scorer")) == 1 else f"{stream.role}/{name}"
            curves.append((stream.times(run.t0)[1:], fraction, label))
    if not curves:
        return None
    figure, axes = _figure(1)
    for times, fraction, label in curves:
        axes[0].plot(times, fraction, lw=1.0, label=label)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("learnt / scored")
    axes[0].set_title("Learnt fraction of the events scored between two reports, per learner")
    axes[0].legend(fontsize="small", ncol=3)
    _time_axis(axes[-1])
    return _save(figure, run.run_dir, "learnt.png")


def _learning_lines(summary: dict[str, Any]) -> list[str]:
    """What each scorer learnt from: its policy and per learner learnt / scored events."""
    lines = []
    for scorer, entry in summary["scorers"].items():
        block = entry.get("learning") or {}
        learners = block.get("learners") or {}
        if not learners:
            continue
        lines += [f"Learning of {scorer}: policy `{block.get('policy')}` (ScorerConfig.learn); every event "
                  f"is scored, each learner learnt from:", ""]
        lines += _table(["learner", "scored", "learnt from", "learnt fraction"], [
            [name, fmt_count(f["scored"]), fmt_count(f["learned_from"]), fmt_fraction(f["learned_fraction"])]
            for name, f in learners.items()]) + [""]
    return lines


def exact_auc(run: RunData, learner: str) -> float | None:
    """The analytic AUC of an exact model of ``learner``'s kind and frame on the Gaussian toy, if known."""
    if run.source != "gaussian":
        return None
    config = run.learner_config(learner)
    if config.get("kind") == "cwola":
        return EXACT_AUC_LIKELIHOOD_RATIO
    if config.get("kind") == "flow":
        return EXACT_AUC_DENSITY.get(str(config.get("coordinates", "identity")))
    return None


def _labelled(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(labels, learner scores) restricted to labelled events, or None without both classes."""
    if "labels" not in arrays:
        return None
    labels = np.asarray(arrays["labels"])
    keep = (labels == 0) | (labels == 1)
    labels = labels[keep]
    if not (labels == 1).any() or not (labels == 0).any():
        return None
    learners = {name: np.asarray(values, dtype=np.float64)[keep] for name, values in arrays.items()
                if name not in RESERVED and np.shape(values) == keep.shape}
    return labels, learners


def _operating_points(run: RunData, scorer: str) -> list[tuple[str, str, float, float, float]]:
    """(line, learner, eff_B, eff_S, SIC) at the end of the run, from the scorer's last message."""
    stream = next((s for s in run.of_kind("scorer") if s.role == scorer), None)
    points = []
    for line in (stream.final.get("lines") or []) if stream else []:
        if not isinstance(line, dict):
            continue
        eff_b, eff_s = number(line.get("eff_b")), number(line.get("eff_s"))
        if eff_b and eff_s is not None:
            points.append((str(line.get("name")), str(line.get("learner")), eff_b, eff_s, eff_s / np.sqrt(eff_b)))
    return points


def _roc_figure(run: RunData, scorer: str) -> str | None:
    labelled = _labelled(run.scores[scorer])
    if labelled is None or not labelled[1]:
        return None
    labels, learners = labelled
    n_b = int((labels == 0).sum())
    figure, axes = _figure(1, 2, height=4.0, width=11.0)
    roc_ax, sic_ax = axes
    colors = {}
    for name, scores in learners.items():
        eff_b, eff_s, _ = metrics.roc_curve(labels, scores)
        label = f"{name} AUC {metrics.auc(labels, scores):.3f}"
        exact = exact_auc(run, name)
        if exact is not None:
            label += f" (exact {exact:.3f})"
        line, = roc_ax.plot(eff_b, eff_s, label=label, lw=1.3)
        colors[name] = line.get_color()
        sic_s, sic = metrics.sic_curve(labels, scores, min_background=SIC_MIN_BACKGROUND)
        sic_ax.plot(sic_s, sic, color=line.get_color(), lw=1.3, label=name)
    grid = np.logspace(np.log10(1.0 / n_b), 0, 200)
    roc_ax.plot(grid, grid, ":", color="grey", label="random")
    sic_ax.plot(grid, np.sqrt(grid), ":", color="grey", label="random")
    for _line, learner, point_b, point_s, point_sic in _operating_points(run, scorer):
        color = colors.get(learner, "black")
        roc_ax.plot([point_b], [point_s], "o", color=color, mec="black", ms=6)
        sic_ax.plot([point_s], [point_sic], "o", color=color, mec="black", ms=6)
    roc_ax.set_xscale("log")
    roc_ax.set_xlim(1.0 / n_b, 1.0)
    roc_ax.set_ylim(0, 1.02)
    roc_ax.set_xlabel("background efficiency eff_B")
    roc_ax.set_ylabel("signal efficiency eff_S")
    roc_ax.set_title(f"ROC on {len(labels):,} held-out scored events ({scorer})")
    roc_ax.legend(fontsize="small", loc="upper left")
    sic_ax.set_xlabel("signal efficiency eff_S")
    sic_ax.set_ylabel("SIC = eff_S / sqrt(eff_B)")
    sic_ax.set_ylim(bottom=0)
    sic_ax.set_title(f"SIC (points: each line's running value at the end; >= {SIC_MIN_BACKGROUND} bkg)")
    sic_ax.legend(fontsize="small")
    return _save(figure, run.run_dir, f"roc-{scorer}.png")


# ---------------------------------------------------------------- markdown

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in rows]


def _stage_rows(run: RunData) -> list[list[str]]:
    rows = []
    for stream in run.streams:
        final, rates = stream.final, stream.values("events_per_s")
        running = rates[np.isfinite(rates) & (rates > 0)]
        notes = [f"{k} {fmt_count(final[k])}" for k in ("accepted", "written") if final.get(k) is not None]
        notes += [f"{k} {final[k]}" for k in ("source", "device") if final.get(k) is not None]
        if number(final.get("blocked_s")):
            notes.append(f"blocked {final['blocked_s']:.1f} s")
        rows.append([stream.role, fmt_count(final.get("events")),
                     fmt_count(np.median(running)) if len(running) else "-",
                     f"{fmt_ms(lookup(final, 'latency', 'p50_ms'))} / {fmt_ms(lookup(final, 'latency', 'p99_ms'))}",
                     ", ".join(notes)])
    return rows


def _cell(value: Any, digits: int = 3) -> str:
    x = number(value)
    return "-" if x is None else f"{x:.{digits}g}"


def _efficiency(value: Any, error: Any) -> str:
    x, e = number(value), number(error)
    if x is None:
        return "-"
    return f"{x:.3g} +- {e:.1g}" if e else f"{x:.3g}"


def _line_rows(run: RunData, summary: dict[str, Any]) -> list[list[str]]:
    """One row per line and population: the signal region's events, then all events of the stream."""
    rows = []
    for scorer, entry in summary["scorers"].items():
        for line in entry["lines"]:
            learner = str(line["learner"])
            exact = exact_auc(run, learner)
            name = line["name"] if len(summary["scorers"]) == 1 else f"{scorer}/{line['name']}"
            partial = line["scores_all_events"] is False
            for population, key in (("signal region", "signal_region"), ("all events", "stream")):
                f = line[key]
                if key == "signal_region" and not f["events"]:
                    continue  # no region feature (mjj) in this stream
                rows.append([
                    str(name), population, fmt_fraction(line["target"]),
                    fmt_fraction(line["achieved"]) + (f" of {fmt_fraction(line['scored_fraction'])} scored"
                                                      if partial else ""),
                    fmt_fraction(f["fraction"]), _efficiency(f["eff_s"], f["eff_s_error"]),
                    _efficiency(f["eff_b"], f["eff_b_error"]), _cell(f["sic"]), _cell(f["auc"]),
                    f"{exact:.3f}" if exact is not None else "-",
                ])
    return rows


def _population_lines(summary: dict[str, Any]) -> list[str]:
    p = summary["population"]
    if not p or p.get("signal_fraction") is None:
        return []
    low, high = summary["signal_region_gev"]
    sb = p.get("signal_region_s_over_b")
    return [f"Population: {p['events_after_warmup']:,} events after warm-up, signal fraction "
            f"{p['signal_fraction']:.3%}; signal region {low / 1000:g}-{high / 1000:g} TeV in mjj: "
            f"{p['signal_region_events']:,} events" + (f", S/B = {sb:.3%}." if sb is not None else "."), ""]


def _selection_lines(run: RunData) -> list[str]:
    if run.selections is None:
        return ["No selections file (selections.h5) in this run folder."]
    events, attrs = run.selections
    out = [f"`selections.h5` holds {len(events):,} accepted events."]
    rows = []
    labelled = events.labels >= 0
    for i, name in enumerate(attrs["line_names"]):
        recorded = (events.bits >> np.uint64(i)) & np.uint64(1) == 1
        signal = int((events.labels[recorded & labelled] == 1).sum())
        rows.append([name, f"{int(recorded.sum()):,}",
                     f"{signal:,} ({signal / max(int((recorded & labelled).sum()), 1):.1%})"
                     if labelled.any() else "-"])
    if rows:
        out += [""] + _table(["line", "recorded events", "signal among them"], rows)
    return out


def _operations_lines(run: RunData) -> list[str]:
    """The "Trigger operations" section: per line its warm-up, prescale, unique and overlap counts, and the
    zero-bias sample's estimate of every line's rate (empty when no scorer reported lines)."""
    out: list[str] = []
    for stream in run.of_kind("scorer"):
        lines = [line for line in stream.final.get("lines") or [] if isinstance(line, dict) and line.get("name")]
        if not lines:
            continue
        events = number(stream.final.get("events")) or 0
        rows = [[str(line["name"]), _exact(line.get("seen")), _exact(line.get("not_judged")),
                 _exact(line.get("accepted")), _exact(line.get("prescale")), _exact(line.get("recorded")),
                 _exact(line.get("unique")), fmt_fraction((number(line.get("unique")) or 0) / events)
                 if events else "-", _exact(line.get("restarts"))] for line in lines]
        names = [str(line["name"]) for line in lines]
        overlap = [[name] + [_exact(line.get("recorded")) if other == name else
                             _exact((line.get("overlap") or {}).get(other)) for other in names]
                   for name, line in zip(names, lines, strict=True)]
        out += [f"## Trigger operations ({stream.role})", "",
                "Per line: its population (finite scores), the events met before it could judge (warm-up), the "
                "events that passed it, its prescale and the events it recorded, the events no other line "
                "recorded (unique; rate = of the whole stream) and its window's restarts.", ""]
        out += _table(["line", "population", "not judged", "passed", "prescale", "recorded", "unique",
                       "unique rate", "restarts"], rows)
        out += ["", "Overlap: events recorded by both lines (diagonal: by the line).", ""]
        out += _table(["", *names], overlap) + [""]
    out += _zero_bias_lines(run)
    return out


def _exact(value: Any) -> str:
    """A count in full (1,234,567): the operations tables are checked against ledgers; "-" when missing."""
    x = number(value)
    return "-" if x is None else f"{int(x):,}"


def _zero_bias_lines(run: RunData) -> list[str]:
    """Each line's rate estimated from the zero-bias sample in selections.h5 (unbiased: a uniform random
    sample of the stream), with its binomial error, on all events and on background (label 0) alone."""
    if run.selections is None:
        return []
    events, attrs = run.selections
    names = list(attrs["line_names"])
    kinds = {str(line.get("name")): line.get("kind") for stream in run.of_kind("scorer")
             for line in stream.final.get("lines") or [] if isinstance(line, dict)}
    zero_bias = [i for i, name in enumerate(names) if kinds.get(name) == "zero_bias"]
    if not zero_bias:
        return []
    sample = (events.bits >> np.uint64(zero_bias[0])) & np.uint64(1) == 1
    background = sample & (events.labels == 0)
    rows = []
    for i, name in enumerate(names):
        if i in zero_bias:
            continue
        passed, recorded = ((mask >> np.uint64(i)) & np.uint64(1) == 1 for mask in (events.passed, events.bits))
        cells = [name]
        for bits, subset in ((passed, sample), (passed, background), (recorded, sample)):
            n, k = int(subset.sum()), int((bits & subset).sum())
            p = k / n if n else float("nan")
            cells.append(f"{fmt_fraction(p)} ± {fmt_fraction(np.sqrt(p * (1 - p) / n))} ({k}/{n})" if n else "-")
        rows.append(cells)
    return ["## Line rates from the zero-bias sample", "",
            f"`{names[zero_bias[0]]}` records a uniform random sample of the stream, and every event it records "
            "carries each line's passed and recorded bits: the fraction of the sample that passed a line "
            "estimates the line's rate without the trigger's bias (before its prescale), the fraction it also "
            "recorded its recorded rate (binomial errors).", ""] \
        + _table(["line", "passed (all)", "passed (background, label 0)", "recorded (all)"], rows) + [""]


def _summary(run: RunData) -> str:
    end = max(number(s.final.get("time")) or run.t0 for s in run.streams)
    producer = run.of_kind("producer")
    parts = [f"source `{run.source}`" if run.source else "source unknown"]
    if producer:
        parts.append(f"{fmt_count(producer[0].final.get('events'))} events sent")
    records = [read_record(s.final) for s in run.of_kind("scorer")]
    devices = {str(r.device) for r in records if isinstance(r, ScorerRecord) and r.device}
    if devices:
        parts.append("scored on " + ", ".join(sorted(devices)))
    parts.append(f"{end - run.t0:.1f} s from the first process start to the last report")
    return "; ".join(parts) + "."


def make_report(run_dir: str | Path) -> Path:
    """Draw the figures into RUN_DIR/figures and write RUN_DIR/report.md; returns the markdown's path."""
    run = load_run(run_dir)
    summary = run_summary(run)
    lines = [f"# Run report: {run.run_dir.resolve().name}", "", _summary(run), "", "## Stages", ""]
    lines += _table(["stage", "events", "median events/s", "latency p50 / p99 (ms)", "notes"], _stage_rows(run))
    lines += ["", f"![throughput and latency]({_throughput_figure(run)})", ""]
    line_rows = _line_rows(run, summary)
    if line_rows:
        lines += ["## Trigger lines", "",
                  "Each line two ways, at the end of the run (summary.json holds the same): on the events "
                  "inside the signal region, and on all events of the stream. 'achieved': accepted over "
                  "the events the line's learner scored, warm-up included (a learner that "
                  "scores only some events, e.g. CWoLA outside its sidebands, says of how many); 'of "
                  "population' is accepted over all events of the population, the rate at which lines are "
                  "compared. eff_S, eff_B (binomial errors) and SIC count an unscored event as rejected. "
                  "AUC: of the line's learner on the scores sample (NaN ranked lowest), in that population; "
                  "exact AUC: an exact model's on the Gaussian toy.", ""]
        lines += _population_lines(summary)
        lines += _table(["line", "population", "target q", "achieved", "of population", "eff_S", "eff_B", "SIC",
                         "AUC", "exact AUC"], line_rows)
        equal = [(scorer, entry["equal_rate"]) for scorer, entry in summary["scorers"].items()
                 if "equal_rate" in entry]
        for scorer, block in equal:
            lines += ["", f"At one stream-wide rate, {fmt_fraction(block['rate'])} of all events (the lowest "
                      f"rate any line took), each learner's top events of the scores sample of {scorer}:", ""]
            lines += _table(["learner", "eff_S", "eff_B", "SIC", "scores"], [
                [name, _cell(f["eff_s"]), _cell(f["eff_b"]), _cell(f["sic"]), fmt_fraction(f["scored_fraction"])]
                for name, f in block["learners"].items()])
        lines.append("")
    for title, figure in (("trigger thresholds and accept fractions", _trigger_figure(run)),
                          ("running efficiencies and SIC", _efficiency_figure(run)),
                          ("learner losses", _loss_figure(run))):
        if figure:
            lines += [f"![{title}]({figure})", ""]
    lines += _learning_lines(summary)
    learnt = _learnt_figure(run)
    if learnt:
        lines += [f"![learnt fraction over time]({learnt})", ""]
    roc = [(scorer, _roc_figure(run, scorer)) for scorer in run.scores]
    if any(figure for _, figure in roc):
        lines += ["## ROC and SIC on held-out scores", ""]
        lines += [f"![ROC and SIC of {scorer}]({figure})" for scorer, figure in roc if figure] + [""]
    for scorer, figure in roc:
        if figure is None:
            lines += [f"`scores-{scorer}.npz` has no mix of labelled signal and background: no ROC.", ""]
    lines += ["## Selections", ""] + _selection_lines(run) + [""]
    lines += _operations_lines(run)
    found = [text for stream in run.streams for _, text in problems(stream.role, stream.final)]
    lines += ["## Warnings", ""] + ([f"- {text}" for text in found] or ["None."]) + [""]
    path = run.run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
