"""Every figure of the README's GPU section in one call, one process: ``python -m bench.gpu``.

1. per learner of the ``lhco-density`` preset (the default menu -- cathode, anode, cwola, ae -- and the
   density flows flow_m, flow_logm, which carry the issue's flow targets):
   ``learner.score`` and ``learner.learn`` events/s on frames of 4k, 64k, 256k and 1M events
   (``--quick``: 1k and 4k), every learner bound and past its warm-up first; score = best of
   ``SCORE_ROUNDS`` calls, learn = best of ``LEARN_ROUNDS`` calls, each after one untimed call at
   that size (allocation, CUDA kernels' first launch). Frames are synthetic LHCO-like events
   with 1% signal, on the device before the clock starts; the scores end on the host and
   ``learn`` syncs with the host every step, so CUDA times are complete. "learn + score" is the
   rate of a scorer that does both on every event, 1 / (1/score + 1/learn); "menu" sums the
   learners' times. The issue's targets (H100-class GPU): learn + score of the flow (flow_m)
   >= 40 M events/s, score-only >= 100 M events/s;
2. nflows vs zuko behind the flow learner (flow_m, affine), score and learn, at the same sizes:
   zuko built with the same options, and with nflows' multiply-adds per event
   (:func:`bench.pipeline.backend_speeds`); speed-up = zuko events/s / nflows events/s;
3. the pipeline end to end: ``streamflow run`` (producer, scorer and sink as processes on this
   machine, producer at max rate, synthetic stream, default menu, no report) on ``--device``,
   at frames of 4k and 64k (``--quick``: one run of 8 frames of 4k), its scorer's events/s
   while streaming and frame latency p50/p99 (producer send -> scorer done) from the run
   folder's telemetry (:func:`bench.pipeline.end_to_end`); once per learning policy of
   ``LEARN_POLICIES``.

The end-to-end runs are made once per learning policy of ``LEARN_POLICIES``: ``all`` (every
event learnt from before the next frame is taken: the scorer runs at the learning rate) and
``budget`` (every event scored at the input rate, the decoupled learner thread learning what
its time allows; ``streamflow/scoring/decoupled.py``), passed as ``streamflow run --learn``.

The tables are markdown (the README's GPU section is this output); ``--json`` writes every
figure. Wall seconds per part are printed, so a GPU session sees where its minutes went.

    python -m bench.gpu [--device auto|cpu|cuda[:N]] [--quick] [--sizes N,N,...] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench import hotpaths
from bench.pipeline import EndToEnd, backend_speeds, end_to_end
from streamflow.learners import AnyLearner, build_learner
from streamflow.scoring.frame_scorer import cpu_threads, resolve_device
from streamflow.scoring.presets import preset

SIZES = (4096, 65536, 262144, 1048576)
QUICK_SIZES = (1024, 4096)
E2E_FRAMES = (4096, 65536)
E2E_EVENTS = 1_048_576
QUICK_E2E = (4096, 8 * 4096)
"""--quick: one end-to-end run, frames of 4096, 8 frames."""
SCORE_ROUNDS, LEARN_ROUNDS = 5, 2
QUICK_SCORE_ROUNDS, QUICK_LEARN_ROUNDS = 3, 1
FLOW = "flow_m"
"""The flow the issue's targets are stated for."""
TARGETS = {"score": ">= 100 M/s", "learn + score": ">= 40 M/s"}
"""The issue's H100-class targets for the flow, by measurement."""
LEARN_POLICIES = ("all", "budget")
"""The decoupled learner's policies compared end to end, once the build has them."""


@dataclass(frozen=True)
class Rate:
    """One learner's (or the menu's) events/s for one call at one frame size."""

    learner: str
    call: str  # "score", "learn" or "learn + score"
    device: str
    frame_size: int
    events_per_s: float


@dataclass(frozen=True)
class Pipeline:
    """One ``streamflow run`` end to end, under one learning policy."""

    learn: str
    run: EndToEnd


def best_rate(call: Callable[[], object], n: int, rounds: int) -> float:
    """n / the fastest of ``rounds`` timed calls, after one untimed call."""
    call()
    return n / min(hotpaths.time_call(call) for _ in range(rounds))


def score_and_learn(learner: AnyLearner, frames: list[torch.Tensor], score_rounds: int,
                    learn_rounds: int) -> tuple[float, float]:
    """events/s of ``learner.score`` (on the first frame) and ``learner.learn`` (the frames in turn)."""
    n = frames[0].shape[0]
    turn = iter(range(learn_rounds + 1))
    return (best_rate(lambda: learner.score(frames[0]).cpu(), n, score_rounds),
            best_rate(lambda: learner.learn(frames[next(turn) % len(frames)]), n, learn_rounds))


def learner_rates(sizes: tuple[int, ...], device: torch.device, score_rounds: int, learn_rounds: int) -> list[Rate]:
    """Item 1 of the module docstring: score, learn and learn + score of every menu learner, and the menu's."""
    largest = hotpaths.lhco_frames(max(sizes), 2, seed=2)
    learners: dict[str, AnyLearner] = {}
    for config in preset(hotpaths.PRESET).learners:
        learner = learners[config.name] = build_learner(config, device)
        warm = hotpaths.lhco_frames(config.warmup_events, 1, seed=1)[0]
        learner.bind(warm.names)
        learner.learn(torch.from_numpy(warm.features).to(device))
    rows = []
    for n in sizes:
        frames = [torch.from_numpy(b.features[:n]).to(device) for b in largest]
        seconds: dict[str, float] = {"score": 0.0, "learn": 0.0}
        for name, learner in learners.items():
            score, learn = score_and_learn(learner, frames, score_rounds, learn_rounds)
            label = learner_label(name, learner)
            rows += [Rate(label, "score", device.type, n, score), Rate(label, "learn", device.type, n, learn),
                     Rate(label, "learn + score", device.type, n, 1 / (1 / score + 1 / learn))]
            seconds["score"] += n / score
            seconds["learn"] += n / learn
        rows += [Rate("menu", "score", device.type, n, n / seconds["score"]),
                 Rate("menu", "learn", device.type, n, n / seconds["learn"]),
                 Rate("menu", "learn + score", device.type, n, n / (seconds["score"] + seconds["learn"]))]
    return rows


