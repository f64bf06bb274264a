"""Sockets and the END_OF_STREAM handshake between one sender and its receivers.

A sender binds a PUSH data socket and, beside it, a ROUTER *control* socket on
:func:`control_endpoint` (tcp: port + 1; ipc/inproc: name + ".ctl"). Receivers
connect a PULL socket to the data endpoint and a DEALER to the control endpoint,
and say HELLO on it at once.

Why a handshake: ZeroMQ may drop the last messages of a process that exits (LINGER
is no guarantee across crashes and slow peers), and PUSH fair-queues, so a single
END_OF_STREAM reaches only one of several receivers. Instead the sender, after its
last frame, sends END_OF_STREAM on the data socket every ``interval_s`` until every
receiver that said HELLO (and at least one) has answered ACK with its frame and
event counts. An END_OF_STREAM on a pipe arrives after every data frame on that
pipe, so an ACK proves that receiver has everything that was sent to it. A
receiver that said HELLO and then died (``kill -9``) is not waited for: the
control socket is a mandatory-routing ROUTER, so a probe to a peer whose
connection is gone fails at once (EHOSTUNREACH) and the sender forgets it.

These are library helpers (no process loops): :class:`Sender` and
:class:`Receiver` wrap the two sides so a producer, scorer or sink loop only calls
``send``/``end_stream`` or ``recv``.

Across machines, :class:`Curve` (optional; None keeps plain sockets) secures both
sockets with ZeroMQ CURVE through pyzmq's ``zmq.auth``: the binding sender is the
CURVE server and admits only receivers whose public key is in an authorised-keys
folder; a receiver with any other key fails the handshake and never gets a frame.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from streamflow.errors import ConfigError, StreamflowError, WireError
from streamflow.events.batch import EventBatch
from streamflow.events.particles import ParticleBatch
from streamflow.stream.wire import Kind, Message, decode, encode_control, encode_data, encode_raw, restamp

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_HWM = 64  # frames queued per socket before a send blocks
_POLL_MS = 100  # how often a blocked send or receive looks at its stop flag
_IN_USE = "address already in use (is another streamflow process bound there? pick another endpoint)"
STOP_HANDSHAKE_S = 10.0
"""The longest an END_OF_STREAM handshake waits once the process has been told to stop (SIGINT/SIGTERM)."""


class HandshakeError(StreamflowError):
    """END_OF_STREAM was not acknowledged by every receiver in time."""


class DownstreamStuck(StreamflowError):
    """A send found no room for ``give_up_s``: the receivers stopped taking messages (gone, or wedged)."""


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is a usable tcp://host:port, ipc://path or inproc://name, else ConfigError."""
    scheme, sep, address = endpoint.partition("://")
    if not sep or not address:
        raise ConfigError(f"bad endpoint {endpoint!r}: expected tcp://HOST:PORT or ipc://PATH")
    if scheme == "tcp":
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"bad endpoint {endpoint!r}: tcp needs HOST:PORT with a port in 1-65535")
    elif scheme not in ("ipc", "inproc"):
        raise ConfigError(f"bad endpoint {endpoint!r}: scheme {scheme!r} is not tcp, ipc or inproc")
    return endpoint


MAX_HWM = 10_000
"""The largest high-water mark, in frames: queued frames are held in memory (2.3 GB of 4096-event LHCO frames)."""
MAX_KERNEL_BUFFER = 1 << 30
"""The largest OS socket buffer to ask for, in bytes (1 GiB; the kernel caps it lower anyway)."""


def check_queue_options(hwm: int, kernel_buffer: int) -> None:
    """ConfigError unless the high-water mark is 1 to MAX_HWM frames and the OS buffer 0 to MAX_KERNEL_BUFFER bytes."""
    if not 1 <= hwm <= MAX_HWM:
        raise ConfigError(f"high-water mark must be 1 to {MAX_HWM:,d} frames, got {hwm:,d}")
    if not 0 <= kernel_buffer <= MAX_KERNEL_BUFFER:
        raise ConfigError(f"kernel buffer must be 0 to {MAX_KERNEL_BUFFER:,d} bytes, got {kernel_buffer:,d}")


