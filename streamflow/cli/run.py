"""`streamflow run`: the whole pipeline in one command.

Starts the sink, the scorer and the producer as separate processes on local
sockets, runs the live monitor in this (parent) process, waits for the stream
to end, prints the ledger and writes the report. Ctrl-C (or ``q`` in the
monitor, or ``--duration``) stops the producer first; its END_OF_STREAM then
drains the scorer and the sink in order, so checkpoints and files are complete.
A child that fails stops the others.

Endpoints, from ``base_port`` P on 127.0.0.1: producer data P (control P+1),
scorer selections P+2 (control P+3), monitor telemetry P+4.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing as mp
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from typing import TYPE_CHECKING

from streamflow.cli.outputs import output_folder
from streamflow.cli.replay import parse_rate
from consumers.sink import SinkConfig, run_sink
from producers.replay import ReplayConfig, run_replay
from streamflow.config import from_dict, read_toml, to_dict
from streamflow.errors import ConfigError, StreamflowError
from streamflow.stream.ledger import Ledger
from streamflow.ops.telemetry import RateMeter, TelemetryReporter

if TYPE_CHECKING:  # torch-heavy: imported where used, so the producer and sink processes stay light
    from streamflow.scoring.frame_scorer import ScorerConfig

DEFAULT_EVENTS = 1_000_000
CHILD_HWM = 4  # frames queued per socket: bounds latency and the drain after a stop
CHILD_KERNEL_BUFFER = 256 * 1024  # bytes; tcp's default megabytes would queue ~30 more frames
EOS_TIMEOUT_S = 120.0  # the scorer acknowledges END_OF_STREAM only after draining its queue


@dataclass(frozen=True)
class RunOptions:
    """The ``[run]`` table: where and how the pipeline runs."""

    run_dir: str | None = None
    base_port: int = 5555
    monitor: bool = True
    plain: bool = False
    report: bool = True
    duration: float | None = None
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        if not 1024 <= self.base_port <= 65530:
            raise ConfigError(f"base port must be in [1024, 65530], got {self.base_port}")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"duration must be positive seconds, got {self.duration}")

    def endpoint(self, offset: int) -> str:
        return f"tcp://127.0.0.1:{self.base_port + offset}"


@dataclass(frozen=True)
class RunConfig:
    """A whole run: ``[run]``, ``[replay]`` and ``[scorer]`` tables of one TOML file."""

    run: RunOptions
    replay: ReplayConfig
    scorer: ScorerConfig

    def to_tables(self) -> dict[str, Any]:
        return {"run": to_dict(self.run), "replay": to_dict(self.replay), "scorer": self.scorer.to_tables()}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="producer + scorer + sink + monitor in one command (the main job)",
        description="Replay a stream (by default the embedded synthetic LHCO-like stream with 1%% signal), "
                    "train the default menu online, trigger at q = 1%%, write selections, checkpoints, "
                    "telemetry and a report to a run folder.",
    )
    p.add_argument("--config", metavar="TOML", help="a run config with [run], [replay] and [scorer] tables")
    p.add_argument("--source", help="synthetic (default), gaussian, or an LHCO features/raw HDF5 file")
    p.add_argument("--events", type=int, help=f"events to replay (streamed: any number; default {DEFAULT_EVENTS:,})")
    p.add_argument("--rate", help="events/s, or max (default max)")
    p.add_argument("--frame-size", type=int, help="events per frame, 1 to 1,048,576 (default 4096)")
    p.add_argument("--signal-fraction", type=float, help="signal fraction of the stream (default 0.01)")
    p.add_argument("--seed", type=int, help="seed of the source and the injection (default 0)")
    p.add_argument("--preset", help="learner menu: lhco or gaussian (default: the one that fits the source)")
    p.add_argument("--learners", help="comma-separated learner names of the preset to keep (default: all)")
    p.add_argument("--q", type=float, help="accept fraction of every line (default 0.01)")
    p.add_argument("--device", help="auto (CUDA if present), cpu or cuda[:N] (default auto)")
    p.add_argument("--threads", type=int, help="the scorer's torch CPU threads (default: all cores but three)")
    p.add_argument("--run-dir", help="run folder (default runs/<date-time>)")
    p.add_argument("--base-port", type=int, help="first of five local tcp ports (default 5555)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--no-monitor", action="store_true", help="no live dashboard")
    p.add_argument("--plain", action="store_true", help="plain monitor lines instead of the dashboard")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.set_defaults(func=main)


def build_config(args: argparse.Namespace) -> RunConfig:
    """The run config: the TOML file's tables, then the command-line options on top."""
    from streamflow.scoring.presets import preset, preset_for_source
    from streamflow.scoring.frame_scorer import ScorerConfig

    tables = read_toml(args.config) if args.config else {}
    where = args.config or "run"
    run = from_dict(RunOptions, tables.get("run", {}), f"{where}[run]")
    replay_table = {"events": DEFAULT_EVENTS, "signal_fraction": 0.01, **tables.get("replay", {})}
    overrides = {"source": args.source, "events": args.events, "frame_size": args.frame_size,
                 "signal_fraction": args.signal_fraction, "seed": args.seed}
    replay_table.update({k: v for k, v in overrides.items() if v is not None})
    if args.rate is not None:
        replay_table["rate"] = parse_rate(args.rate)
    if replay_table.get("source", "synthetic") == "gaussian" and "signal_fraction" not in tables.get("replay", {}) \
            and args.signal_fraction is None:
        replay_table["signal_fraction"] = None  # the toy's own 10%-of-background signal
    replay = from_dict(ReplayConfig, replay_table, f"{where}[replay]")
    if "scorer" in tables and args.preset is None:
        scorer = ScorerConfig.from_tables(tables["scorer"], where=f"{where}[scorer]")
    else:
        scorer = preset(args.preset or preset_for_source(replay.source), q=args.q or 0.01)
    if args.learners:
        scorer = _keep_learners(scorer, args.learners.split(","))
    if args.device:
        scorer = dataclasses.replace(scorer, device=args.device)
    if args.threads is not None:
        scorer = dataclasses.replace(scorer, threads=args.threads)
    run_overrides = {"run_dir": args.run_dir, "base_port": args.base_port, "duration": args.duration}
    run = dataclasses.replace(run, **{k: v for k, v in run_overrides.items() if v is not None})
    if args.no_monitor:
        run = dataclasses.replace(run, monitor=False)
    if args.plain:
        run = dataclasses.replace(run, plain=True)
    if args.no_report:
        run = dataclasses.replace(run, report=False)
    if run.run_dir is None:
        run = dataclasses.replace(run, run_dir=str(Path("runs") / time.strftime("%Y%m%d-%H%M%S")))
    replay = dataclasses.replace(replay, endpoint=run.endpoint(0), hwm=CHILD_HWM,
                                 kernel_buffer=CHILD_KERNEL_BUFFER, eos_timeout=EOS_TIMEOUT_S)
    return RunConfig(run=run, replay=replay, scorer=scorer)


