"""The telemetry hub: many publishers in, many subscribers out, so several watchers see the same telemetry.

Every process of a run publishes its telemetry records on a PUB socket that
*connects* to one endpoint. Whoever binds that endpoint hears them; a plain SUB
there (``streamflow monitor`` on its own) is the only listener there can be. The
hub binds it with an XSUB socket instead and republishes every message on an
XPUB socket bound at a second endpoint, where any number of subscribers --
dashboards (``streamflow monitor --connect``), Prometheus exporters
(``--metrics-port``), a logger -- connect and each receive every record:

    producer PUB ─┐                           ┌─> SUB monitor (dashboard)
    scorer   PUB ─┼─> XSUB [hub] XPUB ────────┼─> SUB monitor --metrics-port (exporter)
    sink     PUB ─┘  publish      subscribe   └─> ...

The forwarding is ZeroMQ's own proxy (:func:`zmq.proxy_steerable`, in a thread),
which also carries the subscribers' subscriptions upstream, so a publisher sends
nothing while no one listens. Subscribers may come and go at any time; as with
any PUB/SUB, a subscriber hears the records published after its subscription has
reached the publishers (a few milliseconds after it connects), none before. The
hub does not buffer, decode or count the records: each subscriber's own message
counter ``n`` (see :class:`~streamflow.stream.telemetry.TelemetryReporter`)
shows it what it missed. Both endpoints are ordinary ZeroMQ endpoints: tcp ones
work across hosts.

``streamflow run`` runs a hub in its own process (publish at base port + 4,
subscribe at + 5); ``streamflow telemetry-hub`` runs one for processes started
by hand.
"""

from __future__ import annotations

import threading

import zmq

from streamflow.errors import ConfigError
from streamflow.stream.transport import bind

DEFAULT_SUBSCRIBE_ENDPOINT = "tcp://127.0.0.1:5560"


class TelemetryHub:
    """An XSUB (publishers connect to ``publish``) -> XPUB (subscribers connect to ``subscribe``) forwarder.

    Binds both endpoints at construction (a busy or bad endpoint is a
    ConfigError, nothing left open) and forwards in a background thread until
    :meth:`close`. Usable as a context manager.
    """

    def __init__(self, publish: str, subscribe: str) -> None:
        self.publish, self.subscribe = publish, subscribe
        self._ctx = zmq.Context()
        opened: list[zmq.Socket] = []
        try:
            opened.append(bind(self._ctx, zmq.XSUB, publish))
            opened.append(bind(self._ctx, zmq.XPUB, subscribe))
        except ConfigError:
            for sock in opened:
                sock.close(linger=0)
            self._ctx.term()
            raise
        self._frontend, self._backend = opened
        self._control_address = f"inproc://telemetry-hub-{id(self)}"
        self._control = self._ctx.socket(zmq.PAIR)
        self._control.bind(self._control_address)
        self._thread = threading.Thread(target=self._forward, name="telemetry-hub", daemon=True)
        self._thread.start()

    def _forward(self) -> None:
        control = self._ctx.socket(zmq.PAIR)
        control.connect(self._control_address)
        try:
            zmq.proxy_steerable(self._frontend, self._backend, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            control.close(linger=0)

    def close(self) -> None:
        """Stop forwarding and close both sockets (idempotent)."""
        if self._thread.is_alive():
            self._control.send(b"TERMINATE")
            self._thread.join()
        for sock in (self._control, self._frontend, self._backend):
            sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> TelemetryHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
