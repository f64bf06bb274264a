"""Reconstruction throughput: the reco stage against bare FastJet, 1 vs K workers, RAW frames vs bare pyzmq.

All on the 1,000 events of the shared tiny raw LHCO file, in one run:

0. agreement with the first 1,000 rows of the shared features file, for the default settings
   and two alternatives (the physical, wrapped phi distance; kT axes with FastJet's maximal R
   instead of R = 1.0): worst relative error of mjj and both jet masses, and for tau21 and
   tau32 of both jets the fraction of events within 1e-3 relative and the worst case.
1. library, in this process, best of ``--repeats``, in events per CPU second of this process
   (``time.process_time``: on a machine shared with other jobs, wall time measures their load
   as much as this code; all of this is single-threaded):
   - ``plain fastjet loop``: what a user would write with FastJet's classic interface, and no
     more -- per event, PseudoJets from the particles, anti-kT R=1.0, the jets sorted by pT,
     and for each of the two leading jets its constituents reclustered with kT and the
     1, 2, 3 exclusive subjets (no N-subjettiness sums, no features, no checks);
   - ``reconstruct vectorised``: :func:`streamflow.events.reco.reconstruct`, whole frames per
     FastJet call (ratio to the plain loop);
   - ``reconstruct per-event``: the same with ``vectorised=False`` (the classic interface in a
     Python loop over events and jets; ratio to the vectorised one).
2. pipeline: a raw-frame producer process (``run_replay(raw=True)``, ``--loop`` over the file)
   -> K reco worker processes -> collectors in this process, for K = 1 and K = 2: events/s from
   the first feature frame to the last worker's END_OF_STREAM, best of the repeats, K = 1 and 2
   alternating; and events per CPU second of the workers (what one worker does with a core of
   its own: wall-clock rates on a loaded 2-core machine say more about the load) (ratios: 2 workers to 1, one
   worker to the plain FastJet loop, one worker to the library in this process).
3. transport: RAW frames (ids, counts, pT/eta/phi float64 of the real events) by
   Sender/Receiver vs the same bytes as one buffer per frame by bare pyzmq PUSH/PULL, over tcp
   loopback, receiver timing first to last frame.

The worker arithmetic at the end: workers = rate / (events per CPU second of one worker, wire
included), for the LHC bunch-crossing rate (40 MHz) and a level-1 trigger output rate (100 kHz).

    python -m bench.reco [--events 4000] [--frame-size 250] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from consumers.reco import RecoWorkerConfig, run_reco_worker
from producers.replay import ReplayConfig, run_replay
from streamflow.events.derived import dijet_mass
from streamflow.events.h5table import H5Table, open_hdf5
from streamflow.events.lhco_raw import LHCORawFile
from streamflow.events.particles import ParticleBatch, particle_frames
from streamflow.events.reco import RecoConfig, reconstruct
from streamflow.stream.transport import Receiver, Sender
from streamflow.stream.wire import Kind, encode_raw

RATES = {"40 MHz (bunch crossings)": 40e6, "100 kHz (level-1 output)": 100e3}


def data_file() -> Path:
    folder = os.environ.get("STREAMFLOW_DATA") or str(Path(__file__).resolve().parents[2] / "shared/data/lhco")
    return Path(folder) / "events_anomalydetection_tiny.h5"


def load_events(path: Path) -> ParticleBatch:
    return next(particle_frames(LHCORawFile(H5Table.find(path, open_hdf5(path))), 1000))


def free_port(n: int) -> int:
    """A base port P with P..P+n-1 all free on 127.0.0.1 now (others on the machine bind ports too)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + n >= 65535:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as taken:
                    taken.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no block of free ports")