def check_stream_id(stream_id: int) -> None:
    """ConfigError unless ``stream_id`` fits the wire header's u32."""
    if not 0 <= stream_id < 2**32:
        raise ConfigError(f"stream id must be in [0, 2^32), got {stream_id}")


def control_endpoint(endpoint: str) -> str:
    """The control endpoint that goes with a data endpoint: tcp port + 1, ipc/inproc name + ".ctl"."""
    check_endpoint(endpoint)
    if endpoint.startswith("tcp://"):
        base, _, port = endpoint.rpartition(":")
        if int(port) == 65535:
            raise ConfigError(f"bad endpoint {endpoint!r}: port 65535 leaves no port for the control socket")
        return f"{base}:{int(port) + 1}"
    return endpoint + ".ctl"


def _ipc_in_use(endpoint: str) -> bool:
    """Whether a process listens on this ipc:// path (ZeroMQ would silently take it over)."""
    path = endpoint[len("ipc://"):]
    if path.startswith("@"):  # Linux abstract namespace: bind itself reports EADDRINUSE
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False  # no file, or a stale one that bind may replace
    return True


_Z85_KEY_CHARS = 40  # a 32-byte Curve25519 key in Z85 text


def _read_key_file(path: str) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a key file written by ``zmq.auth.create_certificates``."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE key file {path}: {exc}") from None
    if any(key is not None and len(key) != _Z85_KEY_CHARS for key in (public, secret)):
        raise ConfigError(f"bad CURVE key file {path}: keys must be {_Z85_KEY_CHARS} Z85 characters")
    return public, secret


@dataclass(frozen=True)
class Curve:
    """ZeroMQ CURVE security for one side of a stream, from key files of `streamflow keys`.

    CURVE (Curve25519 key exchange, then every message encrypted and authenticated)
    is done by libzmq; keys are read and clients vetted by pyzmq's ``zmq.auth``.
    The binding side (server) gives ``authorized_dir``, a folder of the public keys
    (``*.key``) of the receivers it admits; the connecting side (client) gives
    ``server_public_key_file``, the server's public key. Both give their own
    ``secret_key_file`` (``NAME.key_secret``). Bad or missing files are a ConfigError here.
    """

    secret_key_file: str
    authorized_dir: str | None = None
    server_public_key_file: str | None = None
    _keys: tuple[bytes, bytes, bytes | None] = field(init=False, repr=False, compare=False)
    """(public, secret, server public or None), read once here: every socket gets the same keys."""

    def __post_init__(self) -> None:
        if (self.authorized_dir is None) == (self.server_public_key_file is None):
            raise ConfigError("CURVE needs either an authorised-keys folder (binding side) or the server's "
                              "public key file (connecting side), not both or neither")
        public, secret = _read_key_file(self.secret_key_file)
        if secret is None:
            raise ConfigError(f"CURVE key file {self.secret_key_file} holds no secret key "
                              f"(give the NAME.key_secret file, not NAME.key)")
        server = _read_key_file(self.server_public_key_file)[0] if self.server_public_key_file is not None else None
        object.__setattr__(self, "_keys", (public, secret, server))
        if self.authorized_dir is None:
            return
        if not Path(self.authorized_dir).is_dir():
            raise ConfigError(f"CURVE authorised-keys folder {self.authorized_dir} does not exist")
        if not any(Path(self.authorized_dir).glob("*.key")):
            raise ConfigError(f"CURVE authorised-keys folder {self.authorized_dir} holds no public key (*.key)")

    @property
    def is_server(self) -> bool:
        return self.authorized_dir is not None

    def keypair(self) -> tuple[bytes, bytes]:
        """This side's (public, secret) key."""
        return self._keys[0], self._keys[1]

    def secure(self, sock: zmq.Socket, *, binds: bool) -> None:
        """Set the CURVE options of ``sock`` before it binds (server) or connects (client)."""
        if binds != self.is_server:
            raise ConfigError(f"a {'binding' if binds else 'connecting'} socket needs "
                              f"{'an authorised-keys folder' if binds else 'the server public key file'} for CURVE")
        sock.curve_publickey, sock.curve_secretkey = self.keypair()
        if binds:
            sock.curve_server = True
        else:
            sock.curve_serverkey = self._keys[2]

    def authenticator(self, ctx: zmq.Context) -> ThreadAuthenticator:
        """A started ZAP handler for ``ctx`` admitting only the public keys in ``authorized_dir``."""
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=self.authorized_dir or "")
        return auth


