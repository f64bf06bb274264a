"""The whole scorer pipeline, stage by stage and end to end, on the CPU and on CUDA when present.

One command, one machine, one run:

1. transport -- streamflow Sender/Receiver vs bare pyzmq PUSH/PULL over tcp loopback
   (:func:`bench.transport.run`);
2. decode -- ``wire.decode`` vs ``np.frombuffer`` of the same parts;
3. score and learn per learner of the lhco preset -- ``learner.score`` / ``learner.learn``
   vs the same network used by the plain library (:mod:`bench.hotpaths`; for the flows
   the baseline is a copy of the learner's MAF, of its backend library, trained by a bare
   Adam loop on the same frames, minibatches and number of steps);
4. rolling quantile -- per-frame update + value of the exact window and the log
   histogram (:func:`bench.quantile.per_frame`);
5. end to end -- ``streamflow run`` with its defaults (synthetic LHCO stream, lhco preset,
   device auto, producer at max rate, monitor in plain mode, no report) for a bounded
   number of events at several frame sizes; from the scorer's telemetry lines in the run
   folder: events/s while streaming and the per-frame latency p50/p99 (producer send ->
   scorer done with the frame; at max rate the queues are full, so this is mostly the
   wait behind ~2 x CHILD_HWM queued frames, not the work on one frame);
6. the floor of the flow's learn step on this device:

   FLOPs. Every dense layer of the MAF (the MaskedLinear of nflows and of zuko is an
   nn.Linear whose weight is multiplied by its mask: the zeros cost as much as the rest) costs
   in x out multiply-adds per event forward; the backward pass computes dL/dinput and
   dL/dW, one product of the same size each, so a training step costs 3 x the forward
   multiply-adds, 2 FLOPs each: F = 6 x sum(in x out) per event. Element-wise work
   (ReLU, exp, the affine transform, log-det sum) is O(width) per layer, not counted.
   Memory traffic. Each activation (the outputs of the dense layers, A = sum(out) per
   event, float32) is written once forward and read once backward, and its gradient
   written and read once: 16 A bytes per event, no caching across layers assumed.
   Per Adam step the P parameters are read forward and backward, their gradients
   written, and Adam reads param, grad, m, v and writes param, m, v: 10 x 4 P bytes
   per step, shared by the batch_size events of the step.
   Peaks are measured in the same run: a large float32 torch matmul (2 N^3 FLOPs) and a
   large tensor copy (2 x bytes moved), best of a few, with the scorer's torch threads.
   floor = max(F / peak FLOP/s, bytes / peak bytes/s) per event; the learn row shows
   the measured events/s as a fraction of the floor's events/s;
7. flow backends -- the lhco preset's flow_m (conditional MAF, affine) and its spline
   variant built with ``backend = "zuko"`` vs ``"nflows"``: ``learner.score``
   and ``learner.learn`` at each frame size, both learners warmed up alike and fed the same
   frames, rounds alternating in this process; speed-up = zuko events/s / nflows events/s
   (min over rounds each). The two libraries build different networks from the same
   options: nflows' MADE has ``blocks`` residual blocks of two dense layers each (and a
   context layer per block), zuko's ``blocks`` hidden layers, so zuko at the same options
   does about a third of the multiply-adds. A third side, zuko with ``2 blocks + 1``
   hidden layers (the same dense multiply-adds per event as nflows, column MAC/ev), tells
   the library's own speed apart from the smaller network's. A correctness line per
   backend: ``CHECK_STEPS`` Adam steps on the synthetic stream (frames of 4096), the mean
   loss of the first and of the last frames, and on a held-out frame the finite fraction
   of float32 log p, its mean (the held-out NLL in the learner's frame) and its largest
   difference from the same weights evaluated in float64.

CPU threads: the scorer's default (all cores but three, at least one) unless --threads.

    python -m bench.pipeline [--quick] [--json PATH] [--threads N] [--only backends]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import hotpaths, quantile, transport
from streamflow.events import open_source
from streamflow.learners import FlowConfig, build_learner
from streamflow.scoring.frame_scorer import cpu_threads, resolve_device
from streamflow.scoring.presets import preset
from streamflow.stream.telemetry import read_jsonl

SIZES = (4096, 65536)
BIND_TRIES = 3
TRANSFORMS = ("affine", "spline")
CHECK_STEPS = 300
"""Adam steps of each backend's correctness check."""
CHECK_FRAME = 4096