def plain_fastjet_loop(batch: ParticleBatch) -> None:
    """The FastJet work of the stage as a plain per-event loop, without streamflow's code around it."""
    import fastjet

    antikt = fastjet.JetDefinition(fastjet.antikt_algorithm, 1.0)
    kt = fastjet.JetDefinition(fastjet.kt_algorithm, 1.0)
    px, py = batch.pt * np.cos(batch.phi), batch.pt * np.sin(batch.phi)
    pz, e = batch.pt * np.sinh(batch.eta), batch.pt * np.cosh(batch.eta)
    offsets = batch.offsets
    for i in range(len(batch)):
        particles = [fastjet.PseudoJet(*p) for p in zip(px[offsets[i]:offsets[i + 1]], py[offsets[i]:offsets[i + 1]],
                                                        pz[offsets[i]:offsets[i + 1]], e[offsets[i]:offsets[i + 1]],
                                                        strict=True)]
        sequence = fastjet.ClusterSequence(particles, antikt)
        for jet in fastjet.sorted_by_pt(sequence.inclusive_jets())[:2]:
            subjets = fastjet.ClusterSequence(list(jet.constituents()), kt)
            for n in (1, 2, 3):
                subjets.exclusive_jets_up_to(n)


def agreement(batch: ParticleBatch, features: Path) -> dict[str, dict[str, Any]]:
    """Per setting: worst relative error of mjj, mj1, mj2; (fraction within 1e-3, worst) of the tau ratios."""
    import h5py

    with h5py.File(features, "r") as handle:
        official = handle["df/block0_values"][: len(batch), :14]

    def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a - b) / np.maximum(np.abs(b), 1e-300)

    def mjj(jets: np.ndarray) -> np.ndarray:
        return dijet_mass(jets[:, 0:3], np.clip(jets[:, 3], 0, None), jets[:, 7:10], np.clip(jets[:, 10], 0, None))

    settings = {"default (LHCO settings)": RecoConfig(), "periodic phi": RecoConfig(periodic_phi=True),
                "kT axes R = max": RecoConfig(axes_radius=99.0)}
    table: dict[str, dict[str, Any]] = {}
    for name, config in settings.items():
        jets = reconstruct(batch, config).jets
        row: dict[str, Any] = {"mjj": float(relative(mjj(jets), mjj(official)).max()),
                               "mj1": float(relative(jets[:, 3], np.clip(official[:, 3], 0, None)).max()),
                               "mj2": float(relative(jets[:, 10], np.clip(official[:, 10], 0, None)).max())}
        for jet, tag in ((0, "j1"), (7, "j2")):
            for upper, lower, ratio in ((5, 4, "tau21"), (6, 5, "tau32")):
                r = relative(jets[:, jet + upper] / jets[:, jet + lower],
                             official[:, jet + upper] / official[:, jet + lower])
                row[f"{ratio} {tag}"] = (float((r < 1e-3).mean()), float(r.max()))
        table[name] = row
        taus = ", ".join(f"{k} {v[0]:.1%} (worst {v[1]:.1e})" for k, v in row.items() if isinstance(v, tuple))
        print(f"  {name:<24} mjj {row['mjj']:.1e}, mj1 {row['mj1']:.1e}, mj2 {row['mj2']:.1e}; within 1e-3: {taus}")
    return table


def best_rate(work: Any, n_events: int, repeats: int) -> tuple[float, list[float]]:
    """Events per CPU second of this process: best of ``repeats`` and every run."""
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        runs.append(n_events / (time.process_time() - start))
    return max(runs), runs


