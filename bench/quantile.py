"""Rolling-quantile benchmark: streamflow's Numba windows vs pandas and quantile sketches.

Three tables, one run:

1. per event -- the quantile after every event (``rolling_quantile``) vs pandas
   ``Series.rolling(W, min_periods=1).quantile(p)`` on the same scores, for
   W = 10k, 100k, 1M; both must agree (max |difference| is printed) and the
   ratio is pandas time / ours (target >= 20);
2. per frame -- one ``update`` of a 4096-event frame plus ``value()``, after the
   window is full: p50 / p99 / max microseconds for the exact window and the
   log histogram (target: well under 1 ms for W = 1M);
3. trigger selection at q = 1% on Exp(1) scores -- each method's threshold, taken
   from its window before each frame, selects the next frame's events: the
   accept fraction achieved over the stream, and per frame the relative error of
   the accept probability exp(-threshold) against q (rms and worst; the exact
   window's own sampling error is ~sqrt((1 - q) / (q W)), 3% at W = 100k), the
   rms of its difference to the exact window's (the approximation alone), and
   the throughput (update + threshold). Quantile sketches have no sliding window,
   so they get the blocked window of the log histogram: K = 8 sketches of W/8
   events, merged at each threshold. Methods: Apache DataSketches KLL (k=200),
   REQ (k=12, high-rank accuracy) and t-digest (k=200), all in ``datasketches``.

Times are CPU time of the benchmarking thread (the machine is shared: wall time
would count other processes), best of ``--repeats`` where repeated.

    python -m bench.quantile [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import datasketches
import numpy as np
import pandas as pd

from streamflow.trigger import RollingHistogramQuantile, RollingQuantile, rolling_quantile

FRAME = 4096
LEVEL = 0.99  # a q = 1% trigger line


@dataclass(frozen=True)
class PerEvent:
    window: int
    events: int
    pandas_ns: float
    streamflow_ns: float
    speedup: float
    max_abs_diff: float


@dataclass(frozen=True)
class PerFrame:
    window: int
    estimator: str
    p50_us: float
    p99_us: float
    max_us: float
    ns_per_event: float


@dataclass(frozen=True)
class Selection:
    method: str
    window: int
    accept_percent: float  # events accepted / events judged over the stream
    rms_frame_percent: float  # per frame: rms of (P(score > threshold) - q) / q
    worst_frame_percent: float  # per frame: the largest |P(score > threshold) - q| / q
    vs_exact_percent: float  # per frame: rms of (P(score > threshold) - P(score > exact threshold)) / q
    mevents_per_s: float
    memory_bytes: int


def _cpu(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best CPU time of ``repeats`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.thread_time_ns()
        out = fn()
        best = min(best, time.thread_time_ns() - t0)
    return best, out


def per_event(windows: list[int], events: int, repeats: int) -> list[PerEvent]:
    rows = []
    rolling_quantile(np.zeros(10), 5, LEVEL)  # compile (or load the cache) outside the timing
    for window in windows:
        x = np.random.default_rng(window).standard_t(4, size=window + events)
        t_pd, theirs = _cpu(lambda x=x, window=window: pd.Series(x).rolling(window, min_periods=1).quantile(LEVEL)
                            .to_numpy(), repeats)
        t_sf, ours = _cpu(lambda x=x, window=window: rolling_quantile(x, window, LEVEL), repeats)
        n = len(x)
        rows.append(
            PerEvent(window, n, t_pd / n, t_sf / n, t_pd / t_sf, float(np.max(np.abs(ours - theirs))))
        )
    return rows


def per_frame(windows: list[int], frames: int) -> list[PerFrame]:
    rows = []
    for window in windows:
        x = np.random.default_rng(window + 1).standard_t(4, size=window + FRAME * (frames + 8))
        for name, estimator in (
            ("exact", RollingQuantile(window, LEVEL)),
            ("histogram", RollingHistogramQuantile(window, LEVEL)),
        ):
            estimator.update(x[: window + 8 * FRAME])  # full window, band settled
            estimator.value()  # compiled (or loaded from the cache) outside the timing
            times = []
            for f in range(frames):
                frame = x[window + (8 + f) * FRAME : window + (9 + f) * FRAME]
                t0 = time.thread_time_ns()
                estimator.update(frame)
                estimator.value()
                times.append(time.thread_time_ns() - t0)
            us = np.array(times) / 1e3
            rows.append(
                PerFrame(
                    window, name, float(np.median(us)), float(np.percentile(us, 99)), float(us.max()),
                    float(np.median(us) * 1e3 / FRAME),
                )
            )
    return rows


class BlockedSketch:
    """A sliding window for a mergeable sketch: K + 1 blocks of W/K values, merged to query."""

    def __init__(self, make: Callable[[], object], window: int, blocks: int = 8) -> None:
        self.make, self.block, self.blocks = make, -(-window // blocks), blocks
        self.sketches = [make()]
        self.filled = 0

    def update(self, values: np.ndarray) -> None:
        while len(values):
            take = min(len(values), self.block - self.filled)
            self.sketches[-1].update(values[:take])
            values, self.filled = values[take:], self.filled + take
            if self.filled == self.block:
                self.sketches = self.sketches[-self.blocks :] + [self.make()]
                self.filled = 0

    @property
    def count(self) -> int:
        return (len(self.sketches) - 1) * self.block + self.filled

    def value(self) -> float:
        merged = self.make()
        for sketch in self.sketches:
            merged.merge(sketch)
        return float(merged.get_quantile(LEVEL))

    @property
    def nbytes(self) -> int:
        return sum(len(s.serialize()) for s in self.sketches)


def selection(window: int, events: int) -> list[Selection]:
    scores = np.random.default_rng(3).exponential(size=window + events)
    q = 1 - LEVEL
    methods: list[tuple[str, object]] = [
        ("streamflow exact", RollingQuantile(window, LEVEL)),
        ("streamflow log histogram", RollingHistogramQuantile(window, LEVEL)),
        ("DataSketches KLL k=200", BlockedSketch(lambda: datasketches.kll_doubles_sketch(200), window)),
        ("DataSketches REQ k=12 HRA", BlockedSketch(lambda: datasketches.req_floats_sketch(12, True), window)),
        ("DataSketches t-digest k=200", BlockedSketch(lambda: datasketches.tdigest_double(200), window)),
    ]
    rows = []
    exact = None  # the exact window's accept probabilities, frame by frame (it runs first)
    for name, estimator in methods:
        estimator.update(scores[:window])
        accepted = judged = 0
        cpu = 0
        thresholds = []
        for i in range(window, len(scores), FRAME):
            frame = scores[i : i + FRAME]
            t0 = time.thread_time_ns()
            threshold = estimator.value()
            estimator.update(frame)
            cpu += time.thread_time_ns() - t0
            accepted += int(np.sum(frame > threshold))
            judged += len(frame)
            thresholds.append(threshold)
        # Exp(1) scores: a threshold t accepts a fraction exp(-t) of the stream, exactly.
        p = np.exp(-np.array(thresholds))
        exact = p if exact is None else exact
        deviation = (p - q) / q
        rows.append(
            Selection(
                name, window, 100 * accepted / judged, 100 * float(np.sqrt(np.mean(deviation**2))),
                100 * float(np.max(np.abs(deviation))), 100 * float(np.sqrt(np.mean(((p - exact) / q) ** 2))),
                judged / cpu * 1e3, estimator.nbytes,
            )
        )
    return rows


def _table(title: str, rows: list, columns: list[tuple[str, str, str]]) -> str:
    """Rows of dataclasses as an aligned text table; columns are (header, field, format)."""
    cells = [[h for h, _, _ in columns]] + [[format(getattr(r, f), fmt) for _, f, fmt in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [title] + ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quantile", description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="smaller windows and streams (seconds)")
    args = parser.parse_args(argv)
    if args.quick:
        windows, events, repeats, frames, sel_window, sel_events = [10_000, 100_000], 200_000, 1, 100, 20_000, 400_000
    else:
        windows, events, repeats, frames, sel_window, sel_events = (
            [10_000, 100_000, 1_000_000], 1_000_000, 2, 400, 100_000, 4_000_000,
        )
    machine = f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, {platform.python_version()}"
    print(f"rolling quantile benchmark, level {LEVEL}, frames of {FRAME}: {machine}")

    ev = per_event(windows, events, repeats)
    print(_table(
        "\nper event: quantile after every event (W + events values)",
        ev,
        [("W", "window", ","), ("events", "events", ","), ("pandas ns/ev", "pandas_ns", ".0f"),
         ("streamflow ns/ev", "streamflow_ns", ".1f"), ("speedup", "speedup", ".1f"),
         ("max|diff|", "max_abs_diff", ".1e")],
    ))
    fr = per_frame(windows, frames)
    print(_table(
        f"\nper frame: update({FRAME} events) + value(), window full",
        fr,
        [("W", "window", ","), ("estimator", "estimator", ""), ("p50 us", "p50_us", ".0f"),
         ("p99 us", "p99_us", ".0f"), ("max us", "max_us", ".0f"), ("ns/event", "ns_per_event", ".1f")],
    ))
    sel = selection(sel_window, sel_events)
    print(_table(
        f"\ntrigger line q = 1%: threshold from the window before each frame, W = {sel_window:,},"
        f" {sel_events:,} exponential scores",
        sel,
        [("method", "method", ""), ("accepted %", "accept_percent", ".3f"),
         ("frame rms dev %", "rms_frame_percent", ".1f"), ("frame worst dev %", "worst_frame_percent", ".1f"),
         ("rms vs exact %", "vs_exact_percent", ".1f"),
         ("M events/s", "mevents_per_s", ".1f"), ("memory B", "memory_bytes", ",")],
    ))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": machine, "level": LEVEL, "frame": FRAME, "per_event": [asdict(r) for r in ev],
                 "per_frame": [asdict(r) for r in fr], "selection": [asdict(r) for r in sel]},
                f, indent=2,
            )


if __name__ == "__main__":
    main()