def learner_label(name: str, learner: AnyLearner) -> str:
    """The learner's name, and for CATHODE the state of its gate after the calls: its classifier learns
    (and scores) only once the background flow's loss has settled, so the two states are two rows."""
    gate = getattr(learner, "gate", None)
    if gate is None:
        return name
    return f"{name} ({'gate open' if gate.open else 'gate closed: background flow only'})"


def si(value: float) -> str:
    """events/s as the README writes them: 123k, 4.56 M, 1.23 G."""
    for scale, unit in ((1e9, " G"), (1e6, " M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def markdown(header: list[str], rows: list[list[str]], right_from: int) -> str:
    """A markdown table, columns from ``right_from`` on right-aligned."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *rows])


def rates_table(rates: list[Rate], speeds: list[Any], device: str) -> str:
    """Items 1 and 2: a row per learner and call, a column per frame size (events/s; zuko rows: speed-up)."""
    sizes = sorted({r.frame_size for r in rates})
    header = ["measurement", "device", *(f"{n:,}" for n in sizes), "target (H100-class)"]
    rows = []
    for learner, call in dict.fromkeys((r.learner, r.call) for r in rates):
        cells = {r.frame_size: si(r.events_per_s) for r in rates if (r.learner, r.call) == (learner, call)}
        target = TARGETS.get(call, "") if learner == FLOW else ""
        rows.append([f"{call} {learner}, events/s", device, *(cells.get(n, "") for n in sizes), target])
    for stage, zuko in dict.fromkeys((s.stage, s.zuko) for s in speeds):
        cells = {s.frame_size: f"{s.speedup:.2f}x" for s in speeds if (s.stage, s.zuko) == (stage, zuko)}
        rows.append([f"zuko / nflows {stage} {FLOW} (zuko: {zuko})", device, *(cells.get(n, "") for n in sizes), ""])
    return markdown(header, rows, 2)


def pipeline_table(runs: list[Pipeline]) -> str:
    """Item 3: one row per end-to-end run."""
    header = ["streamflow run, producer at max rate, same machine", "device", "frame", "events",
              "scorer events/s", "latency p50 ms", "p99 ms"]
    rows = [[f"learn: {p.learn}", p.run.device, f"{p.run.frame_size:,}", f"{p.run.events:,}",
             si(p.run.events_per_s), f"{p.run.latency_p50_ms:,.0f}", f"{p.run.latency_p99_ms:,.0f}"] for p in runs]
    return markdown(header, rows, 2)


def frame_sizes(text: str) -> tuple[int, ...]:
    """--sizes: comma-separated frame sizes, 1 to 1,048,576 events each."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame sizes are comma-separated integers, got {text!r}") from None
    if not all(1 <= n <= max(SIZES) for n in sizes):
        raise argparse.ArgumentTypeError(f"frame sizes must be 1 to {max(SIZES):,}, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N] (default auto)")
    parser.add_argument("--quick", action="store_true",
                        help=f"frames of {', '.join(f'{n:,}' for n in QUICK_SIZES)} events, fewer rounds, "
                             f"one short end-to-end run")
    parser.add_argument("--sizes", type=frame_sizes, default=None, metavar="N,N,...",
                        help="frame sizes of the learner and backend rows instead of "
                             f"{', '.join(f'{n:,}' for n in SIZES)} (a CPU takes hours at 1M)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the scorer's, all cores but three, at least one)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(cpu_threads(args.threads or 0))
    device = resolve_device(args.device)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    rounds = (QUICK_SCORE_ROUNDS, QUICK_LEARN_ROUNDS) if args.quick else (SCORE_ROUNDS, LEARN_ROUNDS)
    e2e = [QUICK_E2E] if args.quick else [(n, E2E_EVENTS) for n in E2E_FRAMES]
    print(f"streamflow GPU suite, {hotpaths.machine()}, torch threads {torch.get_num_threads()}, device {device}")
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def part(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        seconds[name] = time.perf_counter() - t0
        return out

    rates: list[Rate] = part("learners", lambda: learner_rates(sizes, device, *rounds))
    speeds = part("backends", lambda: backend_speeds(list(sizes), device, rounds[0], ("affine",)))

    def pipelines() -> list[Pipeline]:
        with tempfile.TemporaryDirectory(prefix="sfgpu") as tmp:
            return [Pipeline(policy, end_to_end(n, events, Path(tmp), args.threads, str(device),
                                                ("--learn", policy)))
                    for policy in LEARN_POLICIES for n, events in e2e]

    runs: list[Pipeline] = part("end to end", pipelines)
    print(f"\nlearners and backends (events/s of the best call; {rounds[0]} score and {rounds[1]} learn calls "
          "per size, after one untimed call)\n")
    print(rates_table(rates, speeds, device.type))
    print("\nthe pipeline end to end (scorer telemetry while streaming)\n")
    print(pipeline_table(runs))
    total = time.perf_counter() - started
    print("\nwall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + f", total {total:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": hotpaths.machine(), "device": str(device), "threads": torch.get_num_threads(),
            "quick": args.quick, "learners": [asdict(r) for r in rates], "backends": [asdict(s) for s in speeds],
            "end_to_end": [{"learn": p.learn, **asdict(p.run)} for p in runs], "wall_s": seconds,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
