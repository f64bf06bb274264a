"""The monitor process loop: a SUB socket on the telemetry endpoint -> a live dashboard or plain lines.

On its own the monitor *binds* the telemetry endpoint (default
tcp://127.0.0.1:5559) and every process of a run connects a PUB socket to it, so
processes can come and go in any order -- and it is the one listener. With
``connect`` it instead connects to a telemetry hub's subscriber endpoint
(:mod:`consumers.telemetry_hub`; ``streamflow run`` runs one), beside any number
of other monitors and exporters that all receive every record. Each JSON message is folded into a
:class:`~streamflow.ops.dashboard.MonitorState`; the state is drawn four times a
second with one :class:`rich.live.Live` on a terminal, or printed as one plain
line every ``interval`` seconds otherwise (a pipe, a log file, ``plain=True``).

It ends on ``q`` (stdin read in cbreak mode when it is a terminal, restored on
exit), when ``stop_event`` is set (Ctrl-C in the CLI, the end of the run in
``streamflow run``), after ``duration`` seconds, or after ``idle_exit`` seconds
without a message once at least one has arrived: processes send nothing special
when they end, so silence is how the monitor learns the run is over.
"""

from __future__ import annotations

import json
import os
import sys
import termios
import threading
import time
import tty
from contextlib import AbstractContextManager, nullcontext

import zmq
from rich.console import Console
from rich.live import Live

from streamflow.errors import ConfigError
from streamflow.ops.dashboard import MonitorState, plain_line, render
from streamflow.ops.prometheus import MetricsExporter, start_exporter
from streamflow.stream.transport import bind, connect

DEFAULT_TELEMETRY_ENDPOINT = "tcp://127.0.0.1:5559"
LIVE_REFRESH_S = 0.25  # the dashboard is redrawn 4 times a second
POLL_MS = 50  # how often the loop looks at its stop conditions while no message arrives


class _Keys:
    """A terminal's stdin in cbreak mode (each key arrives at once, unechoed; Ctrl-C still signals),
    restored exactly as found on :meth:`close`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)

    def quit_pressed(self) -> bool:
        """Read the keys waiting on stdin; True if one of them is q (or stdin was closed)."""
        data = os.read(self.fd, 1024)
        return not data or b"q" in data.lower()

    def close(self) -> None:
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)


def _open_keys(plain: bool) -> _Keys | None:
    if plain or not sys.stdin.isatty():
        return None
    try:
        return _Keys(sys.stdin.fileno())
    except (termios.error, OSError, ValueError):
        return None  # stdin is not a usable terminal after all: no key handling


def run_monitor(
    endpoint: str = DEFAULT_TELEMETRY_ENDPOINT,
    *,
    plain: bool = False,
    duration: float | None = None,
    idle_exit: float | None = None,
    stop_event: threading.Event | None = None,
    console: Console | None = None,
    interval: float = 1.0,
    metrics_port: int | None = None,
    connect_to_hub: bool = False,
) -> MonitorState:
    """Show the telemetry arriving on ``endpoint`` until q, ``stop_event``, ``duration`` or ``idle_exit``.

    plain: one text line per ``interval`` seconds instead of the dashboard (also
    chosen when ``console`` is not a terminal). Returns the final state, whose
    ``exit_reason`` says why it ended ("quit", "stopped", "duration" or "idle").
    A bad or busy endpoint raises ConfigError before anything is drawn.
    metrics_port: also serve every process's telemetry as Prometheus metrics there
    (:mod:`streamflow.ops.prometheus`, ``process`` label = the record's role).
    connect_to_hub: ``endpoint`` is a telemetry hub's subscriber endpoint, to
    connect to (else the publishers' endpoint, bound here).
    """
    console = console or Console()
    plain = plain or not console.is_terminal
    stop_event = stop_event or threading.Event()
    ctx = zmq.Context()
    sub = (connect if connect_to_hub else bind)(ctx, zmq.SUB, endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        exporter = start_exporter("monitor", metrics_port, by_role=True)
    except ConfigError:
        sub.close(linger=0)
        ctx.term()
        raise
    start = time.monotonic()
    state = MonitorState(endpoint, started=start)
    keys = _open_keys(plain)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    if keys is not None:
        poller.register(keys.fd, zmq.POLLIN)
    period = interval if plain else LIVE_REFRESH_S
    live: AbstractContextManager[Live | None] = nullcontext() if plain else Live(
        render(state, start, console.height), console=console, auto_refresh=False, screen=False,
        transient=False, redirect_stdout=False, redirect_stderr=False, vertical_overflow="ellipsis",
    )

    def draw(display: Live | None, now: float) -> None:
        if display is None:
            console.print(plain_line(state, now), markup=False, highlight=False, soft_wrap=True)
        else:
            display.update(render(state, now, console.height), refresh=True)

    try:
        with live as display:
            next_draw = start + period
            while True:
                ready = dict(poller.poll(POLL_MS))
                now = time.monotonic()
                if sub in ready:
                    while True:  # drain everything queued: the dashboard shows the latest state
                        try:
                            payload = sub.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        state.feed(payload, now)
                        if exporter is not None:
                            _export(exporter, payload)
                if keys is not None and keys.fd in ready and keys.quit_pressed():
                    state.exit_reason = "quit"
                elif stop_event.is_set():
                    state.exit_reason = "stopped"
                elif duration is not None and now - start >= duration:
                    state.exit_reason = "duration"
                elif idle_exit is not None and state.last_message is not None \
                        and now - state.last_message >= idle_exit:
                    state.exit_reason = "idle"
                if state.exit_reason:
                    draw(display, now)
                    break
                if now >= next_draw:
                    draw(display, now)
                    next_draw = max(next_draw + period, now)
    finally:
        if keys is not None:
            keys.close()
        sub.close(linger=0)
        ctx.term()
        if exporter is not None:
            exporter.close()
    return state


def _export(exporter: MetricsExporter, payload: bytes) -> None:
    """Hand a telemetry message to the exporter (one that is not a JSON object is the dashboard's to flag)."""
    try:
        message = json.loads(payload)
    except ValueError:
        return
    if isinstance(message, dict):
        exporter.observe(message)
