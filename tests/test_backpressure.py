"""Back-pressure: a slow receiver makes the producer wait, never queue without bound.

PUSH blocks at its high-water mark, so a producer replaying "as fast as possible"
to a receiver that needs 20 ms per frame runs at the receiver's pace: its rate
drops to about one frame per 20 ms, the time it spent blocked is reported, and its
memory stays flat while the stream is many times larger than the queues.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import zmq

from streamflow.stream.transport import Receiver
from streamflow.stream.wire import Kind
from tests.helpers import REPO, STREAMFLOW, free_port_block

FRAME = 4096
FRAMES = 150
SECONDS_PER_FRAME = 0.02
HWM = 4
KERNEL_BUFFER = 256 * 1024  # bytes: with the high-water marks, a few frames of 4096 x 16 floats in flight


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


def test_a_slow_receiver_slows_the_producer_and_its_memory_stays_flat() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    producer = subprocess.Popen(
        [*STREAMFLOW, "replay", "synthetic", "--events", str(FRAME * FRAMES), "--frame-size", str(FRAME),
         "--endpoint", endpoint, "--hwm", str(HWM), "--kernel-buffer", str(KERNEL_BUFFER), "--eos-timeout", "60"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    ctx = zmq.Context()
    rss: list[float] = []
    try:
        receiver = Receiver(ctx, endpoint, name="slow", hwm=HWM, kernel_buffer=KERNEL_BUFFER)
        frames, start = 0, None
        while True:
            msg = receiver.recv(timeout_ms=60_000)
            assert msg is not None, "no frame for 60 s"
            if msg.kind == Kind.END_OF_STREAM:
                break
            start = start or time.monotonic()
            frames += 1
            time.sleep(SECONDS_PER_FRAME)  # the slow consumer
            if frames % 10 == 0 and producer.poll() is None:
                rss.append(rss_mb(producer.pid))
        elapsed = time.monotonic() - start
        out, err = producer.communicate(timeout=60)
        receiver.close()
    finally:
        producer.kill()
        ctx.destroy(linger=0)
    assert producer.returncode == 0, err
    assert frames == FRAMES and receiver.rejected == 0
    assert elapsed >= FRAMES * SECONDS_PER_FRAME
    summary = re.search(r"\(([\d,]+) events/s, ([\d.]+) s blocked on receivers\)", out)
    assert summary, out
    rate, blocked = float(summary.group(1).replace(",", "")), float(summary.group(2))
    # The producer ran at the receiver's pace (at most 1/20 ms of frames plus what the queues absorb) ...
    assert rate < FRAME / SECONDS_PER_FRAME * 1.5, out
    # ... and spent most of the stream waiting for it.
    assert blocked > 0.6 * FRAMES * SECONDS_PER_FRAME, out
    # Memory: flat after the first frames (a generator, bounded queues): well under one MB per ten frames.
    assert len(rss) >= 5, rss
    assert max(rss[1:]) - rss[1] < 20, f"producer RSS grew {rss}"