@dataclass(frozen=True)
class Stage:
    """One stage at one frame size: streamflow vs its baseline, events/s from the best round."""

    stage: str
    device: str
    frame_size: int
    events_per_s: float
    baseline_events_per_s: float
    ratio: float  # streamflow time / baseline time (min over rounds)
    p50_ms: float  # streamflow, per frame


@dataclass(frozen=True)
class EndToEnd:
    frame_size: int
    events: int
    device: str
    events_per_s: float
    frame_ms: float  # frame size / events per s: the scorer's time per frame
    latency_p50_ms: float
    latency_p99_ms: float
    frames: int


@dataclass(frozen=True)
class Floor:
    device: str
    macs_forward: int  # per event
    flops_step: float  # per event, forward + backward
    bytes_step: float  # per event, activations + the weights' share
    peak_gflops: float
    peak_gb_per_s: float
    floor_events_per_s: float
    bound: str  # "compute" or "memory"
    measured_events_per_s: float  # learn of the flow at the largest frame size
    fraction_of_floor: float


@dataclass(frozen=True)
class BackendSpeed:
    """zuko vs nflows behind the same learner, one call at one frame size (best round each)."""

    transform: str
    stage: str  # "score" or "learn"
    zuko: str  # "same options", or "nflows' MACs" (2 blocks + 1 hidden layers)
    device: str
    frame_size: int
    nflows_events_per_s: float
    zuko_events_per_s: float
    speedup: float  # zuko events/s / nflows events/s
    nflows_macs: int  # dense multiply-adds per event, forward
    zuko_macs: int


@dataclass(frozen=True)
class BackendCheck:
    """One backend's flow trained on the synthetic stream, then evaluated on a held-out frame."""

    backend: str
    transform: str
    params: int
    steps: int
    loss_first: float  # mean loss of the first frame learnt
    loss_last: float  # mean loss of the last LAST_FRAMES frames learnt
    finite: float  # fraction of held-out events with a finite float32 log p
    heldout_nll: float  # mean -log p (the score) over the held-out frame, learner's frame
    float64_max_diff: float  # max |log p float32 - log p float64|, same weights and inputs, nats

    @property
    def trains(self) -> bool:
        return self.loss_last < self.loss_first and self.finite == 1.0


