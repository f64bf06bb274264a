"""Fuzz: malformed messages against the decoder and against a live scorer process.

Two stages, one set of malformed messages (each made from a valid DATA frame by
one of :data:`MUTATIONS`: random bytes, truncated/dropped/extra parts, a wrong
magic, version, kind, dtype or flags, a huge declared event or feature count,
a size that disagrees with its count, broken meta JSON):

1. decoder: every message goes through :func:`streamflow.stream.wire.decode`; it must
   raise WireError, never anything else (a "crash"). A mutation that happens to
   leave a valid message is counted apart and not used further.
2. scorer loop: a bare sender (the producer's sockets) sends the rejected
   messages to a real ``streamflow consume`` process (over ipc), interleaved with
   valid frames, then ends the stream. The scorer must exit cleanly and its
   ledger must count every malformed message as rejected and every valid event
   as processed.

    python -m bench.fuzz [--messages 100000] [--valid-every 100] [--frame-size 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq

from streamflow.errors import WireError
from streamflow.events import GaussianToy
from streamflow.events.batch import EventBatch
from streamflow.stream.transport import Sender
from streamflow.stream.wire import HEADER, decode, encode_data

SMALL_SCORER_TOML = """
[scorer]
device = "cpu"
threads = 1

[[scorer.learners]]
kind = "autoencoder"
name = "ae"
features = ["x0", "x1"]
hidden = [8]
warmup_events = 1000
batch_size = 512

