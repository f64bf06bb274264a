"""Frame latency against input rate: does the scorer keep up, and what does learning cost it?

1. Score-only capacity of the menu (events/s): in this process, the default menu
   (``streamflow run``'s: the lhco preset) warmed up by learning from ``--warmup-frames``
   frames of the source, then :meth:`FrameScorer.score_only` -- device copy, every
   learner's score, the trigger menu -- over ``--capacity-frames`` frames, best of
   ``--repeats``, with the scorer's torch threads. No decode, no sockets, no learning:
   the most events per second a scorer could take on this machine.
2. ``streamflow run`` (producer, scorer, sink; no monitor, no report) on the source
   (a file is replayed with ``--loop``, so the producer reads memory, not the disk),
   ``--events`` events each run, with the producer paced at each fraction of that
   capacity (``--rates``, default 25%, 50%, 100%, 150%), at max rate, and at any
   absolute rates asked for (``--events-per-s``), once per
   learning policy (``--policies``, default ``budget`` and ``all``), all in this session;
   with ``--acked``, every run is ``streamflow run --acked`` (acknowledged delivery on both
   hops; ``--ack-window`` passed on when given): run with and without it, one after the
   other, to compare the two paths.
   Per run, from its run folder: the producer's achieved rate (events / its busy time),
   the scorer's rate (ledger: events / from the first frame's arrival to the last frame's
   end) and its ratio to the capacity, frame latency p50 / p99 (producer send -> the
   scorer done with the frame, over every frame), scored / sent, and the learnt fraction
   of the learners (lowest and highest).

    python -m bench.latency [--source PATH|synthetic] [--events N] [--rates 0.25,0.5,1,1.5,max]
                            [--events-per-s 50000] [--policies budget,all] [--acked [--ack-window W]]
                            [--quick] [--json PATH]

The default source is the LHCO R&D features file of the shared data folder
(``$STREAMFLOW_DATA`` or ``../shared/data/lhco``), else the synthetic stream.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.pipeline import BIND_TRIES, _free_ports
from streamflow.events import open_source
from streamflow.scoring.frame_scorer import FrameScorer
from streamflow.scoring.presets import preset, preset_for_source
from streamflow.stream.telemetry import read_jsonl

FEATURES_FILE = "lhco_rnd_first60k.features.h5"
FRAME = 4096


@dataclass
class Capacity:
    events_per_s: float
    frames: int
    threads: int


@dataclass
class Paced:
    policy: str
    rate: str
    """The producer's target: a fraction of the capacity ("25%") or "max"."""
    target_events_per_s: float | None
    producer_events_per_s: float
    scorer_events_per_s: float
    of_capacity: float
    p50_ms: float
    p99_ms: float
    sent: int
    scored: int
    learnt_min: float | None
    learnt_max: float | None


def default_source() -> str:
    folder = Path(os.environ.get("STREAMFLOW_DATA") or Path(__file__).resolve().parents[2] / "shared/data/lhco")
    path = folder / FEATURES_FILE
    return str(path) if path.exists() else "synthetic"


def capacity(source: str, warmup_frames: int, frames: int, repeats: int) -> Capacity:
    """Score-only events/s of the source's default menu after ``warmup_frames`` frames of learning."""
    stream = open_source(source, signal_fraction=0.01, seed=0, **({} if source == "synthetic" else {"loop": True}))
    batches = [batch for _, batch in zip(range(warmup_frames + frames), stream.chunks(FRAME), strict=False)]
    scorer = FrameScorer(dataclasses.replace(preset(preset_for_source(source)), device="cpu"))
    for batch in batches[:warmup_frames]:
        scorer.process(batch)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        events = sum(len(scorer.score_only(batch).selection.accept) for batch in batches[warmup_frames:])
        best = max(best, events / (time.perf_counter() - started))
    return Capacity(best, frames, torch.get_num_threads())


def pipeline_run(source: str, policy: str, rate: float | None, events: int, workdir: Path,
                 acked: tuple[str, ...] = ()) -> dict[str, Any]:
    """One ``streamflow run``; returns its producer's and scorer's ledgers and the scorer's last telemetry."""
    name = f"{policy}-{'max' if rate is None else int(rate)}"
    run_dir = workdir / name
    command = [sys.executable, "-m", "streamflow.cli.main", "run", "--source", source, "--events", str(events),
               "--rate", "max" if rate is None else str(int(rate)), "--learn", policy, "--run-dir", str(run_dir),
               "--no-monitor", "--no-report"]
    if source != "synthetic":
        command.append("--loop")
    command += acked
    log = workdir / f"{name}.log"
    rng = random.Random()
    for _ in range(BIND_TRIES):  # a port taken between the check and the bind: try other ports
        shutil.rmtree(run_dir, ignore_errors=True)
        with open(log, "w") as out:
            code = subprocess.run(command + ["--base-port", str(_free_ports(5, rng))], stdout=out,
                                  stderr=subprocess.STDOUT, timeout=1800).returncode
        if code == 0 or "address already in use" not in log.read_text():
            break
    if code != 0:
        raise RuntimeError(f"streamflow run exited with {code}; see {log}")
    telemetry = sorted(read_jsonl(run_dir / "telemetry-scorer.jsonl"), key=lambda m: m["time"])
    return {"producer": json.loads((run_dir / "ledger-producer.json").read_text()),
            "scorer": json.loads((run_dir / "ledger-scorer.json").read_text()), "final": telemetry[-1],
            "producer_rate": producer_rate(read_jsonl(run_dir / "telemetry-producer.jsonl"))}


