"""Transport throughput: streamflow frames vs bare pyzmq PUSH/PULL, same bytes, same run.

For each transport (tcp loopback, ipc) and frame size, two separate processes
move the same payload -- ids uint64[n] + features float32[n, 16] per frame:

- ``streamflow``: a :class:`~streamflow.stream.transport.Sender` encodes DATA frames
  (header + meta, ids, features: three parts, zero-copy) and ends with the
  END_OF_STREAM handshake; a :class:`~streamflow.stream.transport.Receiver` decodes each
  frame into numpy views (and does nothing else).
- ``acked``: the same frames by acknowledged delivery
  (:class:`~streamflow.stream.acked_transport.AckedSender` ROUTER, credit window
  :data:`~streamflow.stream.delivery.DEFAULT_WINDOW` frames, every frame kept until
  acknowledged; :class:`~streamflow.stream.acked_transport.AckedReceiver` DEALER
  acknowledging each frame as it is decoded).
- ``pyzmq``: a bare PUSH sends one zero-copy buffer of the same size per frame; a
  bare PULL receives it without copying; an empty message ends the run.

Both use the same high-water mark. The receiver times from its first to its last
frame, so connection set-up is excluded. Runs alternate between the two modes; on
a shared machine the best of ``--repeats`` is the least disturbed, so the table
shows the best runs and their ratio streamflow / pyzmq, and the ratio of medians, and the
acknowledged path against the PUSH path (acked / streamflow, best and medians).

    python -m bench.transport [--events N] [--repeats R] [--frame-sizes 1024 4096 16384] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

import numpy as np
import zmq

from streamflow.events.batch import EventBatch
from streamflow.stream.acked_transport import AckedReceiver, AckedSender
from streamflow.stream.transport import DEFAULT_HWM, Receiver, Sender
from streamflow.stream.wire import Kind

N_FEATURES = 16
MODES = ("streamflow", "acked", "pyzmq")


@dataclass(frozen=True)
class Result:
    transport: str
    frame_size: int
    mode: str
    events_per_s: float  # best of the repeats: the least disturbed by other load on the machine
    median_events_per_s: float
    gb_per_s: float  # of the best run
    runs: list[float]  # events/s of each repeat


def payload_bytes(n: int) -> int:
    """Bytes of one frame's arrays: ids (8 B) + features (4 B x 16) per event."""
    return n * (8 + 4 * N_FEATURES)


def make_batch(n: int) -> EventBatch:
    rng = np.random.default_rng(0)
    return EventBatch(ids=np.arange(n, dtype=np.uint64),
                      features=rng.normal(size=(n, N_FEATURES)).astype(np.float32),
                      names=tuple(f"x{i}" for i in range(N_FEATURES)))


def produce(mode: str, endpoint: str, n: int, frames: int) -> None:
    ctx = zmq.Context()
    batch = make_batch(n)
    if mode == "streamflow":
        with Sender(ctx, endpoint, hwm=DEFAULT_HWM) as sender:
            for _ in range(frames):
                sender.send_batch(batch)
            sender.end_stream(timeout_s=30)
    elif mode == "acked":
        with AckedSender(ctx, endpoint) as acked:
            for _ in range(frames):
                acked.send_batch(batch)
            acked.end_stream(timeout_s=30)
    else:
        push = ctx.socket(zmq.PUSH)
        push.sndhwm = DEFAULT_HWM
        push.bind(endpoint)
        buffer = batch.ids.tobytes() + batch.features.tobytes()
        for _ in range(frames):
            push.send(buffer, copy=False)
        push.send(b"")
        push.close(linger=-1)
    ctx.term()


def consume(mode: str, endpoint: str, out: Connection) -> None:
    """Receive until the end of the run; send back (frames, seconds from first to last frame)."""
    ctx = zmq.Context()
    frames, first, last = 0, 0.0, 0.0
    if mode == "streamflow":
        with Receiver(ctx, endpoint, name="bench", hwm=DEFAULT_HWM) as receiver:
            while receiver.recv().kind != Kind.END_OF_STREAM:
                last = time.perf_counter()
                first = first or last
                frames += 1
    elif mode == "acked":
        with AckedReceiver(ctx, endpoint, name="bench") as acked:
            while (msg := acked.recv()) is not None and msg.kind != Kind.END_OF_STREAM:
                acked.acknowledge(msg.stream_id, msg.seq)
                last = time.perf_counter()
                first = first or last
                frames += 1
    else:
        pull = ctx.socket(zmq.PULL)
        pull.rcvhwm = DEFAULT_HWM
        pull.connect(endpoint)
        while len(pull.recv(copy=False)):
            last = time.perf_counter()
            first = first or last
            frames += 1
        pull.close()
    ctx.term()
    out.send((frames, last - first))