[[scorer.lines]]
name = "ae"
learner = "ae"
accept = 0.05
window = 5000
"""
"""A one-learner scorer (a small autoencoder on the Gaussian toy): fast on a CPU, for fault runs."""

# Header field offsets (see streamflow.stream.wire.HEADER: "<4sHBBHIQQIIQI").
_VERSION, _KIND, _DTYPE, _FLAGS, _N, _F, _META_LEN = 4, 6, 7, 8, 30, 34, 46

Parts = list[bytes]


def _patch(parts: Parts, offset: int, fmt: str, value: int) -> Parts:
    head = bytearray(parts[0])
    struct.pack_into(fmt, head, offset, value)
    return [bytes(head), *parts[1:]]


def _random_bytes(rng: np.random.Generator, parts: Parts) -> Parts:
    return [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 5)))]


def _truncated_part(rng: np.random.Generator, parts: Parts) -> Parts:
    i = int(rng.integers(0, len(parts)))
    return [*parts[:i], parts[i][: int(rng.integers(0, len(parts[i])))], *parts[i + 1:]]


def _dropped_part(rng: np.random.Generator, parts: Parts) -> Parts:
    i = int(rng.integers(0, len(parts)))
    return parts[:i] + parts[i + 1:]


def _extra_part(rng: np.random.Generator, parts: Parts) -> Parts:
    return [*parts, rng.bytes(int(rng.integers(0, 64)))]


def _bad_magic(rng: np.random.Generator, parts: Parts) -> Parts:
    return [rng.bytes(4) + parts[0][4:], *parts[1:]]


def _wrong_version(rng: np.random.Generator, parts: Parts) -> Parts:
    return _patch(parts, _VERSION, "<H", int(rng.integers(2, 2**16)))


def _wrong_kind(rng: np.random.Generator, parts: Parts) -> Parts:
    return _patch(parts, _KIND, "<B", int(rng.choice([0, *range(2, 256)])))


def _wrong_dtype(rng: np.random.Generator, parts: Parts) -> Parts:
    return _patch(parts, _DTYPE, "<B", int(rng.choice([0, *range(2, 256)])))


def _wrong_flags(rng: np.random.Generator, parts: Parts) -> Parts:
    return _patch(parts, _FLAGS, "<H", int(rng.integers(2, 2**16)))


def _huge_count(rng: np.random.Generator, parts: Parts) -> Parts:
    field = _N if rng.random() < 0.5 else _F
    return _patch(parts, field, "<I", int(rng.integers(2**20, 2**32)))


def _count_off_by_some(rng: np.random.Generator, parts: Parts) -> Parts:
    (n,) = struct.unpack_from("<I", parts[0], _N)
    deltas = [1, 2, 1000] + ([-2, -1] if n >= 2 else [])
    return _patch(parts, _N, "<I", n + int(rng.choice(deltas)))


def _broken_meta(rng: np.random.Generator, parts: Parts) -> Parts:
    meta = rng.choice([b"{", b"\xff\xfe", b"[]", b'{"names": 7}', b"[" * 5000, b'{"names": ["x0"]}'])
    head = bytearray(parts[0][: HEADER.size])
    struct.pack_into("<I", head, _META_LEN, len(meta))
    return [bytes(head) + meta, *parts[1:]]


MUTATIONS: dict[str, Callable[[np.random.Generator, Parts], Parts]] = {
    "random bytes": _random_bytes, "truncated part": _truncated_part, "dropped part": _dropped_part,
    "extra part": _extra_part, "bad magic": _bad_magic, "wrong version": _wrong_version,
    "wrong kind": _wrong_kind, "wrong dtype": _wrong_dtype, "unknown flags": _wrong_flags,
    "huge declared count": _huge_count, "count off by some": _count_off_by_some, "broken meta": _broken_meta,
}


def valid_frame(batch: EventBatch, seq: int = 0) -> Parts:
    return [bytes(memoryview(p).cast("B")) for p in encode_data(batch, seq=seq, stream_id=0, send_ns=time.time_ns())]


def malformed(rng: np.random.Generator, base: Parts) -> tuple[str, Parts]:
    """One mutation of ``base``, chosen at random: (its name, the message's parts)."""
    name = list(MUTATIONS)[int(rng.integers(0, len(MUTATIONS)))]
    return name, MUTATIONS[name](rng, base)


def decoder_stage(messages: int, seed: int) -> tuple[dict, list[tuple[str, Parts]]]:
    """Decode ``messages`` malformed messages; the figures and the ones rejected (to send on)."""
    rng = np.random.default_rng(seed)
    bases = [valid_frame(batch) for batch in (
        EventBatch(np.arange(n, dtype=np.uint64), rng.normal(size=(n, 3)).astype(np.float32), ("x0", "x1", "sample"),
                   labels=np.zeros(n, np.int8) if n % 2 else None) for n in (1, 7, 64))]
    kinds, crashes, still_valid = Counter(), Counter(), 0
    rejected: list[tuple[str, Parts]] = []
    start = time.perf_counter()
    for i in range(messages):
        name, parts = malformed(rng, bases[i % len(bases)])
        kinds[name] += 1
        try:
            decode(parts)
            still_valid += 1
        except WireError:
            rejected.append((name, parts))
        except Exception as exc:  # noqa: BLE001 -- anything but WireError is the failure this stage looks for
            crashes[f"{name}: {type(exc).__name__}"] += 1
    seconds = time.perf_counter() - start
    return {"messages": messages, "rejected": len(rejected), "crashes": dict(crashes), "still_valid": still_valid,
            "seconds": round(seconds, 2), "per_kind": dict(kinds)}, rejected


def _send_raw(sender: Sender, parts: Parts, deadline: float) -> None:
    """Send one message on the sender's data socket as is (not counted as a frame), blocking at the HWM."""
    while True:
        try:
            sender.data.send_multipart(parts)
            return
        except zmq.Again:
            if time.monotonic() > deadline:
                raise TimeoutError("the scorer stopped taking messages") from None


def scorer_stage(garbage: list[tuple[str, Parts]], valid_every: int, frame_size: int, run_dir: Path,
                 timeout: float = 600) -> dict:
    """Send ``garbage`` and valid frames (one per ``valid_every``) to a `streamflow consume` process."""
    toml = run_dir / "scorer.toml"
    toml.write_text(SMALL_SCORER_TOML)
    ctx = zmq.Context()
    deadline = time.monotonic() + timeout
    sender = Sender(ctx, f"ipc://{run_dir}/data", hwm=64)
    scorer = subprocess.Popen(
        [sys.executable, "-m", "streamflow.cli.main", "consume", "--config", str(toml), "--endpoint", sender.endpoint,
         "--run-dir", str(run_dir), "--idle-timeout", str(timeout), "--checkpoint-every", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        frames = GaussianToy(seed=1).chunks(frame_size)
        start = time.perf_counter()
        for i, (_, parts) in enumerate(garbage):
            if i % valid_every == 0:
                sender.send_batch(next(frames))
            _send_raw(sender, parts, deadline)
        eos = sender.end_stream(timeout_s=max(1.0, deadline - time.monotonic()))
        seconds = time.perf_counter() - start
        out, err = scorer.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if scorer.poll() is None:
            scorer.kill()
            scorer.wait(10)
        sender.close()
        ctx.destroy(linger=0)
    ledger = json.loads((run_dir / "ledger-scorer.json").read_text())
    account = ledger["streams"]["0"]
    return {"exit_code": scorer.returncode, "stderr": err.strip()[-500:], "garbage_sent": len(garbage),
            "rejected_counted": ledger["rejected"], "valid_frames_sent": sender.frames,
            "valid_events_sent": sender.events, "events_processed": account["processed_events"],
            "unaccounted_frames": account["unaccounted_frames"], "acked_events": eos.acked_events,
            "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="malformed messages (default 100000)")
    parser.add_argument("--valid-every", type=int, default=100, help="a valid frame per this many malformed ones")
    parser.add_argument("--frame-size", type=int, default=500, help="events per valid frame (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    decoder, garbage = decoder_stage(args.messages, args.seed)
    print(f"decoder: {decoder['messages']:,d} malformed messages in {decoder['seconds']} s: "
          f"{decoder['rejected']:,d} rejected (WireError), {sum(decoder['crashes'].values())} crashes, "
          f"{decoder['still_valid']} still valid after mutation")
    print("  per mutation: " + ", ".join(f"{k} {v:,d}" for k, v in sorted(decoder["per_kind"].items())))
    with tempfile.TemporaryDirectory() as tmp:
        scorer = scorer_stage(garbage, args.valid_every, args.frame_size, Path(tmp))
    print(f"scorer: exit {scorer['exit_code']}; {scorer['garbage_sent']:,d} malformed sent, "
          f"{scorer['rejected_counted']:,d} counted rejected; {scorer['valid_events_sent']:,d} valid events "
          f"in {scorer['valid_frames_sent']:,d} frames sent, {scorer['events_processed']:,d} processed; "
          f"unaccounted frames {scorer['unaccounted_frames']}; {scorer['seconds']} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"decoder": decoder, "scorer": scorer}, indent=2) + "\n")
    ok = (not decoder["crashes"] and scorer["exit_code"] == 0
          and scorer["rejected_counted"] == scorer["garbage_sent"]
          and scorer["events_processed"] == scorer["valid_events_sent"] and scorer["unaccounted_frames"] == 0)
    print("OK: no crash, every message counted" if ok else "FAILED", file=sys.stderr if not ok else sys.stdout)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
