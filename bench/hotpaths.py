"""Per-frame hot paths of the scorer, each timed against an honest baseline in the same run.

CI runs the first four kinds (tests/test_bench_hotpaths.py, part of ``python -m pytest``)
and fails when a path got much slower *relative to its baseline*. On shared, noisy
machines an absolute time says little; the ratio of two operations timed side by side,
round by round (baseline, then streamflow), moves far less with load and hardware.

================  ==============================================  ===============================================
case              streamflow, per frame of n events                baseline: the same job done the plain way
================  ==============================================  ===============================================
decode            ``wire.decode`` of a DATA frame with labels       ``np.frombuffer`` of its ids, features and
                  (header, meta, sizes checked; zero-copy views)    labels buffers (nothing checked)
score_<learner>   ``learner.score(x)`` of each learner of the lhco  the learner's own network (a copy: same size,
                  preset on a raw 16-column stream frame: columns,  same weights) called directly on ready
                  coordinates, standardisation, NaN mask       standardised tensors: nflows MAF ``log_prob``,
                                                                    or the torch MLP forward (CWoLA logit,
                                                                    autoencoder reconstruction error)
quantile          ``RollingQuantile.update(frame)`` + ``value()``   ring-buffer write + ``np.partition`` of the
                  at the lhco lines' window (20k) and level (0.99)  whole window (:class:`NumpyWindow`)
select            ``TriggerMenu.select`` of the lhco preset's four  per line: the numpy window's threshold, the
                  lines, with labels (per-line statistics)          comparison, trigger bits, accept counts
learn_<learner>   ``learner.learn(x)`` (bench.pipeline only)        the plain training loop on a copy of the
                                                                    network: Adam, the same minibatch size and
                                                                    number of steps, on the learner's training
                                                                    rows (e.g. the CWoLA sideband)
================  ==============================================  ===============================================

ratio = min over rounds of the streamflow time / min over rounds of the baseline time
(``time.perf_counter``; the minimum is the round least disturbed by other processes).
Learners run on CUDA when torch sees a GPU (both sides end with the scores or a sync on
the host), else on the CPU with one torch thread, as in the tests.

``bench/baseline_hotpaths.json`` holds the committed ratios per device type; CI fails a
case whose ratio exceeds ``FACTOR`` (3) times its committed ratio. After a deliberate
change of speed, regenerate it on a quiet machine:

    python -m bench.hotpaths [--frame-size 4096] [--rounds 100] [--write-baseline]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from streamflow.events import open_source
from streamflow.events.batch import EventBatch
from streamflow.learners import CWoLAConfig, FlowConfig, LearnerConfig, TorchLearner, build_learner
from streamflow.learners.registry import KINDS
from streamflow.scoring.frame_scorer import resolve_device
from streamflow.scoring.presets import preset
from streamflow.stream.wire import decode, encode_data
from streamflow.trigger import RollingQuantile, TriggerMenu

FACTOR = 3.0
"""A case fails CI when its ratio is more than FACTOR times the committed one."""
BASELINE_FILE = Path(__file__).with_name("baseline_hotpaths.json")
FRAME = 4096
PRESET = "lhco-density"
POOL = 8  # distinct frames cycled through, so a window really moves from call to call


@dataclass(frozen=True)
class Case:
    """One hot path and its baseline; ``device`` is where the work runs ("cpu" for numpy paths)."""

    name: str
    target: Callable[[], object]
    baseline: Callable[[], object]
    device: str


@dataclass(frozen=True)
class Timing:
    """Seconds per call of both sides, one entry per round."""

    name: str
    device: str
    target_s: list[float]
    baseline_s: list[float]

    @property
    def ratio(self) -> float:
        return min(self.target_s) / min(self.baseline_s)


def time_call(fn: Callable[[], object]) -> float:
    """Wall seconds of one call (perf_counter: the timer pytest-benchmark uses)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(case: Case, rounds: int, warmup: int = 2) -> Timing:
    """Interleaved rounds: the baseline, then the streamflow path, ``rounds`` times."""
    for _ in range(warmup):
        case.baseline()
        case.target()
    target, baseline = [], []
    for _ in range(rounds):
        baseline.append(time_call(case.baseline))
        target.append(time_call(case.target))
    return Timing(case.name, case.device, target, baseline)


def lhco_frames(n: int, count: int, seed: int = 0) -> list[EventBatch]:
    """``count`` frames of n synthetic LHCO-like events with 1% signal, labelled."""
    chunks = open_source("synthetic", signal_fraction=0.01, seed=seed).chunks(n)
    return [next(chunks) for _ in range(count)]


