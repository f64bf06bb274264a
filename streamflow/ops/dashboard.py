"""The live monitor's logic: telemetry messages -> a dashboard (rich) or one plain line.

Every process of a run (producer, scorer(s), sink) publishes a small JSON stats
message about twice a second (:mod:`streamflow.stream.telemetry`). :class:`MonitorState`
folds them into the latest view of each process, with a short history of each
learner's loss (for sparklines), its learnt fraction since the previous message
(scored vs learned_from), and of each process's blocked time (to tell
whether it is growing). :func:`render` draws that state as a dashboard that fits
80x24; :func:`plain_line` as one line of text for logs and pipes; :func:`warnings`
lists what needs a human's attention. No sockets here: the process loop is
``consumers/monitor.py``.

Messages are told apart by :func:`streamflow.stream.telemetry.record_kind`. Every
key of a message is optional and may be null (NaN travels as null): a missing
value is drawn as "-", never an error.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from streamflow.stream.telemetry import record_kind

STALE_S = 3.0  # a process silent this long is "quiet"; a silent producer beside a live scorer has stalled
BLOCKED_WINDOW_S = 3.0  # blocked time is judged over this recent window...
BLOCKED_WARN_FRACTION = 0.05  # ...and warned about when it grew by more than this fraction of it
LOSS_HISTORY = 48  # loss values kept per learner (the sparkline shows the newest ones that fit)
SPARK_WIDTH = 12
MAX_WARNINGS = 4  # warning rows on the dashboard (the rest are counted)
ACCEPT_TOLERANCE = 0.25  # achieved accept fraction within 25 % of the target is drawn green
TREND_WIDTH = 6  # the lines table's loss sparkline (the latest loss value is in the report)
PARTIAL_BELOW = 0.999  # a line whose learner scored less than this fraction of the events is marked "*"
PARTIAL_NOTE = "* scores only part of the stream; of all, eff_s and SIC count all events"

_SPARK = "▁▂▃▄▅▆▇█"


def lookup(message: Any, *keys: str) -> Any:
    """A nested value of a message (``lookup(m, "latency", "p99_ms")``), None if any level is missing."""
    for key in keys:
        if not isinstance(message, dict):
            return None
        message = message.get(key)
    return message


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, null, NaN, text, bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fmt_count(value: Any) -> str:
    """1234 -> "1.2k", 3.4e6 -> "3.4M"; "-" when missing."""
    x = number(value)
    if x is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}" if x != int(x) else str(int(x))


def fmt_ms(value: Any) -> str:
    """Milliseconds with three significant digits ("12.3", "0.412"); "-" when missing."""
    x = number(value)
    return "-" if x is None else f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def fmt_fraction(value: Any) -> str:
    """A fraction as a percentage with two decimals ("1.02%"), three below 0.1 %; "-" when missing."""
    x = number(value)
    if x is None:
        return "-"
    return f"{x * 100:.2f}%" if abs(x) >= 1e-3 or x == 0 else f"{x * 100:.3f}%"


def fmt_learnt(value: Any) -> str:
    """A learnt fraction as a whole percentage ("35%"); "-" when missing."""
    x = number(value)
    return "-" if x is None else f"{x:.0%}"


def fmt_value(value: Any, digits: int = 4) -> str:
    """A score, threshold or loss with ``digits`` significant digits; "-" when missing."""
    x = number(value)
    return "-" if x is None else f"{x:.{digits}g}"


def sparkline(values: Iterable[Any], width: int = SPARK_WIDTH) -> str:
    """The newest ``width`` finite values as block characters scaled from their min to their max."""
    finite = [x for x in (number(v) for v in values) if x is not None][-width:]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    if high == low:
        return "▄" * len(finite)  # a flat line at half height
    top = len(_SPARK) - 1
    return "".join(_SPARK[round((x - low) / (high - low) * top)] for x in finite)


@dataclass
class ProcessView:
    """The latest message of one process, and the little history the dashboard needs."""

    kind: str
    role: str
    pid: int | None
    message: dict[str, Any]
    first_seen: float
    last_seen: float
    messages: int = 0
    dropped: int = 0  # gaps in the process's message counter "n": messages its PUB socket dropped
    blocked: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=64))
    losses: dict[str, deque[float | None]] = field(default_factory=dict)
    learnt: dict[str, float | None] = field(default_factory=dict)
    """Per learner the fraction of the events scored since the previous message that it learnt from."""
    _learn_counts: dict[str, tuple[float, float]] = field(default_factory=dict)

    def get(self, *keys: str) -> Any:
        """A nested value of the latest message (``get("latency", "p99_ms")``), None if missing."""
        return lookup(self.message, *keys)

    def lines(self) -> list[dict[str, Any]]:
        lines = self.message.get("lines")
        return [line for line in lines if isinstance(line, dict)] if isinstance(lines, list) else []

    def learners(self) -> dict[str, dict[str, Any]]:
        learners = self.message.get("learners")
        if not isinstance(learners, dict):
            return {}
        return {str(name): stats for name, stats in learners.items() if isinstance(stats, dict)}

    def blocked_growth(self, now: float, window: float = BLOCKED_WINDOW_S) -> tuple[float, float]:
        """(seconds of blocking added, seconds elapsed) over about the last ``window`` seconds."""
        recent = [(t, b) for t, b in self.blocked if t >= now - window]
        if len(recent) < 2:
            return 0.0, 0.0
        # Measure from the last sample before the window, so a window holds at least one full step.
        older = [(t, b) for t, b in self.blocked if t < now - window]
        start = older[-1] if older else recent[0]
        return recent[-1][1] - start[1], recent[-1][0] - start[0]


class MonitorState:
    """Everything the monitor knows: the latest view of every process that has reported.

    Processes are told apart by (role, pid), so two scorers, or a scorer that was
    restarted, show as separate rows. Times are ``time.monotonic()`` values of the
    monitor's own clock (when a message *arrived*), passed in so tests control them.
    """

    def __init__(self, endpoint: str = "", started: float = 0.0) -> None:
        self.endpoint = endpoint
        self.started = started
        self.processes: dict[tuple[str, int | None], ProcessView] = {}
        self.messages = 0
        self.unreadable = 0
        self.last_message: float | None = None
        self.exit_reason = ""  # why the monitor loop ended: quit, duration, idle, stopped

    def feed(self, payload: bytes, now: float) -> bool:
        """Decode one telemetry message and fold it in; an unreadable one is counted and ignored."""
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            message = None
        if not isinstance(message, dict):
            self.unreadable += 1
            return False
        self.update(message, now)
        return True

    def update(self, message: dict[str, Any], now: float) -> None:
        """Fold one decoded stats message in, arriving at monotonic time ``now``."""
        role = str(message.get("role") or record_kind(message))
        pid_number = number(message.get("pid"))
        pid = int(pid_number) if pid_number is not None else None
        key = (role, pid)
        view = self.processes.get(key)
        if view is None:
            view = self.processes[key] = ProcessView(record_kind(message), role, pid, message, now, now)
        sent, last_sent = number(message.get("n")), number(view.message.get("n"))
        if sent is not None and last_sent is not None and view.messages and sent > last_sent + 1:
            view.dropped += int(sent - last_sent - 1)
        view.message, view.last_seen, view.kind = message, now, record_kind(message)
        view.messages += 1
        blocked = number(message.get("blocked_s"))
        if blocked is not None:
            view.blocked.append((now, blocked))
        for name, stats in view.learners().items():
            view.losses.setdefault(name, deque(maxlen=LOSS_HISTORY)).append(number(stats.get("loss")))
            scored, learned = number(stats.get("scored")), number(stats.get("learned_from"))
            if scored is not None and learned is not None:
                before_scored, before_learned = view._learn_counts.get(name, (0.0, 0.0))
                if scored > before_scored:  # a message without new events keeps the last fraction
                    view.learnt[name] = (learned - before_learned) / (scored - before_scored)
                view._learn_counts[name] = (scored, learned)
        self.messages += 1
        self.last_message = now

    def views(self, kind: str | None = None) -> list[ProcessView]:
        """Processes in stage order (producer, scorer, sink, others), oldest first within a stage."""
        order = {"producer": 0, "scorer": 1, "sink": 2}
        views = sorted(self.processes.values(), key=lambda v: (order.get(v.kind, 3), v.first_seen))
        return [v for v in views if kind is None or v.kind == kind]

    def label(self, view: ProcessView) -> str:
        """The role, with the pid when another process has the same role."""
        same = sum(1 for v in self.processes.values() if v.role == view.role)
        return view.role if same == 1 or view.pid is None else f"{view.role}:{view.pid}"


def problems(label: str, message: dict[str, Any]) -> list[tuple[str, str]]:
    """(severity, text) for the trouble counters of one stats message: sequence gaps, reordered
    or duplicated frames, rejected messages, skipped learning steps, dropped rows."""
    def count(*keys: str) -> int:
        return int(number(lookup(message, *keys)) or 0)

    found = []
    gaps, reordered, duplicates = (count("sequence", k) for k in ("gaps", "reordered", "duplicates"))
    if gaps:
        found.append(("error", f"{label}: {gaps} frames missing (sequence gaps)"))
    if reordered or duplicates:
        found.append(("warn", f"{label}: {reordered} frames reordered, {duplicates} duplicated"))
    if count("rejected"):
        found.append(("error", f"{label}: {count('rejected')} rejected messages (bad frames)"))
    learners = message.get("learners")
    for name in (learners if isinstance(learners, dict) else ()):
        skipped, dropped = count("learners", name, "skipped"), count("learners", name, "dropped")
        if skipped:
            found.append(("warn", f"{name}: {skipped} learning steps skipped (non-finite loss or gradient)"))
        if dropped:
            found.append(("warn", f"{name}: {dropped} non-finite rows dropped from learning"))
    return found


def warnings(state: MonitorState, now: float) -> list[tuple[str, str]]:
    """(severity, text) of everything worth a human's attention; severity "error" or "warn"."""
    found: list[tuple[str, str]] = []
    for view in state.views():
        label = state.label(view)
        found += problems(label, view.message)
        if view.dropped:
            found.append(("warn", f"{label}: {view.dropped} telemetry messages dropped on the way to the monitor"))
        grown, elapsed = view.blocked_growth(now)
        if elapsed > 0 and grown > BLOCKED_WARN_FRACTION * elapsed and now - view.last_seen <= STALE_S:
            found.append(("warn", f"{label}: blocked {grown:.1f} s of the last {elapsed:.0f} s "
                                  "(the next stage is slower)"))
    producers, scorers = state.views("producer"), state.views("scorer")
    live_scorers = [s for s in scorers if now - s.last_seen <= STALE_S]
    sending = [p for p in producers if not p.get("sent_all") and not p.get("final")]
    if sending and live_scorers:  # a producer that sent its last frame may rightly be silent
        newest = max(p.last_seen for p in sending)
        if now - newest > STALE_S:
            found.append(("error", f"producer stalled: no message for {now - newest:.0f} s "
                                   f"while {state.label(live_scorers[0])} runs"))
    if state.unreadable:
        found.append(("warn", f"{state.unreadable} unreadable telemetry messages ignored"))
    return found


