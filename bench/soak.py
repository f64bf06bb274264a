"""Soak: a long stream with the scorer killed (``kill -9``) again and again, resumed each time.

A `streamflow replay` producer sends ``--events`` Gaussian-toy events as fast as
the scorer takes them. A `streamflow consume` scorer (one small autoencoder,
checkpoint every ``--checkpoint-every`` frames) is killed ``--kills`` times at
random moments (``--min-gap`` to ``--max-gap`` seconds after it starts scoring)
and restarted with ``--resume`` each time; the last incarnation runs to the end
of the stream. Then the final ledger must account for every event the producer
sent:

    sent = processed + lost after processing (scored by a killed scorer after its
           last checkpoint: its journal) + lost in flight (queued in the killed
           scorer: the sequence gaps, whole frames of ``--frame-size`` events)

and "unaccounted" -- what is left -- must be zero. Meanwhile the resident memory
(RSS) of the producer and of every scorer incarnation is sampled twice a second;
the report gives each one's RSS a quarter into its life (after imports, JIT
compilation and the first frames) and at its end: growth over a long run shows
in the last incarnation, which runs the longest (its events are in the report).

With ``--acked`` producer and scorer use acknowledged delivery
(streamflow.stream.delivery): the frames a killed scorer held are sent again to
its resumed successor, so "lost in flight" must be zero too, and the report adds
the producer's delivery counts (acknowledged, redelivered) and the redelivered
frames the resumed scorers recognised as handled before (duplicates suppressed).

With ``--sink-kills N`` the scorer's selections go to a `streamflow sink`, killed
with ``kill -9`` N times (midway through N of the scorer's lifetimes) and restarted
each time; the report then reads the selections file: rows, and events selected
more than once (must be 0), and the sink's account of the selections it was sent.

    python -m bench.soak [--events 12000000] [--kills 5] [--sink-kills 2] [--frame-size 1000] [--acked]
                         [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.fuzz import SMALL_SCORER_TOML
from streamflow.stream.selections import read_selections

STREAMFLOW = [sys.executable, "-m", "streamflow.cli.main"]
LONG_LIVED_S = 30.0  # the RSS growth bound applies to processes that lived at least this long


def rss_mb(pid: int) -> float | None:
    """Resident memory of a live process in MB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class MemoryTrace:
    """RSS samples of one process: (seconds since start, MB)."""

    name: str
    samples: list[tuple[float, float]] = field(default_factory=list)

    def summary(self, warmup_fraction: float = 0.25) -> dict[str, float]:
        """RSS at the end of the first ``warmup_fraction`` of the process's life, at its end, and the peak."""
        if not self.samples:
            return {}
        end = self.samples[-1][0]
        warm = next(mb for t, mb in self.samples if t >= warmup_fraction * end)
        last = self.samples[-1][1]
        return {"seconds": round(end, 1), "rss_after_warmup_mb": round(warm, 1), "rss_end_mb": round(last, 1),
                "rss_peak_mb": round(max(mb for _, mb in self.samples), 1), "growth_mb": round(last - warm, 1)}


class MemorySampler(threading.Thread):
    """Samples the RSS of the processes it is given, twice a second, until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.traces: dict[int, tuple[float, MemoryTrace]] = {}
        self.stop = threading.Event()

    def watch(self, pid: int, name: str) -> MemoryTrace:
        trace = MemoryTrace(name)
        self.traces[pid] = (time.monotonic(), trace)
        return trace

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for pid, (start, trace) in list(self.traces.items()):
                mb = rss_mb(pid)
                if mb is not None:
                    trace.samples.append((time.monotonic() - start, mb))


def has_scored(telemetry: Path, pid: int) -> bool:
    """Whether process ``pid`` reported scored events in the scorer's telemetry file."""
    if not telemetry.exists():
        return False
    for line in telemetry.read_text().splitlines():
        try:
            stats = json.loads(line)
        except ValueError:  # a line being written
            continue
        if stats.get("pid") == pid and stats.get("events", 0) > 0:
            return True
    return False