def network_learners(name: str = PRESET) -> list[LearnerConfig]:
    """The preset's learners that are one network each (TorchLearner: a flow, CWoLA, the autoencoder),
    which a plain copy of their network can be timed against; composites (CATHODE, ANODE) are left out."""
    return [c for c in preset(name).learners if issubclass(KINDS[c.kind], TorchLearner)]


def case_names() -> list[str]:
    """The CI cases: decode, score of every single-network lhco learner, quantile, select."""
    return ["decode", *(f"score_{c.name}" for c in network_learners()), "quantile", "select"]


def learner_names() -> list[str]:
    return [c.name for c in network_learners()]


def make_case(name: str, n: int = FRAME, device: str | torch.device = "auto") -> Case:
    """Build case ``name`` (see the module docstring) for frames of n events."""
    if name == "decode":
        return decode_case(n)
    if name == "quantile":
        return quantile_case(n)
    if name == "select":
        return select_case(n)
    kind, _, learner = name.partition("_")
    configs = {c.name: c for c in network_learners()}
    if kind in ("score", "learn") and learner in configs:
        return learner_case(kind, configs[learner], n, resolve_device(str(device)))
    raise ValueError(f"unknown hot-path case {name!r} (known: {', '.join(case_names())}, learn_<learner>)")


# --- decode -------------------------------------------------------------------------


def decode_case(n: int) -> Case:
    batch = lhco_frames(n, 1)[0]
    # As received: one bytes-like buffer per part.
    parts = [p if isinstance(p, bytes) else p.tobytes() for p in encode_data(batch, seq=0, stream_id=0, send_ns=0)]
    f = batch.features.shape[1]

    def bare() -> tuple[np.ndarray, ...]:
        return (np.frombuffer(parts[1], np.uint64), np.frombuffer(parts[2], np.float32).reshape(n, f),
                np.frombuffer(parts[3], np.int8))

    return Case("decode", lambda: decode(parts), bare, "cpu")


# --- learners -----------------------------------------------------------------------


@dataclass
class PlainNetwork:
    """A learner's network used directly by the plain library: no columns, frames, masks or EMA.

    ``aux`` is the flow's context c[n, 1], or the CWoLA labels (training only).
    """

    model: nn.Module
    kind: str

    def score(self, z: Tensor, aux: Tensor | None) -> Tensor:
        if self.kind == "flow":
            return -self.model.log_prob(z, aux)
        out = self.model(z)
        return out.squeeze(1) if self.kind == "cwola" else ((out - z) ** 2).mean(dim=1)

    def loss(self, z: Tensor, aux: Tensor | None) -> Tensor:
        if self.kind == "cwola":
            return nn.functional.binary_cross_entropy_with_logits(self.model(z).squeeze(1), aux)
        return self.score(z, aux).mean()


def warm_learner(config: LearnerConfig, n: int, device: torch.device) -> TorchLearner:
    """A learner of ``config`` bound to the LHCO schema and past its warm-up (standardisation frozen)."""
    learner = build_learner(config, device)
    warm = lhco_frames(max(n, config.warmup_events), 1, seed=1)[0]
    learner.bind(warm.names)
    learner.learn(torch.from_numpy(warm.features).to(device))
    return learner


def training_rows(config: LearnerConfig, batch: EventBatch) -> np.ndarray:
    """The rows the learner learns from: its train_where window and, for CWoLA, the sideband."""
    keep = np.ones(len(batch), dtype=bool)
    if isinstance(config, CWoLAConfig):
        r = batch.column(config.region_feature)
        keep &= (r >= config.sideband[0]) & (r < config.sideband[1])
    if config.train_where is not None:
        keep &= config.train_where.contains(torch.from_numpy(batch.column(config.train_where.feature))).numpy()
    return keep


def plain_inputs(learner: TorchLearner, x: Tensor, batch: EventBatch) -> tuple[Tensor, Tensor | None]:
    """The ready tensors of the plain network: z, and the flow's context or the CWoLA labels."""
    config = learner.config
    with torch.no_grad():
        z = learner.inputs(x)
        if isinstance(config, FlowConfig):
            return z, None if learner.context is None else learner.context(x)
        if isinstance(config, CWoLAConfig):
            lo, hi = config.signal_region
            r = torch.from_numpy(batch.column(config.region_feature)).to(x.device)
            return z, ((r >= lo) & (r < hi)).float()
        return z, None