def _open(ctx: zmq.Context, socket_type: int, endpoint: str, hwm: int | None, *, binds: bool,
          kernel_buffer: int = 0, curve: Curve | None = None) -> zmq.Socket:
    check_endpoint(endpoint)
    if binds and endpoint.startswith("ipc://") and _ipc_in_use(endpoint):
        raise ConfigError(f"cannot bind {endpoint}: {_IN_USE}")
    sock = ctx.socket(socket_type)
    sock.linger = 0
    if curve is not None:
        curve.secure(sock, binds=binds)
    if hwm is not None:
        sock.sndhwm = hwm
        sock.rcvhwm = hwm
    if kernel_buffer > 0:  # the OS buffers (megabytes on tcp) queue frames beyond the high-water mark
        sock.sndbuf = kernel_buffer
        sock.rcvbuf = kernel_buffer
    try:
        if binds:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        if binds and exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"cannot bind {endpoint}: {_IN_USE}") from None
        raise ConfigError(f"cannot {'bind' if binds else 'connect to'} {endpoint}: {exc.strerror}") from None
    return sock


def bind(ctx: zmq.Context, socket_type: int, endpoint: str, *, hwm: int | None = None,
         kernel_buffer: int = 0, curve: Curve | None = None) -> zmq.Socket:
    """A new socket bound to ``endpoint``; "address in use" and bad endpoints become ConfigError.

    ``kernel_buffer`` > 0 caps the OS send/receive buffers (bytes; 0 keeps the OS default);
    ``curve`` makes it a CURVE server (its context needs :meth:`Curve.authenticator`).
    """
    return _open(ctx, socket_type, endpoint, hwm, binds=True, kernel_buffer=kernel_buffer, curve=curve)


def connect(ctx: zmq.Context, socket_type: int, endpoint: str, *, hwm: int | None = None,
            kernel_buffer: int = 0, curve: Curve | None = None) -> zmq.Socket:
    """A new socket connected to ``endpoint`` (a CURVE client with ``curve``); bad endpoints become ConfigError."""
    return _open(ctx, socket_type, endpoint, hwm, binds=False, kernel_buffer=kernel_buffer, curve=curve)


@dataclass
class EndOfStream:
    """How the handshake went: each acknowledging receiver's name -> its ACK meta (frames, events...)."""

    acks: dict[str, dict[str, Any]]
    seconds: float
    sent: int  # END_OF_STREAM messages sent

    @property
    def acked_events(self) -> int:
        return sum(int(a.get("events", 0)) for a in self.acks.values())


def end_of_stream_meta(frames: int, events: int, streams: dict[int, tuple[int, int]] | None,
                       extra: dict[str, Any] | None) -> dict[str, Any]:
    """An END_OF_STREAM's meta, less "receivers": the sender's totals, each forwarded stream's, ``extra``."""
    meta: dict[str, Any] = {"frames": frames, "events": events, **(extra or {})}
    if streams is not None:
        meta["streams"] = {str(sid): {"frames": f, "events": e} for sid, (f, e) in streams.items()}
    return meta


_P = TypeVar("_P", bound="_SocketPair")