def _stage_notes(state: MonitorState, view: ProcessView, now: float) -> Text:
    notes: list[str] = []
    if view.kind == "producer" and view.get("source") is not None:
        notes.append(str(view.get("source")))
    if view.kind == "scorer":
        if view.get("device") is not None:
            notes.append(str(view.get("device")))
        if view.get("accepted") is not None:
            notes.append(f"acc {fmt_count(view.get('accepted'))}")
    if view.kind == "sink":
        notes.append(f"wrote {fmt_count(view.get('written'))}")
        if number(view.get("pending")):
            notes.append(f"pend {fmt_count(view.get('pending'))}")
    if number(view.get("rejected_events")):  # a reco worker's events without two jets (or bad input)
        notes.append(f"rej {fmt_count(view.get('rejected_events'))}")
    blocked = number(view.get("blocked_s"))
    if blocked:
        notes.append(f"blk {blocked:.1f}s")
    if view.kind == "producer" and view.get("sent_all"):
        notes.append("all sent")
    text = Text(", ".join(notes))
    silent = now - view.last_seen
    if silent > STALE_S and not view.get("sent_all"):
        text.append(f" quiet {silent:.0f}s", style="yellow")
    return text


def _stage_table(state: MonitorState, now: float) -> Table:
    table = Table(box=None, padding=(0, 1), header_style="bold cyan", pad_edge=False)
    table.add_column("stage", no_wrap=True, overflow="ellipsis", max_width=16)
    for name in ("events", "ev/s", "p50 ms", "p99 ms"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("notes", no_wrap=True, overflow="ellipsis", max_width=32)
    for view in state.views():
        table.add_row(
            state.label(view), fmt_count(view.get("events")), fmt_count(view.get("events_per_s")),
            fmt_ms(view.get("latency", "p50_ms")), fmt_ms(view.get("latency", "p99_ms")),
            _stage_notes(state, view, now),
        )
    return table


def _accept_cell(line: dict[str, Any]) -> Text:
    target, achieved = number(line.get("q")), number(line.get("achieved"))
    if line.get("warm") is False:
        return Text(f"warm-up/{fmt_fraction(target)}", style="dim")
    text = f"{fmt_fraction(achieved)}/{fmt_fraction(target)}" + (" L" if line.get("learner_warming_up") else "")
    if achieved is None or target is None or target == 0:
        return Text(text)
    close = abs(achieved / target - 1.0) <= ACCEPT_TOLERANCE
    return Text(text, style="green" if close else "yellow")


def _partial(line: dict[str, Any]) -> bool:
    """True for a line whose learner scores only some events (e.g. CWoLA outside its sidebands)."""
    scored = number(line.get("scored_fraction"))
    return scored is not None and scored < PARTIAL_BELOW


def _unique_cell(line: dict[str, Any], events: Any) -> str:
    """The fraction of the scorer's events that this line alone recorded (its unique rate); "-" if unknown."""
    unique, total = number(line.get("unique")), number(events)
    return fmt_fraction(unique / total) if unique is not None and total else "-"


def _line_rows(state: MonitorState) -> list[tuple[str, ...] | tuple[Any, ...]]:
    """One row per trigger line of every scorer: threshold, accept fraction of its scored events vs
    target, of all events, eff_S and SIC on all events and on the signal region, the learner's loss trend."""
    scorers = state.views("scorer")
    rows: list[tuple[Any, ...]] = []
    for view in scorers:
        prefix = f"{state.label(view)}/" if len(scorers) > 1 else ""
        learners = view.learners()
        shown: set[str] = set()
        for line in view.lines():
            learner = str(line.get("learner") or line.get("name") or "")
            shown.add(learner)
            rows.append((
                prefix + str(line.get("name") or learner), fmt_value(line.get("threshold")), _accept_cell(line),
                fmt_fraction(line.get("stream_fraction")) + ("*" if _partial(line) else ""),
                fmt_value(line.get("eff_s"), 3), fmt_value(line.get("sic"), 3),
                fmt_value(line.get("sr_eff_s"), 3), fmt_value(line.get("sr_sic"), 3),
                _trend_cell(view, learner),
            ))
        for learner in learners:  # learners that no line reads still show their loss
            if learner not in shown:
                rows.append((prefix + f"({learner})", "-", Text("-"), "-", "-", "-", "-", "-",
                             _trend_cell(view, learner)))
    return rows


def decoupled(view: ProcessView) -> bool:
    """A scorer that learns in a learner thread (learn other than "all"): it may learn from only some events."""
    return view.get("learn") not in (None, "all")


def _trend_cell(view: ProcessView, learner: str) -> str:
    """The learner's loss sparkline, after its learnt fraction when the scorer has a learner thread."""
    if not decoupled(view):
        return sparkline(view.losses.get(learner, ()), TREND_WIDTH)
    learnt = fmt_learnt(view.learnt.get(learner))
    return f"{learnt:>4} " + sparkline(view.losses.get(learner, ()), TREND_WIDTH - 5)


def _lines_table(rows: list[tuple[Any, ...]], hidden: int, learnt: bool = False) -> Table:
    table = Table(box=None, padding=(0, 1), header_style="bold cyan", pad_edge=False)
    table.add_column("line", no_wrap=True, overflow="ellipsis", max_width=14)
    table.add_column("thresh", justify="right", no_wrap=True)
    table.add_column("acc/target", justify="right", no_wrap=True)
    table.add_column("of all", justify="right", no_wrap=True)
    table.add_column("eff_s", justify="right", no_wrap=True)
    table.add_column("SIC", justify="right", no_wrap=True)
    table.add_column("SR eff", justify="right", no_wrap=True)
    table.add_column("SR SIC", justify="right", no_wrap=True)
    table.add_column("learnt" if learnt else "loss", no_wrap=True, style="magenta", max_width=TREND_WIDTH)
    for row in rows:
        table.add_row(*row)
    if hidden:
        table.add_row(Text(f"... {hidden} more", style="dim"), *[""] * (len(table.columns) - 1))
    return table


def _header(state: MonitorState, now: float) -> Text:
    text = Text("streamflow monitor", style="bold")
    text.append(f"  {state.endpoint}", style="dim")
    text.append(f"  t={now - state.started:.1f}s  {len(state.processes)} proc  {state.messages} msgs")
    return text


def render(state: MonitorState, now: float, height: int | None = None) -> RenderableType:
    """The dashboard: stages (rates, latency), trigger lines (threshold, accept rate vs target, the
    fraction of all events taken, eff_S and SIC on all events and in the signal region, learner loss
    trend, after the share of the events scored since the last message that the learner learnt from
    when the scorer has a learner thread) and warnings, cut to ``height`` rows if given."""
    if not state.processes:
        return Group(_header(state, now), Text(f"waiting for telemetry on {state.endpoint} ...", style="dim"))
    found = warnings(state, now)
    rows = _line_rows(state)
    partial = any(_partial(line) for view in state.views("scorer") for line in view.lines())
    warn_rows = min(len(found), MAX_WARNINGS) + (len(found) > MAX_WARNINGS)
    # header, stage header + stages, blank, lines header, [note], blank + warnings
    fixed = 1 + 1 + len(state.processes) + 1 + 1 + int(partial) + (1 + warn_rows if found else 0)
    room = len(rows) if height is None else max(height - fixed, 1)
    hidden = 0
    if len(rows) > room:
        hidden = len(rows) - (room - 1)
        rows = rows[: room - 1]
    parts: list[RenderableType] = [_header(state, now), _stage_table(state, now), Text("")]
    if rows or hidden:
        parts.append(_lines_table(rows, hidden, any(decoupled(view) for view in state.views("scorer"))))
        if partial:
            parts.append(Text(PARTIAL_NOTE, style="dim", no_wrap=True, overflow="ellipsis"))
    if found:
        parts.append(Text(""))
        for severity, message in found[:MAX_WARNINGS]:
            parts.append(Text(f"! {message}", style="bold red" if severity == "error" else "yellow",
                              no_wrap=True, overflow="ellipsis"))
        if len(found) > MAX_WARNINGS:
            parts.append(Text(f"! ... {len(found) - MAX_WARNINGS} more warnings", style="yellow"))
    return Group(*parts)


def plain_line(state: MonitorState, now: float) -> str:
    """The state as one line: rates and latency per stage, accept fraction vs target per line, warnings.

    ``t=3.0s producer 120k ev/s | scorer 118k ev/s p50 4.1 p99 12.3 ms | sink 4.7k ev/s |
    lines flow_m 1.02%/1%, ae warm-up | warn: ...``
    """
    parts = []
    for view in state.views():
        stage = f"{state.label(view)} {fmt_count(view.get('events_per_s'))} ev/s"
        p50, p99 = number(view.get("latency", "p50_ms")), number(view.get("latency", "p99_ms"))
        if p50 is not None or p99 is not None:
            stage += f" p50 {fmt_ms(p50)} p99 {fmt_ms(p99)} ms"
        if view.get("sent_all"):
            stage += " (all sent)"
        elif now - view.last_seen > STALE_S:
            stage += f" (quiet {now - view.last_seen:.0f}s)"
        parts.append(stage)
    scorers = state.views("scorer")
    lines = []
    for view in scorers:
        prefix = f"{state.label(view)}/" if len(scorers) > 1 else ""
        for line in view.lines():
            name = prefix + str(line.get("name") or line.get("learner") or "?")
            target = fmt_fraction(line.get("q"))
            if line.get("warm") is False:
                lines.append(f"{name} warm-up/{target}")
            else:
                sic, sr_sic = number(line.get("sic")), number(line.get("sr_sic"))
                unique = _unique_cell(line, view.get("events"))
                lines.append(f"{name} {fmt_fraction(line.get('achieved'))}/{target}"
                             + (f" of all {fmt_fraction(line.get('stream_fraction'))}" if _partial(line) else "")
                             + (" learner warm-up" if line.get("learner_warming_up") else "")
                             + (f" uniq {unique}" if unique != "-" else "")
                             + (f" SIC {sic:.3g}" if sic is not None else "")
                             + (f" SR SIC {sr_sic:.3g}" if sr_sic is not None else ""))
    if lines:
        parts.append("lines " + ", ".join(lines))
    learnt = []
    for view in scorers:
        if decoupled(view):
            prefix = f"{state.label(view)}/" if len(scorers) > 1 else ""
            learnt += [f"{prefix}{name} {fmt_learnt(fraction)}" for name, fraction in view.learnt.items()]
    if learnt:
        parts.append("learnt " + ", ".join(learnt))
    found = warnings(state, now)
    if found:
        parts.append("warn: " + "; ".join(text for _, text in found))
    if not state.processes:
        parts.append(f"waiting for telemetry on {state.endpoint}")
    return f"t={now - state.started:.1f}s " + " | ".join(parts)
