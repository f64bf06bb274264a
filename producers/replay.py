"""The replay producer: an event source -> exact-size, paced DATA frames on a PUSH socket.

It opens the source (an LHCO file, "synthetic" or "gaussian"), cuts it into
frames of ``frame_size`` events, paces them to ``rate`` events/s (or as fast as
the receivers take them), stamps each with its sequence number and send time,
and sends them blocking at the high-water mark, so nothing is dropped. At the end
(or when ``stop_event`` is set) it runs the END_OF_STREAM handshake, so that every
receiver knows the stream is complete and the producer knows they have it all.

With ``raw`` it sends a raw LHCO file's particle events as RAW frames (ragged,
float64, zero padding dropped) for reconstruction workers (consumers/reco.py). A
file that turns out truncated or damaged part-way ends the stream cleanly at the
last good frame (every receiver accounts for what was sent), then raises its
SourceError.

With ``acked`` the stream uses acknowledged delivery instead of PUSH
(streamflow.stream.acked_transport): every frame is kept until a receiver
acknowledges it, and the frames of a receiver that dies (or never acknowledges) are
sent again to another one, or to the same scorer restarted with ``--resume``.
The receivers must be started with ``--acked`` too.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from streamflow.errors import ConfigError, SourceError
from streamflow.events import open_source
from streamflow.events.chunking import first_events
from streamflow.events.lhco_features import LHCOFeaturesFile
from streamflow.events.particles import particle_frames
from streamflow.events.sources import open_file
from streamflow.stream.acked_transport import AckedSender
from streamflow.stream.delivery import DeliveryConfig, DeliveryCounts
from streamflow.stream.pacing import TokenBucket, check_frame_size
from streamflow.stream.transport import (
    DEFAULT_ENDPOINT,
    DEFAULT_HWM,
    Curve,
    EndOfStream,
    Sender,
    check_endpoint,
    check_queue_options,
    check_stream_id,
)


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay and how; a ``[replay]`` TOML table maps onto it (see streamflow.config).

    source: an LHCO features or raw file, "synthetic" or "gaussian" (streamflow.events.open_source).
    rate: events/s, None for as fast as the receivers take them.
    frame_size: events per frame, 1 to ``MAX_FRAME_EVENTS`` (1,048,576).
    events: stop after this many events (None: the whole source once; forever for
    a generator, or for a file with ``loop``); streamed, so any number.
    loop: replay a file again and again (ids continue: pass p, row r -> p * n_rows + r).
    curve: CURVE-secure the sockets, admitting only authorised receivers (None: plain sockets).
    receivers: before the first frame, wait up to ``eos_timeout`` seconds for this many
    receivers to say HELLO (0: send as soon as any receiver takes a frame).
    raw: send a raw LHCO file's particle events as RAW frames (the file as it is: no
    signal_fraction; frames end at the end of each pass).
    delivery: acknowledged delivery with these bounds (window, buffer, timeouts) instead of
    PUSH (None); hwm and kernel_buffer then do not apply.
    """

    source: str = "synthetic"
    rate: float | None = None
    frame_size: int = 4096
    signal_fraction: float | None = None
    events: int | None = None
    loop: bool = False
    seed: int = 0
    endpoint: str = DEFAULT_ENDPOINT
    stream_id: int = 0
    eos_timeout: float = 10.0
    hwm: int = DEFAULT_HWM
    kernel_buffer: int = 0  # bytes of OS socket buffer (0: OS default; tcp's megabytes add queued frames)
    curve: Curve | None = None
    receivers: int = 0
    raw: bool = False
    delivery: DeliveryConfig | None = None

    def __post_init__(self) -> None:
        check_frame_size(self.frame_size)
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ConfigError(f"rate must be a positive number of events/s, got {self.rate}")
        if self.signal_fraction is not None and not 0 <= self.signal_fraction <= 1:
            raise ConfigError(f"signal fraction must be in [0, 1], got {self.signal_fraction}")
        if self.events is not None and self.events < 1:
            raise ConfigError(f"events must be at least 1, got {self.events}")
        check_stream_id(self.stream_id)
        if not self.eos_timeout > 0:
            raise ConfigError(f"END_OF_STREAM timeout must be positive seconds, got {self.eos_timeout}")
        check_queue_options(self.hwm, self.kernel_buffer)
        if self.curve is not None and not self.curve.is_server:
            raise ConfigError("the producer binds: its CURVE config needs an authorised-keys folder")
        check_endpoint(self.endpoint)
        if self.receivers < 0:
            raise ConfigError(f"receivers to wait for must be >= 0, got {self.receivers}")
        if self.raw and self.source in ("synthetic", "gaussian"):
            raise ConfigError(f"raw frames need a raw LHCO file as the source, not {self.source!r}")
        if self.raw and self.signal_fraction is not None:
            raise ConfigError("raw frames replay the file as it is: signal_fraction does not apply")