class _SocketPair:
    """A data and a control socket, closed together by ``close()`` or on leaving a ``with`` block."""

    data: zmq.Socket
    control: zmq.Socket
    control_linger_ms = 0

    def close(self) -> None:
        self.data.close(linger=0)
        self.control.close(linger=self.control_linger_ms)

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Sender(_SocketPair):
    """The sending side of a stream: PUSH data socket + ROUTER control socket, both bound.

    Sends block at the high-water mark (nothing is dropped) but wake every 100 ms to
    honour ``stop_event``; ``blocked_s`` is the time spent in sends, which is almost
    all waiting for room in the queue (back-pressure from the receivers). With
    ``curve`` both sockets are CURVE servers and a ZAP thread on ``ctx`` (stopped by
    ``close()``) admits only the authorised receivers.
    """

    ctx: zmq.Context
    endpoint: str = DEFAULT_ENDPOINT
    stream_id: int = 0
    hwm: int = DEFAULT_HWM
    kernel_buffer: int = 0
    curve: Curve | None = None
    frames: int = field(default=0, init=False)
    events: int = field(default=0, init=False)
    blocked_s: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._auth = self.curve.authenticator(self.ctx) if self.curve is not None else None
        try:
            self.data = bind(self.ctx, zmq.PUSH, self.endpoint, hwm=self.hwm, kernel_buffer=self.kernel_buffer,
                             curve=self.curve)
        except ConfigError:
            self._stop_auth()
            raise
        self.data.sndtimeo = _POLL_MS
        try:
            self.control = bind(self.ctx, zmq.ROUTER, control_endpoint(self.endpoint), curve=self.curve)
        except ConfigError:
            self.data.close()
            self._stop_auth()
            raise
        self.control.router_mandatory = 1  # sending to a departed receiver raises EHOSTUNREACH
        self._hellos: dict[bytes, str] = {}
        self._acks: dict[bytes, dict[str, Any]] = {}

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def close(self) -> None:
        super().close()
        self._stop_auth()

    def send(self, parts: list[Any], n_events: int, stop_event: threading.Event | None = None,
             restamp_on_wait: bool = False, give_up_s: float | None = None) -> bool:
        """Send one encoded message (zero-copy), blocking while the queue is full.

        With ``restamp_on_wait`` a message that had to wait gets the time ZeroMQ took it
        as its send time. Returns False, without sending, if ``stop_event`` is set while blocked.
        With ``give_up_s``, a message that finds no room for that long raises
        :class:`DownstreamStuck` (not sent): a receiver that died leaves PUSH with no
        peer, and a wedged one never frees its queue -- either would block forever.
        A slow but live receiver frees room within a frame's processing time, so
        ``give_up_s`` should be far above that (a process's idle timeout).
        """
        waited = time.monotonic()
        while True:
            start = time.perf_counter()
            try:  # blocks at most SNDTIMEO inside ZeroMQ, then looks at stop_event
                self.data.send_multipart(parts, copy=False)
                break
            except zmq.Again:
                if stop_event is not None and stop_event.is_set():
                    return False
                if give_up_s is not None and time.monotonic() - waited > give_up_s:
                    raise DownstreamStuck(f"no receiver took a message from {self.endpoint} for {give_up_s:g} s: "
                                          f"is it running?") from None
                if restamp_on_wait:
                    parts = restamp(parts, time.time_ns())
            finally:
                self.blocked_s += time.perf_counter() - start
        self.frames += 1
        self.events += n_events
        return True

    def send_batch(self, batch: EventBatch, stop_event: threading.Event | None = None) -> bool:
        """Send ``batch`` as the next DATA frame, stamped with its sequence number and send time.

        The send time is when the frame entered the transport: the time it waited for a
        first receiver or for room in a full queue is the producer's, not the pipeline's
        latency (the producer reports it as blocked time).
        """
        parts = encode_data(batch, seq=self.frames, stream_id=self.stream_id, send_ns=time.time_ns())
        return self.send(parts, len(batch), stop_event, restamp_on_wait=True)

    def send_particles(self, particles: ParticleBatch, stop_event: threading.Event | None = None) -> bool:
        """Send ``particles`` as the next RAW frame (stamped like :meth:`send_batch`)."""
        parts = encode_raw(particles, seq=self.frames, stream_id=self.stream_id, send_ns=time.time_ns())
        return self.send(parts, len(particles), stop_event, restamp_on_wait=True)

    def wait_for_receivers(self, n: int, timeout_s: float, stop_event: threading.Event | None = None) -> int:
        """Wait until ``n`` receivers have said HELLO (or ``timeout_s`` passes, or a stop); returns how many did.

        PUSH deals frames only to the receivers connected at the time, so a producer
        whose K receivers start together waits for all K before its first frame: a
        slow starter would otherwise get no share of a short stream."""
        deadline = time.monotonic() + timeout_s
        while len(self._hellos) < n and time.monotonic() < deadline:
            if stop_event is not None and stop_event.is_set():
                break
            self._read_control(50)
        return len(self._hellos)

    def _read_control(self, timeout_ms: int) -> None:
        """Record every HELLO and ACK that arrives within ``timeout_ms``."""
        while self.control.poll(timeout_ms, zmq.POLLIN):
            timeout_ms = 0
            routing_id, *parts = self.control.recv_multipart()
            try:
                msg = decode(parts)
            except WireError:
                continue  # not one of ours; the handshake does not depend on it
            name = f"{msg.meta.get('name', 'receiver')} (pid {msg.meta.get('pid', '?')})"
            if msg.kind in (Kind.HELLO, Kind.ACK):
                self._hellos.setdefault(routing_id, name)
            if msg.kind == Kind.ACK:
                self._acks[routing_id] = msg.meta

    def end_stream(self, timeout_s: float = 10.0, interval_s: float = 0.1,
                   streams: dict[int, tuple[int, int]] | None = None,
                   shared_by: int | None = None, stop_event: threading.Event | None = None,
                   extra: dict[str, Any] | None = None) -> EndOfStream:
        """Send END_OF_STREAM until every receiver that said HELLO (at least one) acknowledged it.

        The meta carries this sender's "frames" and "events" and "receivers": how many
        receivers (said HELLO and are still connected) share the stream, so that each
        can tell the frames PUSH gave the others from lost ones
        (:func:`streamflow.stream.ledger.stream_receivers`); the message is encoded afresh for
        every repeat, since HELLOs can still arrive. ``streams`` (stream id -> (frames,
        events)) is for a sender that forwards other senders' streams (a proxy): the
        meta then also carries each stream's totals under "streams" (read by
        :func:`streamflow.stream.ledger.stream_totals`), since its own counts mix them.
        ``shared_by`` replaces the receiver count, for a sender whose stream is one
        share of a stream split upstream (a scorer's selections, when several scorers
        split the producer's stream). ``extra`` adds keys to the meta. Raises HandshakeError naming the
        silent receivers after ``timeout_s`` -- at most :data:`STOP_HANDSHAKE_S` once ``stop_event`` is
        set, so a process told to stop does not wait long on a receiver that is gone, and at once
        when it was stopped before any receiver said HELLO.
        """
        meta = end_of_stream_meta(self.frames, self.events, streams, extra)
        start = time.monotonic()
        sent = 0
        self._read_control(0)
        self._forget_departed()
        while True:
            eos = encode_control(Kind.END_OF_STREAM, stream_id=self.stream_id, seq=self.frames,
                                 meta={**meta, "receivers": shared_by or max(1, len(self._hellos))},
                                 send_ns=time.time_ns())
            try:
                self.data.send_multipart(eos, flags=zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass  # queues are full or no receiver yet; try again next round
            self._read_control(int(interval_s * 1000))
            self._forget_departed()
            if self._acks and self._hellos.keys() <= self._acks.keys():
                acks = {self._hellos[rid]: meta for rid, meta in self._acks.items()}
                return EndOfStream(acks, time.monotonic() - start, sent)
            if stop_event is not None and stop_event.is_set():
                if not self._hellos:  # stopped before any receiver came: nobody to wait for
                    raise HandshakeError(self._silence(time.monotonic() - start))
                timeout_s = min(timeout_s, STOP_HANDSHAKE_S)
            if time.monotonic() - start > timeout_s:
                raise HandshakeError(self._silence(timeout_s))

    def _forget_departed(self) -> None:
        """Drop receivers that said HELLO but whose connection is gone (a crashed process never ACKs)."""
        for routing_id in [rid for rid in self._hellos if rid not in self._acks]:
            try:
                self.control.send_multipart([routing_id, b""], flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # connected, its queue full: still there
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                del self._hellos[routing_id]

    def _silence(self, timeout_s: float) -> str:
        if not self._hellos:
            return (f"END_OF_STREAM not acknowledged within {timeout_s:.3g} s: no receiver said HELLO "
                    f"on {control_endpoint(self.endpoint)}")
        silent = [name for rid, name in self._hellos.items() if rid not in self._acks]
        return (f"END_OF_STREAM not acknowledged within {timeout_s:g} s by {len(silent)} of "
                f"{len(self._hellos)} receivers: {', '.join(sorted(silent))}")



class CurveRefusals:
    """Under CURVE, whether the sender refused this receiver's key: a sender that refuses a key says so in
    the handshake, and libzmq reports it as an event on ``sock``'s monitor (no monitor without CURVE)."""

    def __init__(self, sock: zmq.Socket, endpoint: str, curve: Curve | None) -> None:
        self.sock, self.endpoint = sock, endpoint
        self._events = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH) if curve is not None else None

    def check(self) -> None:
        """ConfigError if the sender's authenticator refused this receiver's CURVE key."""
        if self._events is not None and self._events.poll(0):
            raise ConfigError(f"{self.endpoint} refused this receiver's CURVE key: its public key is not in "
                              f"the producer's authorised-keys folder")

    def close(self) -> None:
        if self._events is not None:
            self.sock.disable_monitor()
            self._events.close(linger=0)
            self._events = None


@dataclass
class Receiver(_SocketPair):
    """The receiving side: PULL on the data endpoint, DEALER to the sender's control socket.

    Says HELLO on creation. :meth:`handle` (or :meth:`recv`) decodes a message,
    counts frames, events and rejected (undecodable) messages, and answers an
    END_OF_STREAM with an ACK carrying those counts; it never raises on a bad frame.
    With ``curve`` both sockets are CURVE clients of the sender, and a receive that
    finds no frame raises ConfigError if the sender refused this receiver's key.
    """

    ctx: zmq.Context
    endpoint: str = DEFAULT_ENDPOINT
    name: str = "receiver"
    hwm: int = DEFAULT_HWM
    kernel_buffer: int = 0
    curve: Curve | None = None
    frames: int = field(default=0, init=False)
    events: int = field(default=0, init=False)
    rejected: int = field(default=0, init=False)
    last_error: str | None = field(default=None, init=False)
    control_linger_ms = 1000  # closing gives a just-sent ACK up to a second to leave

    def __post_init__(self) -> None:
        self.data = connect(self.ctx, zmq.PULL, self.endpoint, hwm=self.hwm, kernel_buffer=self.kernel_buffer,
                            curve=self.curve)
        self._rcvtimeo = -1
        self.control = connect(self.ctx, zmq.DEALER, control_endpoint(self.endpoint), curve=self.curve)
        self._refusals = CurveRefusals(self.data, self.endpoint, self.curve)
        self._say(Kind.HELLO, 0, 0)

    def close(self) -> None:
        self._refusals.close()
        super().close()

    def _say(self, kind: Kind, stream_id: int, seq: int) -> None:
        meta = {"name": self.name, "pid": os.getpid(), "frames": self.frames, "events": self.events,
                "rejected": self.rejected}
        try:
            self.control.send_multipart(encode_control(kind, stream_id=stream_id, seq=seq, meta=meta,
                                                       send_ns=time.time_ns()), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # the sender repeats END_OF_STREAM, so a lost ACK is answered again

    def handle(self, parts: list[Any]) -> Message | None:
        """Decode one received message; None (and counted in ``rejected``) if it is bad.

        Returns END_OF_STREAM messages too, after acknowledging them: a loop stops there.
        """
        try:
            msg = decode(parts)
        except WireError as exc:
            self.rejected += 1
            self.last_error = str(exc)
            return None
        if msg.kind == Kind.END_OF_STREAM:
            self._say(Kind.ACK, msg.stream_id, msg.seq)
        elif msg.kind in (Kind.DATA, Kind.SELECTION, Kind.RAW):
            self.frames += 1
            self.events += msg.n_events
        return msg

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """The next valid message, or None if none came within ``timeout_ms`` (None: wait forever)."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            wait = _POLL_MS if deadline is None else max(0, round((deadline - time.monotonic()) * 1000))
            if wait != self._rcvtimeo:  # a blocking receive with a timeout: no poll call per frame
                self.data.rcvtimeo = self._rcvtimeo = wait
            try:
                parts = self.data.recv_multipart(copy=False)
            except zmq.Again:
                self._refusals.check()
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            msg = self.handle(parts)
            if msg is not None:
                return msg