def plain_train(net: PlainNetwork, optimizer: torch.optim.Optimizer, z: Tensor, aux: Tensor | None,
                batch_size: int, passes: int) -> None:
    """The plain online training loop: ``passes`` shuffled passes of Adam minibatch steps."""
    for _ in range(passes):
        for index in torch.randperm(z.shape[0], device=z.device).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            net.loss(z[index], None if aux is None else aux[index]).backward()
            optimizer.step()


def _synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    if device.type != "cuda":
        return fn

    def call() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def learner_case(kind: str, config: LearnerConfig, n: int, device: torch.device) -> Case:
    """score_<learner> or learn_<learner>: the learner's call vs its plain network on the same frames."""
    learner = warm_learner(config, n, device)
    net = PlainNetwork(copy.deepcopy(learner.model).requires_grad_(True), learner.kind)
    frames = []
    for batch in lhco_frames(n, POOL if kind == "learn" else 1, seed=2):
        x = torch.from_numpy(batch.features).to(device)
        z, aux = plain_inputs(learner, x, batch)
        rows = torch.from_numpy(training_rows(config, batch)).to(device)
        frames.append((x, z, aux, rows))
    if kind == "score":
        x, z, aux, _ = frames[0]

        def bare_score() -> np.ndarray:
            with torch.no_grad():
                return net.score(z, aux).cpu().numpy()

        return Case(f"score_{config.name}", lambda: learner.score(x).cpu().numpy(), bare_score, device.type)
    optimizer = torch.optim.Adam(net.model.parameters(), lr=config.lr)
    ours, theirs = itertools.cycle(frames), itertools.cycle(frames)

    def bare_learn() -> None:
        _, z, aux, rows = next(theirs)
        plain_train(net, optimizer, z[rows], None if aux is None else aux[rows], config.batch_size,
                    config.steps_per_frame)

    return Case(f"learn_{config.name}", _synced(lambda: learner.learn(next(ours)[0]), device),
                _synced(bare_learn, device), device.type)


# --- trigger ------------------------------------------------------------------------


class NumpyWindow:
    """The plain exact rolling quantile: a ring buffer, and ``np.partition`` of the whole window per query.

    value() is ``np.quantile(window, level)`` ('linear' rule): with h = level (m - 1) over
    the m values held, x_(floor h) + (h - floor h)(x_(floor h + 1) - x_(floor h)).
    """

    def __init__(self, window: int, level: float) -> None:
        self.ring = np.empty(window, dtype=np.float64)
        self.level = level
        self.pos = self.count = 0

    def update(self, values: np.ndarray) -> None:
        np.put(self.ring, np.arange(self.pos, self.pos + len(values)), values, mode="wrap")
        self.pos = (self.pos + len(values)) % len(self.ring)
        self.count = min(self.count + len(values), len(self.ring))

    def value(self) -> float:
        if self.count == 0:
            return math.nan  # as RollingQuantile: an empty window has no threshold
        h = self.level * (self.count - 1)
        lo = int(h)
        hi = min(lo + 1, self.count - 1)
        part = np.partition(self.ring[: self.count], (lo, hi))
        return float(part[lo] + (h - lo) * (part[hi] - part[lo]))


def score_frames(n: int, lines: int, seed: int = 3) -> list[np.ndarray]:
    """``POOL`` frames of heavy-tailed scores (Student t, 4 dof), float64[lines, n] each."""
    rng = np.random.default_rng(seed)
    return [rng.standard_t(4, size=(lines, n)) for _ in range(POOL)]


def _filled(window: int, n: int, update: Callable[[int], object]) -> None:
    """Feed frames 0, 1, ... of the pool until the window is full twice over (the exact window's band settles)."""
    for i in itertools.islice(itertools.cycle(range(POOL)), 2 * math.ceil(window / n)):
        update(i)


def quantile_case(n: int) -> Case:
    line = preset(PRESET).lines[0]
    frames = [f[0] for f in score_frames(n, 1)]
    ours, theirs = RollingQuantile(line.window, line.level), NumpyWindow(line.window, line.level)
    for estimator in (ours, theirs):
        _filled(line.window, n, lambda i: estimator.update(frames[i]))  # noqa: B023 (called in this iteration)
    next_ours, next_theirs = itertools.cycle(frames).__next__, itertools.cycle(frames).__next__

    def run(estimator: RollingQuantile | NumpyWindow, frame: np.ndarray) -> float:
        estimator.update(frame)
        return estimator.value()

    return Case("quantile", lambda: run(ours, next_ours()), lambda: run(theirs, next_theirs()), "cpu")