@dataclass(frozen=True)
class ReplayStats:
    """What a replay did.

    wait_s: waiting for a receiver to take the first frame; seconds: sending the
    frames, wait_s excluded; blocked_s: of those seconds, blocked on full queues
    (back-pressure); paced_s: sleeping to hold the rate; stopped: ended early by
    ``stop_event``; eos: the END_OF_STREAM handshake (who acknowledged what).
    """

    events: int
    frames: int
    wait_s: float
    seconds: float
    blocked_s: float
    paced_s: float
    stopped: bool
    eos: EndOfStream
    delivery: DeliveryCounts | None = None
    """Acknowledged delivery's counts (acknowledged, redelivered, bad acknowledgements); None for PUSH."""

    @property
    def rate(self) -> float:
        """Events per second while streaming."""
        return self.events / self.seconds if self.seconds > 0 else math.inf


def run_replay(config: ReplayConfig, stop_event: threading.Event | None = None,
               progress: Callable[[int, int, bool], None] | None = None) -> ReplayStats:
    """Replay ``config.source`` to ``config.endpoint``.

    ``progress(events, frames, sent_all)`` runs after each frame (``sent_all`` False)
    and once more when the last frame is out, before the END_OF_STREAM handshake
    (``sent_all`` True): the receivers may still be working through their queues.
    """
    if config.raw:
        raw = open_file(Path(config.source), features="raw")
        assert not isinstance(raw, LHCOFeaturesFile)
        outgoing: Iterator[Any] = particle_frames(raw, config.frame_size, loop=config.loop, max_events=config.events)
    else:
        options = {"loop": True} if config.loop else {}  # files only: a generator is endless anyway
        source = open_source(config.source, signal_fraction=config.signal_fraction, seed=config.seed, **options)
        outgoing = first_events(source.chunks(config.frame_size), config.events)
    pacer = TokenBucket(config.rate, sleep=stop_event.wait if stop_event else time.sleep)
    ctx = zmq.Context()
    try:
        sender: Sender | AckedSender
        if config.delivery is not None:
            sender = AckedSender(ctx, config.endpoint, stream_id=config.stream_id, delivery=config.delivery,
                                 curve=config.curve)
        else:
            sender = Sender(ctx, config.endpoint, stream_id=config.stream_id, hwm=config.hwm,
                            kernel_buffer=config.kernel_buffer, curve=config.curve)
        with sender:
            sender.wait_for_receivers(config.receivers, config.eos_timeout, stop_event)
            start = time.perf_counter()
            wait_s = paced_s = 0.0
            stopped = False
            send = sender.send_particles if config.raw else sender.send_batch
            failure: SourceError | None = None
            try:
                for frame in outgoing:
                    paced_s += pacer.acquire(len(frame))
                    stopped = stop_event is not None and stop_event.is_set()
                    if stopped or not send(frame, stop_event):
                        stopped = True
                        break
                    if sender.frames == 1:
                        wait_s = sender.blocked_s  # no receiver yet: PUSH holds the first frame
                    if progress is not None:
                        progress(sender.events, sender.frames, False)
            except SourceError as exc:  # damaged part-way: end the stream cleanly at the last good frame
                failure = exc
            if progress is not None:
                progress(sender.events, sender.frames, True)
            seconds = time.perf_counter() - start - wait_s
            eos = sender.end_stream(config.eos_timeout, stop_event=stop_event)
            if failure is not None:
                raise SourceError(f"{failure} (stream ended after {sender.events:,d} events in "
                                  f"{sender.frames:,d} frames)")
            return ReplayStats(events=sender.events, frames=sender.frames, wait_s=wait_s,
                               seconds=seconds, blocked_s=sender.blocked_s - wait_s,
                               paced_s=paced_s, stopped=stopped, eos=eos,
                               delivery=sender.dispatcher.counts if isinstance(sender, AckedSender) else None)
    finally:
        ctx.destroy(linger=0)