class Collector(threading.Thread):
    """Reads one worker's feature frames until END_OF_STREAM; first/last arrival times."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.events, self.first, self.last = endpoint, 0, math.inf, 0.0

    def run(self) -> None:
        ctx = zmq.Context()
        with Receiver(ctx, self.endpoint, name="collector") as receiver:
            while (msg := receiver.recv(timeout_ms=120_000)) is not None:
                self.last = time.perf_counter()
                if msg.kind == Kind.END_OF_STREAM:
                    break
                self.first = min(self.first, self.last)
                self.events += msg.n_events
        ctx.destroy(linger=0)


def _replay(config: ReplayConfig) -> None:
    run_replay(config)


def _worker(config: RecoWorkerConfig) -> None:
    run_reco_worker(config)


def pipeline(path: Path, workers: int, events: int, frame_size: int, run_dir: str) -> dict[str, Any]:
    """Producer -> ``workers`` reco processes -> collectors here: events/s at the collectors."""
    base = free_port(4 + 2 * workers)
    source = f"tcp://127.0.0.1:{base}"
    spawn = mp.get_context("spawn")
    configs = [RecoWorkerConfig(endpoint=source, output=f"tcp://127.0.0.1:{base + 2 + 2 * k}", stream_id=k + 1,
                                name=f"bench-reco-{k}", run_dir=run_dir, hwm=4) for k in range(workers)]
    processes = [spawn.Process(target=_worker, args=(c,)) for c in configs]
    collectors = [Collector(c.output) for c in configs]
    for process, collector in zip(processes, collectors, strict=True):
        process.start()
        collector.start()
    producer = spawn.Process(target=_replay, args=(ReplayConfig(source=str(path), raw=True, loop=True, events=events,
                                                                frame_size=frame_size, endpoint=source, hwm=4,
                                                                eos_timeout=120),))
    producer.start()
    deadline = time.monotonic() + 600
    while producer.is_alive() and time.monotonic() < deadline:  # a worker that failed would leave it blocked
        if any(p.exitcode not in (None, 0) for p in processes):
            break
        producer.join(0.5)
    for process in (producer, *processes):
        process.join(60)
        if process.is_alive():
            process.terminate()
            process.join(10)
    if any(p.exitcode != 0 for p in (producer, *processes)):
        raise RuntimeError(f"pipeline with {workers} workers failed: exit codes "
                           f"{[p.exitcode for p in (producer, *processes)]}")
    for collector in collectors:
        collector.join(60)
    received = sum(c.events for c in collectors)
    seconds = max(c.last for c in collectors) - min(c.first for c in collectors)
    ledgers = [json.loads((Path(run_dir) / f"ledger-{c.name}.json").read_text()) for c in configs]
    cpu_s = sum(ledger["cpu_s"] for ledger in ledgers)
    return {"workers": workers, "events": received, "seconds": seconds, "events_per_s": received / seconds,
            "worker_cpu_s": cpu_s, "events_per_worker_cpu_s": received / cpu_s}


def _send_raw(mode: str, endpoint: str, batch: ParticleBatch, frames: int) -> None:
    ctx = zmq.Context()
    if mode == "streamflow":
        with Sender(ctx, endpoint, hwm=16) as sender:
            for _ in range(frames):
                sender.send_particles(batch)
            sender.end_stream(timeout_s=60)
    else:
        push = ctx.socket(zmq.PUSH)
        push.sndhwm = 16
        push.bind(endpoint)
        payload = b"".join(bytes(memoryview(p)) for p in encode_raw(batch, seq=0, stream_id=0, send_ns=0))
        for _ in range(frames):
            push.send(payload, copy=False)
        push.send(b"")
        push.close(linger=-1)
    ctx.destroy(linger=-1 if mode == "pyzmq" else 0)


def transport(batch: ParticleBatch, frames: int, repeats: int) -> dict[str, Any]:
    """RAW frames by Sender/Receiver vs bare pyzmq, same bytes: best events/s of the repeats."""
    spawn = mp.get_context("spawn")
    best: dict[str, float] = {}
    for _ in range(repeats):
        for mode in ("streamflow", "pyzmq"):
            endpoint = f"tcp://127.0.0.1:{free_port(2)}"
            sender = spawn.Process(target=_send_raw, args=(mode, endpoint, batch, frames))
            sender.start()
            ctx = zmq.Context()
            count, start = 0, 0.0
            if mode == "streamflow":
                with Receiver(ctx, endpoint, name="bench", hwm=16) as receiver:
                    while (msg := receiver.recv(timeout_ms=60_000)) is not None and msg.kind == Kind.RAW:
                        start = start or time.perf_counter()
                        count += 1
                    stop = time.perf_counter()
            else:
                pull = ctx.socket(zmq.PULL)
                pull.rcvhwm = 16
                pull.connect(endpoint)
                while len(pull.recv(copy=False)):
                    start = start or time.perf_counter()
                    count += 1
                stop = time.perf_counter()
                pull.close(linger=0)
            ctx.destroy(linger=0)
            sender.join(60)
            rate = (count - 1) * len(batch) / (stop - start)  # first to last frame
            best[mode] = max(best.get(mode, 0.0), rate)
    nbytes = sum(memoryview(p).nbytes for p in encode_raw(batch, seq=0, stream_id=0, send_ns=0))
    return {"frame_events": len(batch), "frame_bytes": nbytes, **{f"{m}_events_per_s": r for m, r in best.items()},
            "ratio": best["streamflow"] / best["pyzmq"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=4000, help="events through the pipeline runs (default 4000)")
    parser.add_argument("--frame-size", type=int, default=250, help="events per raw frame (default 250)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each library and transport figure")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    path = data_file()
    batch = load_events(path)
    n = len(batch)
    print(f"{n} events of {path.name}: {int(batch.counts.sum()):,d} particles ({batch.counts.mean():.0f} per event); "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    reconstruct(batch.take(np.arange(10)))  # warm-up: imports, the FastJet banner
    agreed = agreement(batch, path.parent / "lhco_rnd_first60k.features.h5")
    library = {}
    for name, work in (("plain fastjet loop", lambda: plain_fastjet_loop(batch)),
                       ("reconstruct vectorised", lambda: reconstruct(batch)),
                       ("reconstruct per-event", lambda: reconstruct(batch, RecoConfig(vectorised=False)))):
        library[name], runs = best_rate(work, n, args.repeats)
        print(f"  {name:<24}{library[name]:>10,.0f} events/CPU-s   (runs: {', '.join(f'{r:,.0f}' for r in runs)})")
    vectorised = library["reconstruct vectorised"]
    print(f"  reconstruct vectorised / plain fastjet loop: {vectorised / library['plain fastjet loop']:.2f}; "
          f"per-event / vectorised: {library['reconstruct per-event'] / vectorised:.2f}")
    run_dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench-reco-{os.getpid()}")
    runs_by_k: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(args.repeats):  # alternating, so that load from others hits both alike
        for workers in runs_by_k:
            runs_by_k[workers].append(pipeline(path, workers, args.events, args.frame_size, run_dir))
    with_workers = [max(runs, key=lambda r: r["events_per_s"]) for runs in runs_by_k.values()]
    for workers, result in zip(runs_by_k, with_workers, strict=True):
        rates = ", ".join(f"{r['events_per_s']:,.0f}" for r in runs_by_k[workers])
        print(f"  pipeline, {workers} worker(s): {result['events_per_s']:>10,.0f} events/s, best of "
              f"{args.repeats} (runs: {rates}); {result['events_per_worker_cpu_s']:,.0f} events per worker CPU-s")
    one, two = (w["events_per_s"] for w in with_workers)
    per_core = with_workers[0]["events_per_worker_cpu_s"]
    print(f"  2 workers / 1 worker (wall clock): {two / one:.2f}; per CPU second, 1 worker / plain fastjet loop: "
          f"{per_core / library['plain fastjet loop']:.2f}, 1 worker / library vectorised: {per_core / vectorised:.2f}")
    wire = transport(batch.take(np.arange(args.frame_size)), max(20, 20_000 // args.frame_size), args.repeats)
    print(f"  RAW frames of {wire['frame_events']} events ({wire['frame_bytes'] / 1e6:.2f} MB): streamflow "
          f"{wire['streamflow_events_per_s']:,.0f} events/s, bare pyzmq {wire['pyzmq_events_per_s']:,.0f} events/s, "
          f"ratio {wire['ratio']:.2f}")
    arithmetic = {name: math.ceil(rate / per_core) for name, rate in RATES.items()}
    for name, count in arithmetic.items():
        print(f"  workers (one core each) for {name} at {per_core:,.0f} events per worker CPU-s: {count:,d}")
    if args.json:
        figures = {"agreement": agreed, "library": library, "pipeline": with_workers, "transport": wire,
                   "workers_needed": arithmetic}
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