def wait_until(condition, timeout: float, what: str) -> None:  # noqa: ANN001 -- a zero-argument callable
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def soak(events: int, kills: int, frame_size: int, checkpoint_every: int, min_gap: float, max_gap: float,
         run_dir: Path, seed: int, timeout: float, acked: bool = False, sink_kills: int = 0) -> dict:
    rng = random.Random(seed)
    toml = run_dir / "scorer.toml"
    toml.write_text(SMALL_SCORER_TOML)
    endpoint = f"ipc://{run_dir}/data"
    scorer_args = [*STREAMFLOW, "consume", "--config", str(toml), "--endpoint", endpoint, "--run-dir",
                   str(run_dir / "scorer"), "--checkpoint-every", str(checkpoint_every), "--idle-timeout", "120",
                   *(["--acked"] if acked else [])]
    sink_args = [*STREAMFLOW, "sink", "--endpoint", f"ipc://{run_dir}/selections", "--run-dir", str(run_dir / "sink"),
                 "--idle-timeout", "300", *(["--acked"] if acked else [])]
    if sink_kills:
        scorer_args += ["--selections", f"ipc://{run_dir}/selections"]
    sink_rounds = {(i + 1) * kills // (sink_kills + 1) for i in range(sink_kills)}
    logs = run_dir / "logs"
    logs.mkdir()
    sampler = MemorySampler()
    sampler.start()
    processes: list[subprocess.Popen] = []
    deadline = time.monotonic() + timeout

    def launch(args: list[str], name: str) -> tuple[subprocess.Popen, MemoryTrace]:
        log = open(logs / f"{name}.log", "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        processes.append(proc)
        return proc, sampler.watch(proc.pid, name)

    start = time.monotonic()
    try:
        producer, producer_trace = launch(
            [*STREAMFLOW, "replay", "gaussian", "--events", str(events), "--frame-size", str(frame_size),
             "--endpoint", endpoint, "--eos-timeout", "300", *(["--acked"] if acked else [])], "producer")
        incarnations: list[MemoryTrace] = []
        kill_times: list[float] = []
        sink_kill_times: list[float] = []
        sink = launch(sink_args, "sink-0")[0] if sink_kills else None
        for n in range(kills + 1):
            scorer, trace = launch(scorer_args + (["--resume"] if n else []), f"scorer-{n}")
            incarnations.append(trace)
            if n == kills:
                scorer.wait(max(1.0, deadline - time.monotonic()))
                break
            telemetry = run_dir / "scorer" / "telemetry-scorer.jsonl"
            wait_until(lambda: has_scored(telemetry, scorer.pid) or scorer.poll() is not None,  # noqa: B023
                       max(1.0, deadline - time.monotonic()), f"scorer {n} to score")
            gap = rng.uniform(min_gap, max_gap)
            if sink is not None and n in sink_rounds:  # midway through this scorer's life, the sink dies
                time.sleep(gap / 2)
                gap /= 2
                sink.send_signal(signal.SIGKILL)
                sink.wait(10)
                sink_kill_times.append(round(time.monotonic() - start, 1))
                sink = launch(sink_args, f"sink-{len(sink_kill_times)}")[0]
            time.sleep(gap)
            for proc, name in ((producer, "producer"), (scorer, f"scorer-{n}")):
                if proc.poll() is not None:
                    tail = (logs / f"{name}.log").read_text()[-600:]
                    raise RuntimeError(f"{name} ended (exit {proc.returncode}) before kill {n + 1} of {kills}: "
                                       f"use more --events or fewer --kills\n{tail}")
            scorer.send_signal(signal.SIGKILL)
            scorer.wait(10)
            kill_times.append(round(time.monotonic() - start, 1))
        producer.wait(max(1.0, deadline - time.monotonic()))
        if sink is not None:
            sink.wait(max(1.0, deadline - time.monotonic()))
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        sampler.stop.set()
        sampler.join(5)
    seconds = time.monotonic() - start
    if scorer.returncode != 0 or producer.returncode != 0 or (sink is not None and sink.returncode != 0):
        raise RuntimeError(f"scorer exit {scorer.returncode}, producer exit {producer.returncode}, sink exit "
                           f"{sink.returncode if sink else '-'}: see {logs}")

    ledger = json.loads((run_dir / "scorer" / "ledger-scorer.json").read_text())
    account = ledger["streams"]["0"]
    after, in_flight = account["lost_after_processing"], account["lost_in_flight"]
    in_flight_events = frame_size * len(in_flight["frames"])  # whole frames: counted, not inferred
    return {
        **({"sink": sink_figures(run_dir / "sink", sink_kill_times)} if sink_kills else {}),
        "events_sent": account["sent_events"], "frames_sent": account["sent_frames"],
        "events_processed": account["processed_events"],
        "lost_after_processing": {"events": after["events"], "frames": len(after["frames"])},
        "lost_in_flight": {"events": in_flight_events, "frames": len(in_flight["frames"])},
        "unaccounted_events": account["sent_events"] - account["processed_events"] - after["events"]
        - in_flight_events,
        "unaccounted_frames": account["unaccounted_frames"],
        "delivery": ledger.get("delivery"), "acked": acked,
        "duplicates_suppressed_last_scorer": ledger.get("duplicates_suppressed", 0),
        "faults_injected": {"scorer_kill_9": len(kill_times), "at_s": kill_times},
        "seconds": round(seconds, 1), "events_per_s": round(events / seconds),
        "last_scorer_events": next(s["events"] for s in ledger["stages"] if s["name"] == "scored"),
        "memory": {"producer": producer_trace.summary(),
                   **{trace.name: trace.summary() for trace in incarnations}},
    }


def sink_figures(sink_dir: Path, kill_times: list[float]) -> dict:
    """The selections file (rows, events in it more than once) and the last sink's account of what it was sent."""
    selected, _ = read_selections(sink_dir / "selections.h5")
    ids, counts = np.unique(selected.ids, return_counts=True)
    ledger = json.loads((sink_dir / "ledger-sink.json").read_text())
    account = ledger["streams"]["0"]
    return {"rows": len(selected.ids), "events_selected_more_than_once": int(np.sum(counts > 1)),
            "frames_in_file": len(np.unique(selected.seq)), "sent_events": account["sent_events"],
            "lost_in_flight_events": account["lost_in_flight"]["events"],
            "unaccounted_frames": account["unaccounted_frames"],
            "duplicates_suppressed_last_sink": ledger.get("duplicates_suppressed", 0),
            "faults_injected": {"sink_kill_9": len(kill_times), "at_s": kill_times}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=12_000_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--frame-size", type=int, default=1000)
    parser.add_argument("--checkpoint-every", type=int, default=20, metavar="FRAMES")
    parser.add_argument("--min-gap", type=float, default=1.0, help="seconds of scoring before a kill, at least")
    parser.add_argument("--max-gap", type=float, default=3.0, help="seconds of scoring before a kill, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    parser.add_argument("--max-growth-mb", type=float, default=32.0,
                        help="fail if a process that ran 30 s or more grew more than this after its first quarter "
                             "(default 32)")
    parser.add_argument("--acked", action="store_true",
                        help="acknowledged delivery with redelivery between producer and scorer")
    parser.add_argument("--sink-kills", type=int, default=0,
                        help="run a sink for the selections and kill it this many times (at most --kills)")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--run-dir", help="keep the run's files (logs, ledger, checkpoint) here "
                                             "(default: a temporary folder)")
    args = parser.parse_args(argv)
    if not 0 <= args.sink_kills <= args.kills:
        parser.error("--sink-kills must be 0 to --kills (the sink dies during a scorer's life)")
    if args.events % args.frame_size:
        parser.error("--events must be a multiple of --frame-size (frames lost in flight are counted whole)")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir or tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        result = soak(args.events, args.kills, args.frame_size, args.checkpoint_every, args.min_gap, args.max_gap,
                      run_dir, args.seed, args.timeout, args.acked, args.sink_kills)
    after, flight = result["lost_after_processing"], result["lost_in_flight"]
    print(f"sent {result['events_sent']:,d} events ({result['frames_sent']:,d} frames) in {result['seconds']} s; "
          f"faults injected: {result['faults_injected']['scorer_kill_9']} scorer kill -9 "
          f"at {result['faults_injected']['at_s']} s")
    print(f"processed {result['events_processed']:,d}; lost after processing {after['events']:,d} "
          f"({after['frames']} frames); lost in flight {flight['events']:,d} ({flight['frames']} frames); "
          f"unaccounted events {result['unaccounted_events']}, frames {result['unaccounted_frames']}")
    if result["delivery"]:
        d = result["delivery"]
        print(f"acknowledged delivery: {d['acked']:,d} of {d['sent']:,d} frames acknowledged, "
              f"{d['redelivered']:,d} redelivered, {d['receivers_lost']} receivers lost; the last scorer "
              f"suppressed {result['duplicates_suppressed_last_scorer']} duplicates")
    sink = result.get("sink")
    if sink:
        print(f"sink: {sink['faults_injected']['sink_kill_9']} sink kill -9 at {sink['faults_injected']['at_s']} s; "
              f"{sink['rows']:,d} selected events in the file from {sink['frames_in_file']:,d} frames, "
              f"{sink['events_selected_more_than_once']} selected more than once; the scorer sent "
              f"{sink['sent_events']:,d}, lost in flight {sink['lost_in_flight_events']:,d}, unaccounted frames "
              f"{sink['unaccounted_frames']}; the last sink suppressed {sink['duplicates_suppressed_last_sink']} "
              f"redelivered duplicates")
    print(f"the last scorer ({result['memory'][f'scorer-{args.kills}'].get('seconds')} s) scored "
          f"{result['last_scorer_events']:,d} events")
    for name, memory in result["memory"].items():
        print(f"  RSS {name:<10} {memory.get('seconds', 0):>6} s: "
              f"at 1/4 of its life {memory.get('rss_after_warmup_mb')} MB, "
              f"end {memory.get('rss_end_mb')} MB, peak {memory.get('rss_peak_mb')} MB, "
              f"growth {memory.get('growth_mb')} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    accounted = result["unaccounted_events"] == 0 and result["unaccounted_frames"] == 0
    if sink:
        accounted = accounted and sink["events_selected_more_than_once"] == 0 and sink["unaccounted_frames"] == 0
    # Processes killed seconds after start are still importing and compiling in their first quarter:
    # the bound is for those that ran long enough to show a leak.
    grown = {name: m["growth_mb"] for name, m in result["memory"].items()
             if m.get("seconds", 0) >= LONG_LIVED_S and m["growth_mb"] > args.max_growth_mb}
    print("OK: zero unaccounted" if accounted else "FAILED: unaccounted events")
    print(f"OK: no process that ran {LONG_LIVED_S:g} s or more grew more than {args.max_growth_mb:g} MB "
          "after its first quarter" if not grown
          else f"FAILED: RSS grew more than {args.max_growth_mb:g} MB: {grown}")
    return 0 if accounted and not grown else 1


if __name__ == "__main__":
    sys.exit(main())