def stage_of(timing: hotpaths.Timing, n: int) -> Stage:
    best, base = min(timing.target_s), min(timing.baseline_s)
    median = sorted(timing.target_s)[len(timing.target_s) // 2]
    return Stage(timing.name, timing.device, n, n / best, n / base, best / base, median * 1e3)


def rounds_of(name: str, n: int, rounds: int) -> int:
    """Learning a 64k frame takes a second or more: fewer rounds for the slow cases."""
    return max(3, rounds * 4096 // n) if name.startswith("learn") else rounds


def stages(sizes: list[int], device: str, rounds: int) -> list[Stage]:
    """decode, then score_<learner> and learn_<learner> for every lhco learner, at every frame size."""
    rows = []
    for n in sizes:
        names = ["decode", *(f"{k}_{name}" for name in hotpaths.learner_names() for k in ("score", "learn"))]
        for name in names:
            case = hotpaths.make_case(name, n, device)
            rows.append(stage_of(hotpaths.measure(case, rounds_of(name, n, rounds), warmup=1), n))
    return rows


def macs_per_event(model: nn.Module) -> int:
    """Dense multiply-adds per event of one forward pass: sum of in x out over the linear layers."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def lhco_flow() -> FlowConfig:
    """The lhco preset's flow in the identity frame (flow_m: 4 CATHODE features given mjj)."""
    learners = preset(hotpaths.PRESET).learners
    return next(c for c in learners if isinstance(c, FlowConfig) and c.coordinates == "identity")


def backend_case(kind: str, nflows: FlowConfig, zuko: FlowConfig, n: int,
                 device: torch.device) -> tuple[hotpaths.Case, int, int]:
    """``kind`` ("score" or "learn") of the zuko learner (target) vs the nflows one (baseline) on the
    same frames, and both models' MAC/ev. ``learner.learn`` syncs with the host every step and the
    scores end on the host, so the times are complete on CUDA too."""
    learners = [hotpaths.warm_learner(config, n, device) for config in (nflows, zuko)]
    pool = hotpaths.POOL if kind == "learn" else 1
    frames = [torch.from_numpy(b.features).to(device) for b in hotpaths.lhco_frames(n, pool, seed=2)]
    calls = []
    for learner in learners:
        feed = itertools.cycle(frames)
        if kind == "score":
            calls.append(lambda learner=learner, feed=feed: learner.score(next(feed)).cpu().numpy())
        else:
            calls.append(lambda learner=learner, feed=feed: learner.learn(next(feed)))
    case = hotpaths.Case(f"{kind}_{nflows.name}_{nflows.transform}", calls[1], calls[0], device.type)
    return case, macs_per_event(learners[0].model), macs_per_event(learners[1].model)


def backend_speeds(sizes: list[int], device: torch.device, rounds: int,
                   transforms: tuple[str, ...] = TRANSFORMS) -> list[BackendSpeed]:
    """Item 7 of the module docstring: zuko (same options, and nflows' MACs) vs nflows, per frame size."""
    rows = []
    for transform in transforms:
        nflows = replace(lhco_flow(), backend="nflows", transform=transform)
        sides = {"same options": replace(nflows, backend="zuko"),
                 "nflows' MACs": replace(nflows, backend="zuko", blocks=2 * nflows.blocks + 1)}
        for n in sizes:
            for kind in ("score", "learn"):
                for label, zuko in sides.items():
                    case, nflows_macs, zuko_macs = backend_case(kind, nflows, zuko, n, device)
                    timing = hotpaths.measure(case, rounds_of(kind, n, rounds), warmup=1)
                    zuko_s, nflows_s = min(timing.target_s), min(timing.baseline_s)
                    rows.append(BackendSpeed(transform, kind, label, device.type, n, n / nflows_s, n / zuko_s,
                                             nflows_s / zuko_s, nflows_macs, zuko_macs))
    return rows


LAST_FRAMES = 10


def backend_check(config: FlowConfig, device: torch.device, steps: int = CHECK_STEPS) -> BackendCheck:
    """Train ``config``'s learner on the synthetic stream for ``steps`` Adam steps; check its log p
    on a held-out frame (finite, and float32 against the same weights in float64)."""
    learner = build_learner(config, device)
    source = open_source("synthetic", signal_fraction=0.01, seed=5)
    learner.bind(source.names)
    losses = []
    for batch in source.chunks(CHECK_FRAME):
        losses.append(learner.learn(torch.from_numpy(batch.features).to(device))["loss"])
        if learner.totals.steps >= steps:
            break
    x = torch.from_numpy(hotpaths.lhco_frames(max(SIZES), 1, seed=6)[0].features).to(device)
    scores = learner.score(x)
    density = learner.scoring_model
    wide = copy.deepcopy(density).double()
    with torch.no_grad():
        z, c = learner.inputs(x), None if learner.context is None else learner.context(x)
        narrow_lp = density.log_prob(z, c).double()
        wide_lp = wide.log_prob(z.double(), None if c is None else c.double())
    both = torch.isfinite(narrow_lp) & torch.isfinite(wide_lp)
    return BackendCheck(config.backend, config.transform, sum(p.numel() for p in learner.model.parameters()),
                        learner.totals.steps, losses[0], sum(losses[-LAST_FRAMES:]) / len(losses[-LAST_FRAMES:]),
                        torch.isfinite(scores).float().mean().item(), scores.double().mean().item(),
                        (narrow_lp - wide_lp)[both].abs().max().item())


def backend_checks(device: torch.device) -> list[BackendCheck]:
    return [backend_check(replace(lhco_flow(), backend=backend, transform=transform), device)
            for transform in TRANSFORMS for backend in ("nflows", "zuko")]


def print_backends(speeds: list[BackendSpeed], checks: list[BackendCheck]) -> None:
    print(quantile._table(f"\nflow backends: zuko vs nflows behind the flow learner (default {FlowConfig.backend}), "
                          "lhco flow_m (events/s of the best round; speed-up = zuko / nflows events/s)", speeds, [
        ("transform", "transform", ""), ("call", "stage", ""), ("zuko built with", "zuko", ""),
        ("device", "device", ""), ("frame", "frame_size", ","), ("nflows ev/s", "nflows_events_per_s", ",.0f"),
        ("zuko ev/s", "zuko_events_per_s", ",.0f"), ("speed-up", "speedup", ".2f"),
        ("nflows MAC/ev", "nflows_macs", ","), ("zuko MAC/ev", "zuko_macs", ",")]))
    print(quantile._table(f"\nflow backends: correctness, {CHECK_STEPS} Adam steps on the synthetic stream "
                          f"(frames of {CHECK_FRAME}), log p on a held-out frame of {max(SIZES):,}", checks, [
        ("backend", "backend", ""), ("transform", "transform", ""), ("params", "params", ","),
        ("steps", "steps", ""), ("loss first frame", "loss_first", ".3f"),
        (f"loss last {LAST_FRAMES}", "loss_last", ".3f"), ("trains", "trains", ""),
        ("finite log p", "finite", ".1%"), ("held-out NLL", "heldout_nll", ".3f"),
        ("max |f32 - f64| nats", "float64_max_diff", ".1e")]))


def _free_ports(count: int, rng: random.Random) -> int:
    """A base port P with P .. P + count - 1 free on loopback, below Linux's ephemeral range
    (32768+), where outgoing connections of other processes take ports at any moment."""
    while True:
        base = rng.randrange(20000, 32000 - count)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                held.append(socket.socket())
                held[-1].bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()


def end_to_end(frame_size: int, events: int, workdir: Path, threads: int | None, device: str = "auto",
               options: tuple[str, ...] = ()) -> EndToEnd:
    """Run ``streamflow run`` (on ``device``, with any further ``options`` of the command) and read its
    scorer's telemetry lines."""
    label = "-".join([str(frame_size), *(o.strip("-") for o in options)])
    run_dir = workdir / f"run-{label}"
    command = [sys.executable, "-m", "streamflow.cli.main", "run", "--events", str(events), "--frame-size",
               str(frame_size), "--run-dir", str(run_dir), "--no-report", "--device", device, *options]
    if threads is not None:
        command += ["--threads", str(threads)]
    log = workdir / f"run-{label}.log"
    rng = random.Random()
    for _ in range(BIND_TRIES):  # a port taken between the check and the bind: try other ports
        shutil.rmtree(run_dir, ignore_errors=True)
        ports = ["--base-port", str(_free_ports(5, rng))]
        with open(log, "w") as out:
            code = subprocess.run(command + ports, stdout=out, stderr=subprocess.STDOUT, timeout=1800).returncode
        if code == 0 or "address already in use" not in log.read_text():
            break
    if code != 0:
        raise RuntimeError(f"streamflow run exited with {code}; see {log}")
    lines = sorted(read_jsonl(run_dir / "telemetry-scorer.jsonl"), key=lambda m: m["time"])
    final = lines[-1]
    # Lines written while streaming come right after a frame; the last line also holds the
    # final flush, checkpoint and END_OF_STREAM handshake, so it is left out of the rate.
    streaming = [m for m in lines[:-1] if 0 < m["events"] < final["events"]]
    if len(streaming) >= 2 and streaming[-1]["time"] > streaming[0]["time"]:
        first, last = streaming[0], streaming[-1]
        rate = (last["events"] - first["events"]) / (last["time"] - first["time"])
    else:  # too short a run for two telemetry lines while streaming
        rate = final["events"] / final["uptime_s"]
    return EndToEnd(frame_size, final["events"], final["device"], rate, frame_size / rate * 1e3,
                    final["latency"]["p50_ms"], final["latency"]["p99_ms"], final["frames"])


def _best_seconds(fn: Any, device: torch.device, repeats: int = 3) -> float:
    best = math.inf
    for _ in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def peaks(device: torch.device) -> tuple[float, float]:
    """Measured float32 FLOP/s of a large matmul and bytes/s of a large copy on ``device``."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    flops = 2 * n**3 / _best_seconds(lambda: a @ b, device)
    count = (256 if device.type == "cuda" else 32) * 2**20  # floats: 1 GiB / 128 MiB
    src, dst = torch.empty(count, device=device), torch.empty(count, device=device)
    src.fill_(1.0)
    dst.fill_(0.0)
    bandwidth = 2 * 4 * count / _best_seconds(lambda: dst.copy_(src), device)
    return flops, bandwidth


def flow_floor(config: FlowConfig, device: torch.device, measured: float) -> Floor:
    """The FLOP and memory-traffic floor of one learn step of the flow (module docstring, item 6)."""
    learner = build_learner(config, device)
    macs = macs_per_event(learner.model)
    activations = sum(m.out_features for m in learner.model.modules() if isinstance(m, nn.Linear))
    params = sum(p.numel() for p in learner.model.parameters())
    flops = 6.0 * macs
    traffic = 16.0 * activations + 40.0 * params / config.batch_size
    peak_flops, peak_bytes = peaks(device)
    compute, memory = flops / peak_flops, traffic / peak_bytes
    floor = 1.0 / max(compute, memory)
    return Floor(device.type, macs, flops, traffic, peak_flops / 1e9, peak_bytes / 1e9, floor,
                 "compute" if compute >= memory else "memory", measured, measured / floor)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds, a short transport run, two end-to-end frame sizes of 24 frames")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the scorer's, all cores but three, at least one)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    parser.add_argument("--only", choices=["backends"], default=None,
                        help="run only this part: backends = zuko vs nflows behind the flow learner (item 7)")
    args = parser.parse_args(argv)
    torch.set_num_threads(cpu_threads(args.threads or 0))
    device = resolve_device(args.device)
    rounds = 5 if args.quick else 20
    e2e_sizes = [1024, 4096] if args.quick else [1024, 4096, 16384]
    e2e_frames = 24 if args.quick else 64
    print(f"streamflow pipeline benchmark, {hotpaths.machine()}, torch threads {torch.get_num_threads()}, "
          f"device {device}")
    figures: dict[str, Any] = {"machine": hotpaths.machine(), "threads": torch.get_num_threads(),
                               "device": str(device), "quick": args.quick}

    speeds, checks = backend_speeds(list(SIZES), device, rounds), backend_checks(device)
    print_backends(speeds, checks)
    figures.update(backends=[asdict(r) for r in speeds], backend_checks=[asdict(r) for r in checks])
    if args.only == "backends":
        write_json(args.json, figures)
        return

    moved = transport.run(2_000_000 if args.quick else 10_000_000, list(SIZES), ["tcp"], 1 if args.quick else 3)
    print("\ntransport (tcp loopback, 16 float32 + uint64 id per event, best run)")
    print(transport.table(moved))

    rows = stages(list(SIZES), str(device), rounds)
    print(quantile._table("\nper-frame stages vs baselines (events/s of the best round; ratio = time / baseline "
                          "time)", rows, [
        ("stage", "stage", ""), ("device", "device", ""), ("frame", "frame_size", ","),
        ("events/s", "events_per_s", ",.0f"), ("baseline events/s", "baseline_events_per_s", ",.0f"),
        ("ratio", "ratio", ".2f"), ("p50 ms", "p50_ms", ".3f")]))

    windows = [preset(hotpaths.PRESET).lines[0].window, 1_000_000]
    rolling = quantile.per_frame(windows, 50 if args.quick else 200)
    print(quantile._table(f"\nrolling quantile: update({quantile.FRAME} events) + value(), window full", rolling, [
        ("W", "window", ","), ("estimator", "estimator", ""), ("p50 us", "p50_us", ".0f"),
        ("p99 us", "p99_us", ".0f"), ("ns/event", "ns_per_event", ".1f")]))

    with tempfile.TemporaryDirectory(prefix="sfpipe") as tmp:
        runs = [end_to_end(n, n * e2e_frames, Path(tmp), args.threads, args.device) for n in e2e_sizes]
    print(quantile._table("\nend to end: streamflow run (defaults, max rate), scorer telemetry", runs, [
        ("frame", "frame_size", ","), ("events", "events", ","), ("device", "device", ""),
        ("events/s", "events_per_s", ",.0f"), ("ms/frame", "frame_ms", ".1f"),
        ("latency p50 ms", "latency_p50_ms", ",.0f"), ("p99 ms", "latency_p99_ms", ",.0f")]))

    flow = lhco_flow()
    learn = next(r for r in rows if r.stage == f"learn_{flow.name}" and r.frame_size == max(SIZES))
    floor = flow_floor(flow, device, learn.events_per_s)
    print(quantile._table(f"\nfloor of the {flow.name} learn step (see the module docstring)", [floor], [
        ("device", "device", ""), ("MAC/ev fwd", "macs_forward", ","), ("FLOP/ev step", "flops_step", ",.0f"),
        ("B/ev step", "bytes_step", ",.0f"), ("peak GFLOP/s", "peak_gflops", ".1f"),
        ("peak GB/s", "peak_gb_per_s", ".1f"), ("floor ev/s", "floor_events_per_s", ",.0f"),
        ("bound", "bound", ""), ("measured ev/s", "measured_events_per_s", ",.0f"),
        ("of floor", "fraction_of_floor", ".1%")]))

    figures.update(transport=[asdict(r) for r in moved], stages=[asdict(r) for r in rows],
                   rolling_quantile=[asdict(r) for r in rolling], end_to_end=[asdict(r) for r in runs],
                   flow_learn_floor=asdict(floor))
    write_json(args.json, figures)


def write_json(path: str | None, figures: dict[str, Any]) -> None:
    """Every figure of the run as JSON at ``path`` (nothing if None)."""
    if path:
        Path(path).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
