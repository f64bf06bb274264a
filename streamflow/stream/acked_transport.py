"""Acknowledged delivery's sockets: a ROUTER in the sender, a DEALER in each receiver, one endpoint.

The protocol is :mod:`streamflow.stream.delivery` (credit windows, acknowledgements,
ack timeout, redelivery, bad peers); this module only moves its messages:

- receiver -> sender: HELLO (meta: name, pid, window), one FRAME_ACK per handled
  frame (header stream id and seq, no meta), and ACK answering END_OF_STREAM;
- sender -> receiver: DATA/RAW frames, HEARTBEAT probes every ``heartbeat_s``
  (the ROUTER is mandatory-routing, so a probe to a receiver whose connection is
  gone fails at once with EHOSTUNREACH: its frames are redelivered), and
  END_OF_STREAM once every frame is acknowledged.

Both sockets also run ZeroMQ's own ZMTP heartbeats (every :data:`ZMTP_HEARTBEAT_MS`,
connection dropped after :data:`ZMTP_TIMEOUT_MS` of silence), done by libzmq's I/O
thread: a receiver busy in a long learning step still answers them, a host that
vanished without closing its connection (power, network) is dropped, and the next
probe finds it gone. A receiver that hears nothing for :data:`REHELLO_S` says
HELLO again, so a restarted sender learns about it.

The END_OF_STREAM handshake is the plain transport's (streamflow.stream.transport)
on the same socket: it starts when every frame is acknowledged, goes to every
live receiver, and its meta adds the sender's delivery counts ("delivery").
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from streamflow.errors import ConfigError, WireError
from streamflow.events.batch import EventBatch
from streamflow.events.particles import ParticleBatch
from streamflow.stream.delivery import DEFAULT_WINDOW, DeliveryConfig, Dispatcher, Key
from streamflow.stream.transport import (
    DEFAULT_ENDPOINT,
    STOP_HANDSHAKE_S,
    Curve,
    CurveRefusals,
    DownstreamStuck,
    EndOfStream,
    HandshakeError,
    bind,
    connect,
    end_of_stream_meta,
)
from streamflow.stream.wire import (
    Kind,
    Message,
    decode,
    decode_frame_ack,
    encode_control,
    encode_data,
    encode_frame_ack,
    encode_raw,
    restamp,
)

ZMTP_HEARTBEAT_MS = 1000
ZMTP_TIMEOUT_MS = 5000
REHELLO_S = 2.0
_POLL_MS = 100
_QUEUE_HWM = 10_000  # messages: far above window + probes, so a send to a live receiver never finds it full


def _heartbeats(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_TIMEOUT_MS)


@dataclass
class AckedSender:
    """The sending side: keeps every frame until a receiver acknowledges it, redelivers when one dies.

    :meth:`send` blocks (waking every 100 ms for ``stop_event``) while ``delivery.max_unacked``
    frames are unacknowledged or no receiver has credit for them; ``blocked_s`` is that
    time. :meth:`end_stream` first waits for every frame's acknowledgement, then runs the
    END_OF_STREAM handshake with the live receivers.
    """

    ctx: zmq.Context
    endpoint: str = DEFAULT_ENDPOINT
    stream_id: int = 0
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    curve: Curve | None = None
    on_settled: Callable[[Key], None] | None = None
    """Called with a frame's key when a receiver acknowledges it (once per frame)."""
    frames: int = field(default=0, init=False)
    events: int = field(default=0, init=False)
    blocked_s: float = field(default=0.0, init=False)
    bad_messages: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._auth = self.curve.authenticator(self.ctx) if self.curve is not None else None
        try:
            self.sock = bind(self.ctx, zmq.ROUTER, self.endpoint, hwm=_QUEUE_HWM, curve=self.curve)
        except ConfigError:
            self._stop_auth()
            raise
        self.sock.router_mandatory = 1
        _heartbeats(self.sock)
        self.dispatcher: Dispatcher[bytes] = Dispatcher(self.delivery)
        self._names: dict[bytes, str] = {}  # routing id -> "name (pid N)", for messages
        self._receiver_of: dict[bytes, str] = {}  # routing id -> the receiver's name: lifetimes of one scorer share it
        self._eos_acks: dict[bytes, dict[str, Any]] = {}
        self._next_probe = 0.0
        self._probe = encode_control(Kind.HEARTBEAT, stream_id=self.stream_id, seq=0)

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def close(self) -> None:
        self.sock.close(linger=0)
        self._stop_auth()

    def __enter__(self) -> AckedSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, parts: list[Any], n_events: int, stop_event: threading.Event | None = None,
             key: Key | None = None, give_up_s: float | None = None, restamp_on_wait: bool = False) -> bool:
        """Hand one encoded frame to delivery; False if stopped while blocked.

        ``key`` is the (stream id, seq) its receiver acknowledges: by default this sender's stream
        and frame count (a scorer's selections carry the producer's). With ``give_up_s``, a frame that
        finds the buffer full for that long raises :class:`DownstreamStuck` (not sent). With
        ``restamp_on_wait``, a frame that waited for room gets the time it entered delivery as its
        send time (as :meth:`Sender.send` does: the wait is the producer's, not the pipeline's latency;
        a redelivered frame keeps that time, so its latency includes the redelivery)."""
        start = time.perf_counter()
        try:
            waited = False
            while not self.dispatcher.has_room:
                waited = True
                if stop_event is not None and stop_event.is_set():
                    return False
                if give_up_s is not None and time.perf_counter() - start > give_up_s:
                    raise DownstreamStuck(f"no receiver acknowledged a frame from {self.endpoint} for "
                                          f"{give_up_s:g} s: is it running?")
                self.pump(_POLL_MS)
            if waited and restamp_on_wait:
                parts = restamp(parts, time.time_ns())
            self.dispatcher.offer(key or (self.stream_id, self.frames), parts, n_events)
            self.frames += 1
            self.events += n_events
            self.pump(0)
        finally:
            self.blocked_s += time.perf_counter() - start
        return True

    def send_batch(self, batch: EventBatch, stop_event: threading.Event | None = None) -> bool:
        """Send ``batch`` as the next DATA frame (its send time: when it entered delivery)."""
        parts = encode_data(batch, seq=self.frames, stream_id=self.stream_id, send_ns=time.time_ns())
        return self.send(parts, len(batch), stop_event, restamp_on_wait=True)

    def send_particles(self, particles: ParticleBatch, stop_event: threading.Event | None = None) -> bool:
        """Send ``particles`` as the next RAW frame."""
        parts = encode_raw(particles, seq=self.frames, stream_id=self.stream_id, send_ns=time.time_ns())
        return self.send(parts, len(particles), stop_event, restamp_on_wait=True)

    def wait_for_receivers(self, n: int, timeout_s: float, stop_event: threading.Event | None = None) -> int:
        """Wait until ``n`` receivers have said HELLO (or ``timeout_s``, or a stop); how many did."""
        deadline = time.monotonic() + timeout_s
        while len(self.dispatcher.peers) < n and time.monotonic() < deadline:
            if stop_event is not None and stop_event.is_set():
                break
            self.pump(50)
        return len(self.dispatcher.peers)

    def pump(self, timeout_ms: int) -> None:
        """Read what came in within ``timeout_ms``, probe receivers when due, apply the ack timeout, send."""
        while int(self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN or (
                timeout_ms and self.sock.poll(timeout_ms, zmq.POLLIN)):
            timeout_ms = 0
            routing_id, *parts = self.sock.recv_multipart()
            key = decode_frame_ack(parts)
            if key is not None:
                self._acked(routing_id, key, time.monotonic())
            else:
                self._handle(routing_id, parts)
        now = time.monotonic()
        if now >= self._next_probe:
            self._next_probe = now + self.delivery.heartbeat_s
            for peer in list(self.dispatcher.peers):
                self._to(peer, self._probe)
            self.dispatcher.expire(now)
        self._dispatch(now)

    def _handle(self, peer: bytes, parts: list[Any]) -> None:
        try:
            msg = decode(parts)
        except WireError:
            self.bad_messages += 1
            return
        now = time.monotonic()
        if msg.kind == Kind.FRAME_ACK:
            self._acked(peer, (msg.stream_id, msg.seq), now)
        elif msg.kind == Kind.HELLO:
            self._names[peer] = f"{msg.meta.get('name', 'receiver')} (pid {msg.meta.get('pid', '?')})"
            self._receiver_of[peer] = str(msg.meta.get("name", "receiver"))
            window = msg.meta.get("window")
            self.dispatcher.hello(peer, window if isinstance(window, int) else self.delivery.window, now)
        elif msg.kind == Kind.ACK and peer in self.dispatcher.peers:  # END_OF_STREAM went only to those
            self._eos_acks[peer] = msg.meta
        else:
            self.bad_messages += 1

    def _acked(self, peer: bytes, key: Key, now: float) -> None:
        if self.dispatcher.ack(peer, key, now) in ("ok", "late") and self.on_settled is not None:
            self.on_settled(key)

    def _to(self, peer: bytes, parts: list[Any]) -> bool:
        """Send to one receiver; False (and its frames queued again) if its connection is gone."""
        try:
            self.sock.send_multipart([peer, *parts], copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            return True  # connected, its queue full: still there
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.dispatcher.gone(peer)  # one that answered END_OF_STREAM keeps its answer: it may leave
            return False
        return True

    def _dispatch(self, now: float) -> None:
        while (item := self.dispatcher.next_send(now)) is not None:
            self._to(item[0], item[2])

    def drain(self, give_up_s: float, stop_event: threading.Event | None = None) -> None:
        """Wait until every frame is acknowledged; DownstreamStuck after ``give_up_s`` without an
        acknowledgement (at most :data:`STOP_HANDSHAKE_S` once ``stop_event`` is set)."""
        last_progress, acked = time.monotonic(), self.dispatcher.counts.acked
        while not self.dispatcher.done:
            self.pump(_POLL_MS)
            now = time.monotonic()
            if self.dispatcher.counts.acked != acked:
                acked, last_progress = self.dispatcher.counts.acked, now
            limit = min(give_up_s, STOP_HANDSHAKE_S) if stop_event is not None and stop_event.is_set() else give_up_s
            if now - last_progress > limit:
                raise DownstreamStuck(f"{self.dispatcher.unacked:,d} frames sent to {self.endpoint} not acknowledged "
                                      f"for {limit:g} s: is the receiver running?")

    def end_stream(self, timeout_s: float = 10.0, interval_s: float = 0.1,
                   streams: dict[int, tuple[int, int]] | None = None, shared_by: int | None = None,
                   stop_event: threading.Event | None = None, extra: dict[str, Any] | None = None) -> EndOfStream:
        """Wait for every frame's acknowledgement, then END_OF_STREAM to every live receiver until each ACKs.

        ``streams``, ``shared_by`` and ``extra`` make the meta as :meth:`Sender.end_stream` does;
        "receivers" is otherwise how many receivers, by name, acknowledged frames (the lifetimes of a
        scorer resumed after a crash are one receiver), and "delivery" adds the counts.

        ``timeout_s`` is how long to go without progress (an acknowledgement) while frames
        are outstanding, and for the handshake itself -- at most :data:`STOP_HANDSHAKE_S`
        once ``stop_event`` is set. Raises HandshakeError saying what was not acknowledged."""
        start = last_progress = time.monotonic()
        acked = self.dispatcher.counts.acked
        while not self.dispatcher.done:
            self.pump(_POLL_MS)
            now = time.monotonic()
            if self.dispatcher.counts.acked != acked:
                acked, last_progress = self.dispatcher.counts.acked, now
            limit = min(timeout_s, STOP_HANDSHAKE_S) if stop_event is not None and stop_event.is_set() else timeout_s
            if now - last_progress > limit:
                raise HandshakeError(f"{self.dispatcher.unacked:,d} of {self.frames:,d} frames not acknowledged "
                                     f"within {limit:g} s: {len(self.dispatcher.peers)} receivers connected")
        sent = 0
        handshake_start = time.monotonic()
        while True:
            meta = {**end_of_stream_meta(self.frames, self.events, streams, extra),
                    "receivers": shared_by or max(1, len({self._receiver_of.get(p) for p in self.dispatcher.served})),
                    "delivery": self.dispatcher.counts.to_dict()}
            eos = encode_control(Kind.END_OF_STREAM, stream_id=self.stream_id, seq=self.frames, meta=meta,
                                 send_ns=time.time_ns())
            for peer in [p for p in self.dispatcher.peers if p not in self._eos_acks]:
                sent += self._to(peer, eos)
            self.pump(int(interval_s * 1000))
            live = self.dispatcher.peers.keys()
            if self._eos_acks and live <= self._eos_acks.keys():  # a receiver that answered may be gone already
                acks = {self._names.get(p, "receiver"): meta for p, meta in self._eos_acks.items()}
                return EndOfStream(acks, time.monotonic() - start, sent)
            limit = min(timeout_s, STOP_HANDSHAKE_S) if stop_event is not None and stop_event.is_set() else timeout_s
            if time.monotonic() - handshake_start > limit:
                silent = sorted(self._names.get(p, "receiver") for p in live if p not in self._eos_acks)
                raise HandshakeError(f"END_OF_STREAM not acknowledged within {limit:g} s by "
                                     + (", ".join(silent) if silent else "any receiver (none connected)"))


@dataclass
class AckedReceiver:
    """The receiving side: one DEALER; says HELLO with its window, acknowledges each frame it handled.

    :meth:`recv` returns DATA/RAW frames and END_OF_STREAM (answered with ACK), skips
    probes, counts undecodable messages in ``rejected``; :meth:`acknowledge` must follow
    every DATA/RAW frame once it is fully handled, or the sender stops sending after
    ``window`` frames and redelivers them after its ack timeout.
    """

    ctx: zmq.Context
    endpoint: str = DEFAULT_ENDPOINT
    name: str = "receiver"
    window: int = DEFAULT_WINDOW
    curve: Curve | None = None
    frames: int = field(default=0, init=False)
    events: int = field(default=0, init=False)
    rejected: int = field(default=0, init=False)
    last_error: str | None = field(default=None, init=False)
    last_parts: list[Any] = field(default_factory=list, init=False)
    """The encoded parts of the message :meth:`recv` returned last (a proxy forwards them unchanged)."""

    def __post_init__(self) -> None:
        self.sock = connect(self.ctx, zmq.DEALER, self.endpoint, hwm=_QUEUE_HWM, curve=self.curve)
        self._refusals = CurveRefusals(self.sock, self.endpoint, self.curve)
        _heartbeats(self.sock)
        self._rcvtimeo = -1
        self._heard = time.monotonic()
        self._hello()

    def _say(self, kind: Kind, stream_id: int, seq: int, meta: dict[str, Any] | None = None) -> None:
        try:
            self.sock.send_multipart(encode_control(kind, stream_id=stream_id, seq=seq, meta=meta),
                                     flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # a lost ACK is asked again (END_OF_STREAM repeats), a lost FRAME_ACK redelivered and suppressed

    def _hello(self) -> None:
        self._say(Kind.HELLO, 0, 0, {"name": self.name, "pid": os.getpid(), "window": self.window})

    def acknowledge(self, stream_id: int, seq: int) -> None:
        """Tell the sender frame (``stream_id``, ``seq``) is fully handled: it may forget it, and send one more."""
        try:
            self.sock.send_multipart(encode_frame_ack(stream_id, seq), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # not acknowledged: the sender redelivers it after its ack timeout, and it is recognised

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """The next frame or END_OF_STREAM, or None if none came within ``timeout_ms`` (None: wait forever)."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            wait = _POLL_MS if deadline is None else max(0, round((deadline - time.monotonic()) * 1000))
            if wait != self._rcvtimeo:  # a blocking receive with a timeout: no poll call per frame
                self.sock.rcvtimeo = self._rcvtimeo = wait
            try:
                parts = self.sock.recv_multipart(copy=False)
            except zmq.Again:
                self._refusals.check()
                if time.monotonic() - self._heard > REHELLO_S:  # a sender that restarted does not know us
                    self._heard = time.monotonic()
                    self._hello()
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            self._heard = time.monotonic()
            try:
                msg = decode(parts)
            except WireError as exc:
                self.rejected += 1
                self.last_error = str(exc)
                continue
            if msg.kind == Kind.END_OF_STREAM:
                self._say(Kind.ACK, msg.stream_id, msg.seq,
                          {"name": self.name, "pid": os.getpid(), "frames": self.frames, "events": self.events,
                           "rejected": self.rejected})
                return msg
            if msg.kind in (Kind.DATA, Kind.RAW, Kind.SELECTION):
                self.frames += 1
                self.events += msg.n_events
                self.last_parts = parts
                return msg
            # HEARTBEAT probes (and anything else) carry nothing for the caller

    def close(self) -> None:
        self._refusals.close()
        self.sock.close(linger=1000)  # gives the last acknowledgements a second to leave

    def __enter__(self) -> AckedReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