def numpy_select(windows: list[NumpyWindow], scores: np.ndarray,
                 labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain per-frame trigger: each line's threshold from its window before the frame, then the
    trigger bits uint64[n] and per line the accepted and accepted-signal counts int64[lines, 2]."""
    bits = np.zeros(scores.shape[1], dtype=np.uint64)
    counts = np.zeros((len(windows), 2), dtype=np.int64)
    signal = labels == 1
    for i, (window, values) in enumerate(zip(windows, scores)):
        passed = values > window.value()
        bits |= passed.astype(np.uint64) << np.uint64(i)
        counts[i] = passed.sum(), (passed & signal).sum()
        window.update(values)
    return bits, counts


def select_case(n: int) -> Case:
    lines = preset(PRESET).lines
    learners = [line.learner for line in lines]
    frames = score_frames(n, len(lines))
    labels = [b.labels for b in lhco_frames(n, POOL, seed=4)]
    menu = TriggerMenu(lines)
    windows = [NumpyWindow(line.window, line.level) for line in lines]

    def ours(i: int) -> object:
        return menu.select(dict(zip(learners, frames[i])), labels[i])

    def theirs(i: int) -> object:
        return numpy_select(windows, frames[i], labels[i])

    window = max(line.window for line in lines)
    _filled(window, n, ours)
    _filled(window, n, theirs)
    i_ours, i_theirs = itertools.cycle(range(POOL)), itertools.cycle(range(POOL))
    return Case("select", lambda: ours(next(i_ours)), lambda: theirs(next(i_theirs)), "cpu")


# --- the committed baseline ---------------------------------------------------------


def committed_ratio(name: str, device: str, path: Path = BASELINE_FILE) -> float | None:
    """The committed ratio of case ``name`` on device type ``device``, or None if there is none."""
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("devices", {}).get(device, {}).get("ratios", {}).get(name)


def machine() -> str:
    cuda = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}{cuda}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")


def write_baseline(timings: list[Timing], n: int, rounds: int, path: Path = BASELINE_FILE) -> None:
    """Replace the committed ratios of the device types measured; keep the others."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(factor=FACTOR, frame_size=n, rounds=rounds,
                statistic="min(streamflow s) / min(baseline s) over interleaved rounds, perf_counter, "
                          "1 torch CPU thread")
    devices = data.setdefault("devices", {})
    for device in dict.fromkeys(t.device for t in timings):
        mine = [t for t in timings if t.device == device]
        entry = devices.setdefault(device, {"ratios": {}, "target_us": {}, "baseline_us": {}})
        entry.update(machine=machine(), written=datetime.date.today().isoformat())
        for t in mine:
            entry["ratios"][t.name] = round(t.ratio, 3)
            entry["target_us"][t.name] = round(min(t.target_s) * 1e6, 1)
            entry["baseline_us"][t.name] = round(min(t.baseline_s) * 1e6, 1)
    path.write_text(json.dumps(data, indent=2) + "\n")


def table(timings: list[Timing]) -> str:
    """Markdown: both sides' min and median, the ratio, the committed ratio and the CI limit."""
    rows = ["| case | device | streamflow us (min / median) | baseline us (min / median) | ratio | committed | "
            f"limit ({FACTOR:g}x) |", "|---|---|---:|---:|---:|---:|---:|"]
    for t in timings:
        committed = committed_ratio(t.name, t.device)
        ref = "- | -" if committed is None else f"{committed:.2f} | {FACTOR * committed:.2f}"
        ours, theirs = (f"{min(s) * 1e6:.0f} / {statistics.median(s) * 1e6:.0f}" for s in (t.target_s, t.baseline_s))
        rows.append(f"| {t.name} | {t.device} | {ours} | {theirs} | {t.ratio:.2f} | {ref} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpaths", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frame-size", type=int, default=FRAME, help=f"events per frame (default {FRAME})")
    parser.add_argument("--rounds", type=int, default=100, help="interleaved rounds per case (default 100)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    parser.add_argument("--cases", nargs="+", default=None, help="case names (default: the CI cases)")
    parser.add_argument("--write-baseline", action="store_true", help=f"write the ratios to {BASELINE_FILE}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in the tests (tests/conftest.py), so the committed ratios compare
    timings = [measure(make_case(name, args.frame_size, args.device), args.rounds)
               for name in args.cases or case_names()]
    print(f"hot paths, frames of {args.frame_size} events, {args.rounds} rounds, {machine()}")
    print(table(timings))
    if args.write_baseline:
        write_baseline(timings, args.frame_size, args.rounds)
        print(f"wrote {BASELINE_FILE}")


if __name__ == "__main__":
    main()