def free_tcp_endpoint() -> str:
    """A loopback endpoint whose port and port + 1 (the control socket) are free."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65535:
            with socket.socket() as control:
                try:
                    control.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return f"tcp://127.0.0.1:{port}"


def measure(mode: str, transport: str, n: int, frames: int, tmp: str) -> float:
    """Events/s from the consumer's first to its last frame, in fresh processes."""
    endpoint = free_tcp_endpoint() if transport == "tcp" else f"ipc://{tmp}/{mode}-{n}.sock"
    fork = mp.get_context("fork")
    reader, writer = fork.Pipe(duplex=False)
    consumer = fork.Process(target=consume, args=(mode, endpoint, writer))
    producer = fork.Process(target=produce, args=(mode, endpoint, n, frames))
    consumer.start()
    producer.start()
    if not reader.poll(120):
        consumer.kill()
        producer.kill()
        raise RuntimeError(f"{mode} over {transport} with {n}-event frames did not finish")
    got, seconds = reader.recv()
    producer.join(30)
    consumer.join(30)
    if got != frames or producer.exitcode != 0:
        raise RuntimeError(f"{mode}: received {got} of {frames} frames, producer exit {producer.exitcode}")
    return (frames - 1) * n / seconds


def run(events: int, frame_sizes: list[int], transports: list[str], repeats: int) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="sfbench") as tmp:
        for transport in transports:
            for n in frame_sizes:
                frames = max(events // n, 10)
                runs: dict[str, list[float]] = {mode: [] for mode in MODES}
                for _ in range(repeats):
                    for mode in MODES:  # alternate, so both modes see the same machine load
                        runs[mode].append(measure(mode, transport, n, frames, tmp))
                for mode in MODES:
                    best = max(runs[mode])
                    results.append(Result(transport, n, mode, best, statistics.median(runs[mode]),
                                          best * payload_bytes(1) / 1e9, runs[mode]))
    return results


def table(results: list[Result]) -> str:
    """A Markdown table: one row per transport and frame size, both modes and their ratio."""
    rows = ["| transport | frame (events) | streamflow Mev/s | GB/s | bare pyzmq Mev/s | GB/s | ratio | "
            "ratio of medians | acked Mev/s | acked / PUSH | of medians |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_key = {(r.transport, r.frame_size, r.mode): r for r in results}
    for transport, n in dict.fromkeys((r.transport, r.frame_size) for r in results):
        sf, bare, acked = (by_key[transport, n, mode] for mode in ("streamflow", "pyzmq", "acked"))
        rows.append(f"| {transport} | {n} | {sf.events_per_s / 1e6:.1f} | {sf.gb_per_s:.2f} | "
                    f"{bare.events_per_s / 1e6:.1f} | {bare.gb_per_s:.2f} | "
                    f"{sf.events_per_s / bare.events_per_s:.2f} | "
                    f"{sf.median_events_per_s / bare.median_events_per_s:.2f} | {acked.events_per_s / 1e6:.1f} | "
                    f"{acked.events_per_s / sf.events_per_s:.2f} | "
                    f"{acked.median_events_per_s / sf.median_events_per_s:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transport", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events per run (default 10M)")
    parser.add_argument("--frame-sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--transports", nargs="+", choices=["tcp", "ipc"], default=["tcp", "ipc"])
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs per mode (default 5); the best is reported, and the median ratio")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    results = run(args.events, args.frame_sizes, args.transports, args.repeats)
    machine = (f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
               f"Python {platform.python_version()}, pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}")
    print(f"transport throughput, {N_FEATURES} float32 features + uint64 id per event, best of "
          f"{args.repeats}, {machine}")
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "events_per_run": args.events, "hwm_frames": DEFAULT_HWM,
                       "results": [asdict(r) for r in results]}, f, indent=2)


if __name__ == "__main__":
    main()