def _keep_learners(scorer: ScorerConfig, names: list[str]) -> ScorerConfig:
    known = [c.name for c in scorer.learners]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--learners: {unknown[0]!r} is not in this menu (known: {', '.join(known)})")
    return dataclasses.replace(
        scorer, learners=tuple(c for c in scorer.learners if c.name in names),
        lines=tuple(line for line in scorer.lines if line.learner in names),
    )


def _child(role: str, errors: Any, target: Callable[..., Any], *args: Any) -> None:
    """A pipeline process: stops on SIGTERM (the parent orders the stop); a StreamflowError goes to
    the parent on ``errors`` (it says the first one, once) and the exit code is 2."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        target(*args, stop)
    except StreamflowError as exc:
        errors.put((time.time(), role, str(exc)))
        sys.exit(2)


def _produce(config: ReplayConfig, run_dir: str, telemetry: str, stop: threading.Event) -> None:
    import zmq

    from streamflow.stream.transport import connect

    ctx = zmq.Context()
    pub = connect(ctx, zmq.PUB, telemetry)
    reporter = TelemetryReporter("producer", publish=pub.send, jsonl_path=Path(run_dir) / "telemetry-producer.jsonl")
    rates = RateMeter()

    def progress(events: int, frames: int, sent_all: bool) -> None:
        rates.add(events - rates.events, frames - rates.frames)

        def message() -> dict[str, Any]:
            return {"events": events, "frames": frames, **rates.rates(), "source": config.source,
                    "sent_all": sent_all}

        if sent_all:  # the last frame is out: say so now, the receivers may drain their queues for a while
            reporter.report(message())
        else:
            reporter.maybe_report(message)

    try:
        stats = run_replay(config, stop, progress)
        reporter.report({"events": stats.events, "frames": stats.frames, "events_per_s": stats.rate,
                         "blocked_s": stats.blocked_s, "source": config.source, "final": True})
        ledger = Ledger()
        ledger.add("sent", stats.events, f"{stats.frames} frames by the producer"
                   + ("; stopped early" if stats.stopped else ""))
        ledger.details.update(eos_acks=stats.eos.acks)
        ledger.write(Path(run_dir) / "ledger-producer.json")
    finally:
        reporter.close()
        pub.close(linger=0)
        ctx.destroy(linger=0)


def _start(role: str, errors: Any, target: Callable[..., Any], *args: Any) -> mp.Process:
    process = mp.get_context("spawn").Process(target=_child, args=(role, errors, target, *args), name=role,
                                              daemon=False)
    process.start()
    return process


@dataclass(frozen=True)
class PipelineResult:
    """How the pipeline's processes ended: each one's exit code, and one line saying why it failed.

    error: the first error a child reported (role: message) -- the cause; the others'
    failures follow from it and are not repeated -- else, for a child that died
    without a word (killed by a signal), its exit; None when every child exited 0.
    """

    codes: dict[str, int | None]
    error: str | None


def _pipeline_error(codes: dict[str, int | None], reported: list[tuple[float, str, str]]) -> str | None:
    if reported:
        _, role, message = min(reported)
        return f"{role}: {message}"
    failed = [(role, code) for role, code in codes.items() if code != 0]
    if not failed:
        return None
    role, code = failed[0]
    return f"{role} {'was killed by signal ' + str(-code) if code is not None and code < 0 else f'exited with {code}'}"


def run_pipeline(config: RunConfig, *, console_monitor: Callable[..., Any] | None = None) -> PipelineResult:
    """Run the pipeline to the end of its stream (or a stop: Ctrl-C, SIGTERM, a failed child).

    SIGTERM to this process stops the pipeline like Ctrl-C (when called from the main thread).
    """
    from consumers.scorer import ConsumeConfig, run_consume

    run, run_dir = config.run, Path(config.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(config.to_tables(), indent=2, default=str) + "\n")
    telemetry = run.endpoint(4)
    sink = SinkConfig(endpoint=run.endpoint(2), telemetry=telemetry, run_dir=str(run_dir))
    scorer = ConsumeConfig(scorer=config.scorer, endpoint=run.endpoint(0), selections=run.endpoint(2),
                           telemetry=telemetry, run_dir=str(run_dir), checkpoint_every=run.checkpoint_every,
                           hwm=CHILD_HWM, kernel_buffer=CHILD_KERNEL_BUFFER)
    stop = threading.Event()
    errors = mp.get_context("spawn").SimpleQueue()
    children = {
        "sink": _start("sink", errors, functools.partial(run_sink, run_config=config.to_tables()), sink),
        "scorer": _start("scorer", errors, run_consume, scorer),
        "producer": _start("producer", errors, _produce, config.replay, str(run_dir), telemetry),
    }
    supervisor = threading.Thread(target=_supervise, args=(children, stop, run.duration), daemon=True)
    supervisor.start()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main else None
    try:
        if console_monitor is not None:
            console_monitor(telemetry, stop)  # returns once ``stop`` is set, or early on q
        else:
            while not stop.wait(0.2):
                pass
    except KeyboardInterrupt:
        print("streamflow: stopping: the producer ends the stream, the rest drains", file=sys.stderr)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the stop below is already under way
    try:
        _stop_all(children)
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting for a clean end
        for process in children.values():
            process.kill()
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    codes = {role: p.exitcode for role, p in children.items()}
    return PipelineResult(codes, _pipeline_error(codes, reported))


def _supervise(children: dict[str, mp.Process], stop: threading.Event, duration: float | None) -> None:
    """Set ``stop`` when every child has exited, or one failed, or ``duration`` has passed."""
    start = time.monotonic()
    while any(p.is_alive() for p in children.values()):
        if any(p.exitcode not in (None, 0) for p in children.values()):
            break
        if duration is not None and time.monotonic() - start > duration:
            break
        time.sleep(0.1)
    stop.set()


STOP_GRACE_S = 15.0
"""How long the children of a stopped pipeline get to drain and exit by themselves."""


def _stop_all(children: dict[str, mp.Process], grace_s: float = STOP_GRACE_S) -> None:
    """Stop in stream order: end the producer's stream, let the scorer and sink drain and exit.

    Only the producer is told to stop; END_OF_STREAM then finishes the scorer and the
    sink by themselves (signalling a process that is already finishing could kill it
    during interpreter shutdown). If a child failed, the rest are told to stop at once.
    Whatever is still running ``grace_s`` after the stop began is terminated (SIGTERM:
    it stops within its 10 s handshake limit), then killed: at most about 30 s in all.
    """
    failed = any(p.exitcode not in (None, 0) for p in children.values())
    deadline = time.monotonic() + grace_s
    for role in ("producer", "scorer", "sink"):
        process = children[role]
        if process.is_alive() and (failed or role == "producer"):
            process.terminate()  # SIGTERM: the child finishes cleanly
        process.join(max(0.0, deadline - time.monotonic()))
    for process in children.values():
        if process.is_alive():
            process.terminate()
    for process in children.values():
        process.join(12.0)
        if process.is_alive():
            process.kill()
            process.join(5.0)


def combined_ledger(run_dir: Path) -> Ledger:
    """The stage-by-stage account of a run, from each process's ledger file."""
    ledger = Ledger()
    for role in ("producer", "scorer", "sink"):
        path = run_dir / f"ledger-{role}.json"
        if path.exists():
            for stage in json.loads(path.read_text())["stages"]:
                ledger.add(stage["name"], stage["events"], stage["note"])
        else:
            ledger.add(f"{role}: no ledger", 0, "the process did not finish cleanly")
    return ledger


def main(args: argparse.Namespace) -> int:
    config = build_config(args)
    assert config.run.run_dir is not None  # build_config names one
    output_folder(config.run.run_dir, "--run-dir")
    monitor = _monitor_runner(config.run) if config.run.monitor else None
    result = run_pipeline(config, console_monitor=monitor)
    run_dir = Path(config.run.run_dir)
    ledger = combined_ledger(run_dir)
    ledger.write(run_dir / "ledger.json")
    print(ledger.render())
    if config.run.report and result.error is None:
        from streamflow.ops.report import make_report

        print(f"report: {make_report(run_dir)}")
    print(f"run folder: {run_dir}")
    if result.error is not None:
        raise StreamflowError(result.error)
    return 0


def _monitor_runner(run: RunOptions) -> Callable[[str, threading.Event], Any]:
    from consumers.monitor import run_monitor

    def monitor(endpoint: str, stop: threading.Event) -> None:
        run_monitor(endpoint, plain=run.plain or not sys.stdout.isatty(), stop_event=stop,
                    interval=0.5 if sys.stdout.isatty() else 5.0)

    return monitor