def producer_rate(records: list[dict[str, Any]]) -> float:
    """The producer's events/s from its first report with events sent to its first with all of them sent."""
    records = sorted(records, key=lambda m: m["time"])
    total = max(int(m.get("events") or 0) for m in records)
    first = next(m for m in records if (m.get("events") or 0) > 0)
    done = next(m for m in records if int(m.get("events") or 0) == total)
    return (total - first["events"]) / (done["time"] - first["time"]) if done["time"] > first["time"] else 0.0


def stage(ledger: dict[str, Any], name: str) -> int:
    return int(next(s["events"] for s in ledger["stages"] if s["name"] == name))


def paced(source: str, policy: str, fraction: float | None, cap: Capacity, events: int, workdir: Path,
          acked: tuple[str, ...] = ()) -> Paced:
    target = None if fraction is None else fraction * cap.events_per_s
    run = pipeline_run(source, policy, target, events, workdir, acked)
    producer, scorer, final = run["producer"], run["scorer"], run["final"]
    fractions = [f["learned_fraction"] for f in scorer["learning"]["learners"].values()
                 if f["learned_fraction"] is not None]
    return Paced(policy=policy, rate="max" if fraction is None else f"{fraction:.0%}", target_events_per_s=target,
                 producer_events_per_s=float(run["producer_rate"]),
                 scorer_events_per_s=float(scorer["rate"]), of_capacity=float(scorer["rate"]) / cap.events_per_s,
                 p50_ms=float(final["latency"]["p50_ms"]), p99_ms=float(final["latency"]["p99_ms"]),
                 sent=stage(producer, "sent"), scored=stage(scorer, "scored"),
                 learnt_min=min(fractions, default=None), learnt_max=max(fractions, default=None))


def print_table(cap: Capacity, rows: list[Paced], source: str, events: int, acked: tuple[str, ...] = ()) -> None:
    print(f"score-only capacity of the default menu: {cap.events_per_s:,.0f} events/s "
          f"({cap.frames} frames of {FRAME}, {cap.threads} torch thread(s))")
    print(f"streamflow run{''.join(' ' + a for a in acked)}, {events:,d} events of {Path(source).name} per run, "
          f"frames of {FRAME}:")
    header = (f"{'learn':<7}{'input':>6}{'target/s':>10}{'producer/s':>11}{'scorer/s':>10}{'x cap':>7}"
              f"{'p50 ms':>8}{'p99 ms':>8}{'scored/sent':>20}{'learnt':>11}")
    print(header)
    for r in rows:
        learnt = "-" if r.learnt_min is None else f"{r.learnt_min:.0%}-{r.learnt_max:.0%}"
        target = "-" if r.target_events_per_s is None else f"{r.target_events_per_s:,.0f}"
        print(f"{r.policy:<7}{r.rate:>6}{target:>10}{r.producer_events_per_s:>11,.0f}{r.scorer_events_per_s:>10,.0f}"
              f"{r.of_capacity:>7.2f}{r.p50_ms:>8.0f}{r.p99_ms:>8.0f}{f'{r.scored:,d}/{r.sent:,d}':>20}{learnt:>11}")


def parse_rates(text: str) -> list[float | None]:
    return [None if part == "max" else float(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=None, help="an LHCO features file or synthetic (default: the shared "
                        f"data folder's {FEATURES_FILE}, else synthetic)")
    parser.add_argument("--events", type=int, default=400_000, help="events per pipeline run (default 400,000)")
    parser.add_argument("--rates", default="0.25,0.5,1,1.5,max", help="producer rates: fractions of the "
                        "capacity and/or max (default 0.25,0.5,1,1.5,max)")
    parser.add_argument("--events-per-s", default="", help="also these producer rates in events/s, e.g. 50000 "
                        "(comma-separated; default none)")
    parser.add_argument("--policies", default="budget,all", help="learning policies (default budget,all)")
    parser.add_argument("--warmup-frames", type=int, default=12, help="frames learnt before the capacity "
                        "is measured (default 12)")
    parser.add_argument("--capacity-frames", type=int, default=40, help="frames the capacity is timed on "
                        "(default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="capacity: best of this many passes (default 3)")
    parser.add_argument("--acked", action="store_true", help="streamflow run --acked: acknowledged delivery "
                        "on both hops")
    parser.add_argument("--ack-window", type=int, help="with --acked: streamflow run's --ack-window")
    parser.add_argument("--quick", action="store_true", help="small sizes for a test: 40,000 events a run, "
                        "capacity on 8 frames after 4")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.warmup_frames, args.capacity_frames, args.repeats = 40_000, 4, 8, 1
    if args.ack_window is not None and not args.acked:
        parser.error("--ack-window goes with --acked")
    acked = (("--acked",) if args.acked else ()) + (("--ack-window", str(args.ack_window)) if args.ack_window else ())
    source = args.source or default_source()
    cap = capacity(source, args.warmup_frames, args.capacity_frames, args.repeats)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        for policy in args.policies.split(","):
            for fraction in parse_rates(args.rates):
                rows.append(paced(source, policy, fraction, cap, args.events, Path(tmp), acked))
            for rate in parse_rates(args.events_per_s):
                rows.append(paced(source, policy, None if rate is None else rate / cap.events_per_s, cap,
                                  args.events, Path(tmp), acked))
    print_table(cap, rows, source, args.events, acked)
    if args.json:
        Path(args.json).write_text(json.dumps({"source": source, "events": args.events, "acked": list(acked),
                                               "capacity": asdict(cap),
                                               "runs": [asdict(r) for r in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
