"""The proxy: M senders' streams -> one endpoint that K receivers pull from, END_OF_STREAM kept.

Why not ``zmq.proxy``: it forwards END_OF_STREAM like any message, so the first
producer to finish would end a scorer that still has another producer's frames
coming, and with PUSH fair-queueing only one scorer would hear it. Instead the
proxy is a receiver to each upstream sender -- it says HELLO and acknowledges that
sender's END_OF_STREAM itself (:class:`~streamflow.stream.transport.Receiver`) -- and one
sender to its downstream receivers. Only when every upstream has ended does it run
the downstream handshake, with each stream's forwarded totals in the END_OF_STREAM
meta, so every scorer can account for the events of every stream
(:func:`streamflow.stream.ledger.stream_totals`).

DATA and SELECTION messages travel with their original parts (zero-copy): stream
id, sequence number and send time stay the producer's, so latency is still
end-to-end. Forwarding blocks while the downstream queues are full, and the proxy
reads nothing upstream meanwhile, so back-pressure reaches the producers and
nothing is dropped. A producer's stream id must be its own: two upstreams sending
DATA with the same id is a user error. SELECTION streams (K scorers' accepted
events, merged into one sink) legitimately share ids: scorers that split a stream
send disjoint parts of its sequence numbers.

With ``acked`` every hop is acknowledged delivery (streamflow.stream.delivery): the
proxy is an acknowledged receiver to each upstream and an acknowledged sender to
its receivers, and acknowledges a frame upstream only once a downstream receiver
has acknowledged it (the frame's key, (stream id, seq), is the producer's on both
sides). A receiver killed behind the proxy costs nothing: the proxy sends its
frames again to another (or to it, resumed). Nor, by design, does a killed proxy
(not tested): every frame it held is unacknowledged upstream, so the producers send
it again to a restarted proxy. The proxy holds at most ``max_unacked`` frames
(:data:`~streamflow.stream.delivery.DEFAULT_MAX_UNACKED`) for its receivers; when
they are all out, it reads nothing upstream until an acknowledgement frees one, and
each upstream's credit window (:data:`UPSTREAM_WINDOW`) carries the back-pressure to
its producer. A frame an upstream sends again while the proxy still holds it is not
forwarded twice; one already acknowledged downstream is acknowledged at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import zmq

from streamflow.errors import ConfigError, StreamflowError
from streamflow.ops.prometheus import check_metrics, start_exporter
from streamflow.stream.acked_transport import AckedReceiver, AckedSender
from streamflow.stream.delivery import DEFAULT_WINDOW, DeliveryConfig, Key
from streamflow.stream.ledger import Ledger, stream_totals
from streamflow.stream.transport import (
    DEFAULT_HWM,
    Curve,
    DownstreamStuck,
    EndOfStream,
    HandshakeError,
    Receiver,
    Sender,
    check_endpoint,
    check_queue_options,
    check_stream_id,
)
from streamflow.stream.wire import Kind, Message

DEFAULT_PROXY_ENDPOINT = "tcp://127.0.0.1:5565"
_POLL_MS = 100  # how often a quiet proxy looks at its stop flag and idle clock
UPSTREAM_WINDOW = DEFAULT_WINDOW
"""``acked``: frames the proxy holds unacknowledged from each upstream (its HELLO's window)."""
Observer = Callable[[dict[str, Any]], None] | None  # a telemetry record's consumer (the metrics exporter), or none


@dataclass(frozen=True)
class ProxyConfig:
    """What a proxy joins and how.

    upstream: the data endpoints of the senders to read (they bind, the proxy connects).
    endpoint: the data endpoint the proxy binds for its receivers (control on port + 1).
    stream_id: the proxy's own id, on its END_OF_STREAM header (the streams keep theirs).
    eos_timeout: seconds to wait for every downstream receiver to acknowledge END_OF_STREAM;
    a receiver acknowledges only after working through its queue, hence more than a producer's.
    idle_timeout: seconds without any message from any upstream, or -- once the downstream has taken a
    frame -- with a forwarded frame finding no room there (receivers gone or wedged), before the proxy
    gives up. Like a producer, it waits for its first downstream receiver as long as it takes.
    upstream_curve: connect to every upstream as a CURVE client (they share one server key).
    curve: serve downstream as a CURVE server, admitting only authorised receivers.
    metrics_port: serve Prometheus ``/metrics`` here (streamflow.ops.prometheus: events and frames
    forwarded, rejected messages, seconds blocked downstream); metrics_hold: seconds to keep serving
    after the stream ended.
    acked: acknowledged delivery upstream and downstream (the module docstring); the upstreams and
    the receivers must run it too. hwm and kernel_buffer then do not apply.
    """

    upstream: tuple[str, ...]
    endpoint: str = DEFAULT_PROXY_ENDPOINT
    stream_id: int = 0
    hwm: int = DEFAULT_HWM
    kernel_buffer: int = 0
    eos_timeout: float = 30.0
    idle_timeout: float = 60.0
    name: str = "proxy"
    upstream_curve: Curve | None = None
    curve: Curve | None = None
    metrics_port: int | None = None
    metrics_hold: float = 0.0
    acked: bool = False

    def __post_init__(self) -> None:
        check_metrics(self.metrics_port, self.metrics_hold)
        if not self.upstream:
            raise ConfigError("a proxy needs at least one upstream endpoint (--from ENDPOINT)")
        for endpoint in (*self.upstream, self.endpoint):
            check_endpoint(endpoint)
        repeated = sorted({e for e in self.upstream if self.upstream.count(e) > 1})
        if repeated:
            raise ConfigError(f"upstream {repeated[0]} is given twice: each sender is read once")
        if self.endpoint in self.upstream:
            raise ConfigError(f"the proxy cannot bind {self.endpoint}: it is also one of its upstreams")
        check_stream_id(self.stream_id)
        check_queue_options(self.hwm, self.kernel_buffer)
        if not self.eos_timeout > 0:
            raise ConfigError(f"END_OF_STREAM timeout must be positive seconds, got {self.eos_timeout}")
        if not self.idle_timeout > 0:
            raise ConfigError(f"idle timeout must be positive seconds, got {self.idle_timeout}")
        if self.upstream_curve is not None and self.upstream_curve.is_server:
            raise ConfigError("the proxy connects upstream: that CURVE config needs the producers' public key file")
        if self.curve is not None and not self.curve.is_server:
            raise ConfigError("the proxy binds downstream: that CURVE config needs an authorised-keys folder")


@dataclass
class Count:
    """Frames and events."""

    frames: int = 0
    events: int = 0

    def add(self, events: int) -> None:
        self.frames += 1
        self.events += events


def _total(counts: Iterable[Count]) -> Count:
    counts = list(counts)
    return Count(sum(c.frames for c in counts), sum(c.events for c in counts))


@dataclass
class UpstreamStats:
    """What came from one upstream sender, per stream id, and what its END_OF_STREAM said it sent."""

    endpoint: str
    received: dict[int, Count] = field(default_factory=dict)
    forwarded: dict[int, Count] = field(default_factory=dict)
    sent: dict[int, tuple[int, int]] | None = None
    """stream id -> (frames, events) from the sender's END_OF_STREAM; None until it ended."""
    rejected: int = 0
    last_rejection: str | None = None

    @property
    def ended(self) -> bool:
        return self.sent is not None


@dataclass
class ProxyStats:
    """What a proxy did: per upstream what it received and forwarded, and the downstream handshake.

    error: why it ended early (idle upstreams, a stream id from two producers); None if it did not.
    """

    upstreams: list[UpstreamStats]
    seconds: float = 0.0
    blocked_s: float = 0.0
    stopped: bool = False
    error: str | None = None
    eos: EndOfStream | None = None
    delivery: dict[str, int] | None = None
    """``acked``: the downstream dispatcher's counts (streamflow.stream.delivery.DeliveryCounts)."""

    def streams(self) -> dict[int, tuple[int, int]]:
        """stream id -> (frames, events) forwarded downstream, over every upstream."""
        per_stream: dict[int, list[Count]] = {}
        for upstream in self.upstreams:
            for sid, count in upstream.forwarded.items():
                per_stream.setdefault(sid, []).append(count)
        totals = {sid: _total(counts) for sid, counts in sorted(per_stream.items())}
        return {sid: (total.frames, total.events) for sid, total in totals.items()}

    def ledger(self) -> Ledger:
        """Received, forwarded, acknowledged downstream; a line per upstream stream and per receiver."""
        ledger = Ledger()
        received = _total(c for u in self.upstreams for c in u.received.values())
        forwarded = _total(c for u in self.upstreams for c in u.forwarded.values())
        rejected = sum(u.rejected for u in self.upstreams)
        ledger.add("received", received.events,
                   f"{received.frames} frames from {len(self.upstreams)} upstreams; {rejected} rejected messages")
        unsent = received.frames - forwarded.frames
        ledger.add("forwarded", forwarded.events,
                   f"{unsent} frames not forwarded: received as the proxy ended" if unsent else "")
        acks = self.eos.acks if self.eos is not None else {}
        ledger.add("acknowledged", sum(int(a.get("events", 0)) for a in acks.values()),
                   f"END_OF_STREAM acknowledged by {len(acks)} receivers")
        for upstream in self.upstreams:
            for sid in sorted(upstream.received.keys() | (upstream.sent or {}).keys()):
                ledger.notes.append(_stream_line(upstream, sid))
            if not upstream.ended:
                ledger.notes.append(f"{upstream.endpoint}: no END_OF_STREAM (the stream did not end)")
            if upstream.rejected:
                ledger.notes.append(f"{upstream.endpoint}: rejected {upstream.rejected} messages; "
                                    f"last: {upstream.last_rejection}")
        ledger.notes += [f"downstream {name}: acknowledged {int(a.get('events', 0)):,d} events in "
                         f"{int(a.get('frames', 0)):,d} frames" for name, a in acks.items()]
        if self.delivery is not None:
            ledger.notes.append(f"acknowledged delivery downstream: {self.delivery['acked']:,d} of "
                                f"{self.delivery['sent']:,d} frames acknowledged, {self.delivery['redelivered']:,d} "
                                f"redelivered, {self.delivery['receivers_lost']} receivers lost")
        if self.error:
            ledger.notes.append(f"ended: {self.error}")
        ledger.details.update(delivery=self.delivery)
        ledger.details.update(
            upstreams={u.endpoint: {"received": _counts(u.received), "forwarded": _counts(u.forwarded),
                                    "sent": None if u.sent is None else
                                    {str(s): {"frames": f, "events": e} for s, (f, e) in u.sent.items()},
                                    "rejected": u.rejected} for u in self.upstreams},
            streams={str(sid): {"frames": f, "events": e} for sid, (f, e) in self.streams().items()},
            acks=acks, seconds=self.seconds, blocked_s=self.blocked_s, stopped=self.stopped, error=self.error)
        return ledger


def _counts(counts: dict[int, Count]) -> dict[str, dict[str, int]]:
    return {str(sid): {"frames": c.frames, "events": c.events} for sid, c in sorted(counts.items())}


def _stream_line(upstream: UpstreamStats, sid: int) -> str:
    received = upstream.received.get(sid, Count())
    forwarded = upstream.forwarded.get(sid, Count())
    sent = (upstream.sent or {}).get(sid)
    said = f"sent {sent[1]:,d} events in {sent[0]:,d} frames, " if sent is not None else ""
    return (f"stream {sid} from {upstream.endpoint}: {said}received {received.events:,d} in {received.frames:,d}, "
            f"forwarded {forwarded.events:,d} in {forwarded.frames:,d}")


class ProxyError(StreamflowError):
    """The proxy ended early (its downstream was still ended cleanly); ``stats`` says what it did."""

    def __init__(self, message: str, stats: ProxyStats) -> None:
        super().__init__(message)
        self.stats = stats


class _Routing:
    """What either forwarding loop keeps: which upstream owns which stream id, and what kind they send."""

    def __init__(self, config: ProxyConfig, stats: ProxyStats,
                 observe: Observer = None) -> None:
        self.config, self.stats, self.observe = config, stats, observe
        self.owners: dict[int, int] = {}  # DATA stream id -> index of the upstream that sends it
        self.kind: Kind | None = None  # DATA or SELECTION: the first event message decides
        self.stuck = False  # the downstream stopped taking frames
        self.blocked_s = 0.0  # forwarding blocked on a full downstream

    def record(self) -> dict[str, Any]:
        """The proxy's counts as a telemetry record (for its metrics): forwarded events and frames."""
        forwarded = [count for u in self.stats.upstreams for count in u.forwarded.values()]
        return {"kind": "proxy", "events": sum(c.events for c in forwarded), "frames": sum(c.frames for c in forwarded),
                "rejected": sum(u.rejected for u in self.stats.upstreams), "blocked_s": self.blocked_s}

    def _claim(self, index: int, msg: Message) -> str | None:
        """None if upstream ``index`` may send ``msg``, else why not (one line)."""
        endpoint = self.config.upstream[index]
        if self.kind is None:
            self.kind = msg.kind
        elif msg.kind != self.kind:
            return (f"{endpoint} sends {msg.kind.name} after {self.kind.name} from the others: a proxy forwards "
                    f"producers' DATA or scorers' SELECTION streams, not both")
        if msg.kind == Kind.DATA:
            owner = self.owners.setdefault(msg.stream_id, index)
            if owner != index:
                return (f"stream id {msg.stream_id} comes from both {self.config.upstream[owner]} and {endpoint}: "
                        f"give each producer its own --stream-id")
        return None

    def _idle_error(self) -> str:
        waiting = [u.endpoint for u in self.stats.upstreams if not u.ended]
        hint = " (and, under CURVE, do they admit this proxy's key?)" if self.config.upstream_curve else ""
        return (f"no message from any upstream for {self.config.idle_timeout:g} s; no END_OF_STREAM yet from "
                f"{', '.join(waiting)}: are those producers running{hint}?")


class _Forwarder(_Routing):
    """PUSH/PULL forwarding: each frame forwarded as it comes, blocking while the downstream queues are full."""

    def __init__(self, config: ProxyConfig, sender: Sender, receivers: list[Receiver], stats: ProxyStats,
                 observe: Observer = None) -> None:
        super().__init__(config, stats, observe)
        self.sender, self.receivers = sender, receivers

    def run(self, stop_event: threading.Event) -> str | None:
        """Forward until every upstream has ended or ``stop_event``; the error that ended it early, if any."""
        poller = zmq.Poller()
        for receiver in self.receivers:
            poller.register(receiver.data, zmq.POLLIN)
        last = time.monotonic()
        while not stop_event.is_set() and not all(u.ended for u in self.stats.upstreams):
            ready = dict(poller.poll(_POLL_MS))
            if not ready and time.monotonic() - last > self.config.idle_timeout:
                return self._idle_error()
            for index, receiver in enumerate(self.receivers):
                if receiver.data not in ready:
                    continue
                parts = receiver.data.recv_multipart(copy=False)
                last = time.monotonic()
                msg = receiver.handle(parts)  # acknowledges the upstream's END_OF_STREAM
                upstream = self.stats.upstreams[index]
                upstream.rejected, upstream.last_rejection = receiver.rejected, receiver.last_error
                if msg is None:
                    continue
                if msg.kind == Kind.END_OF_STREAM:
                    upstream.sent = stream_totals(msg.meta, msg.stream_id)
                elif msg.batch is not None:
                    upstream.received.setdefault(msg.stream_id, Count()).add(len(msg.batch))
                    error = self._claim(index, msg)
                    if error is not None:
                        return error
                    try:  # waits for a first receiver as long as it takes (scorers start slowly), then not
                        if not self.sender.send(parts, len(msg.batch), stop_event,
                                                give_up_s=self.config.idle_timeout if self.sender.frames else None):
                            return None  # stopped while the downstream queues were full
                    except DownstreamStuck as exc:
                        self.stuck = True
                        return f"the downstream stopped taking frames: {exc}"
                    upstream.forwarded.setdefault(msg.stream_id, Count()).add(len(msg.batch))
                    self.blocked_s = self.sender.blocked_s
                    if self.observe is not None:
                        self.observe(self.record())
        return None


class _AckedForwarder(_Routing):
    """Acknowledged forwarding: a frame is acknowledged to its upstream once a downstream receiver
    acknowledged it (:meth:`settled`, the downstream sender's ``on_settled``)."""

    def __init__(self, config: ProxyConfig, stats: ProxyStats,
                 observe: Observer = None) -> None:
        super().__init__(config, stats, observe)
        self.sender: AckedSender | None = None
        self.receivers: list[AckedReceiver] = []
        self.origin: dict[Key, int] = {}  # frame held downstream -> index of the upstream it came from

    def settled(self, key: Key) -> None:
        """A downstream receiver acknowledged ``key``: acknowledge it to the upstream it came from."""
        index = self.origin.pop(key, None)
        if index is not None:
            self.receivers[index].acknowledge(*key)

    def run(self, stop_event: threading.Event) -> str | None:
        """Forward until every upstream has ended (each ends only once all its frames were acknowledged
        downstream, through :meth:`settled`) or ``stop_event``; the error that ended it early, if any."""
        sender = self.sender
        assert sender is not None
        poller = zmq.Poller()
        for receiver in self.receivers:
            poller.register(receiver.sock, zmq.POLLIN)
        poller.register(sender.sock, zmq.POLLIN)
        last = time.monotonic()
        while not stop_event.is_set() and not all(u.ended for u in self.stats.upstreams):
            ready = dict(poller.poll(_POLL_MS))
            sender.pump(0)  # downstream acknowledgements (settled: upstream ones), probes, redeliveries
            if not ready and time.monotonic() - last > self.config.idle_timeout:
                return self._idle_error()
            for index, receiver in enumerate(self.receivers):
                if receiver.sock not in ready:
                    continue
                while (msg := receiver.recv(timeout_ms=0)) is not None:  # answers END_OF_STREAM itself
                    last = time.monotonic()
                    error = self._forward(index, msg, stop_event)
                    if error is not None or stop_event.is_set():
                        return error
                upstream = self.stats.upstreams[index]
                upstream.rejected, upstream.last_rejection = receiver.rejected, receiver.last_error
        return None

    def _forward(self, index: int, msg: Message, stop_event: threading.Event) -> str | None:
        sender = self.sender
        assert sender is not None
        upstream = self.stats.upstreams[index]
        if msg.kind == Kind.END_OF_STREAM:
            upstream.sent = stream_totals(msg.meta, msg.stream_id)
            return None
        if msg.batch is None:
            return None
        key = (msg.stream_id, msg.seq)
        error = self._claim(index, msg)
        if error is not None:
            return error
        if key in sender.dispatcher.settled:  # sent again upstream after a receiver acknowledged it here
            self.receivers[index].acknowledge(*key)
            return None
        if key in sender.dispatcher.frames:  # sent again upstream while still held here: acknowledged when settled
            self.origin[key] = index
            return None
        upstream.received.setdefault(msg.stream_id, Count()).add(len(msg.batch))  # each frame once
        try:
            if not sender.send(self.receivers[index].last_parts, len(msg.batch), stop_event, key=key,
                               give_up_s=self.config.idle_timeout if sender.frames else None):
                return None  # stopped while every frame was out
        except DownstreamStuck as exc:
            self.stuck = True
            return f"the downstream stopped acknowledging frames: {exc}"
        self.origin[key] = index
        upstream.forwarded.setdefault(msg.stream_id, Count()).add(len(msg.batch))
        self.blocked_s = sender.blocked_s
        if self.observe is not None:
            self.observe(self.record())
        return None


def run_proxy(config: ProxyConfig, stop_event: threading.Event | None = None) -> ProxyStats:
    """Forward every upstream's frames downstream until all have ended, then end the downstream.

    ``stop_event`` (SIGINT/SIGTERM), an idle timeout and a stream id sent by two
    upstreams all end it the same way: nothing more is read, the downstream receivers
    get END_OF_STREAM with the totals of what was forwarded (so they end cleanly and
    account for it). The last two then raise :class:`ProxyError` with the stats.
    """
    stop_event = stop_event or threading.Event()
    exporter = start_exporter(config.name, config.metrics_port)
    observe = exporter.observe if exporter else None
    ctx = zmq.Context()
    stats = ProxyStats([UpstreamStats(endpoint) for endpoint in config.upstream])
    try:
        with ExitStack() as sockets:
            forward = _forward_acked if config.acked else _forward_pushed
            forward(config, ctx, sockets, stats, observe, stop_event)
    finally:
        ctx.destroy(linger=0)
        if exporter is not None:
            exporter.close(hold=config.metrics_hold)
    if stats.error is not None:
        raise ProxyError(stats.error, stats)
    return stats


def _forward_pushed(config: ProxyConfig, ctx: zmq.Context, sockets: ExitStack, stats: ProxyStats,
                    observe: Observer, stop_event: threading.Event) -> None:
    """PUSH/PULL on both sides: a PULL receiver per upstream, one PUSH sender downstream."""
    sender = sockets.enter_context(
        Sender(ctx, config.endpoint, stream_id=config.stream_id, hwm=config.hwm,
               kernel_buffer=config.kernel_buffer, curve=config.curve))
    receivers = [sockets.enter_context(
        Receiver(ctx, endpoint, name=config.name, hwm=config.hwm, kernel_buffer=config.kernel_buffer,
                 curve=config.upstream_curve)) for endpoint in config.upstream]
    _forward_then_end(config, _Forwarder(config, sender, receivers, stats, observe), sender, stats, stop_event)


def _forward_then_end(config: ProxyConfig, forwarder: _Forwarder | _AckedForwarder, sender: Sender | AckedSender,
                      stats: ProxyStats, stop_event: threading.Event) -> None:
    """Forward until every upstream ended (or a stop, an idle timeout, a clash), then end the downstream with the
    totals; a downstream that took nothing for the idle timeout (``forwarder.stuck``) is not asked, as it would not
    answer. A handshake failure after another problem is added to it: the first problem stays first."""
    start = time.perf_counter()
    stats.error = forwarder.run(stop_event)
    stats.seconds, stats.blocked_s = time.perf_counter() - start, sender.blocked_s
    stats.stopped = stop_event.is_set()
    try:
        if not forwarder.stuck:
            stats.eos = sender.end_stream(config.eos_timeout, streams=stats.streams(), stop_event=stop_event)
    except HandshakeError as exc:
        if stats.error is None:
            raise
        stats.error = f"{stats.error} (and downstream: {exc})"


def _forward_acked(config: ProxyConfig, ctx: zmq.Context, sockets: ExitStack, stats: ProxyStats,
                   observe: Observer, stop_event: threading.Event) -> None:
    """Acknowledged delivery on both sides (the module docstring)."""
    forwarder = _AckedForwarder(config, stats, observe)
    sender = forwarder.sender = sockets.enter_context(
        AckedSender(ctx, config.endpoint, stream_id=config.stream_id, delivery=DeliveryConfig(),
                    curve=config.curve, on_settled=forwarder.settled))
    forwarder.receivers = [sockets.enter_context(
        AckedReceiver(ctx, endpoint, name=config.name, window=UPSTREAM_WINDOW, curve=config.upstream_curve))
        for endpoint in config.upstream]
    try:
        _forward_then_end(config, forwarder, sender, stats, stop_event)
    finally:
        stats.delivery = sender.dispatcher.counts.to_dict()
