"""`streamflow run`: the whole pipeline in one command.

Starts the sink, the scorer and the producer as separate processes on local
sockets, runs the live monitor in this (parent) process, waits for the stream
to end, prints the ledger and writes the report. Ctrl-C (or ``q`` in the
monitor, or ``--duration``) stops the producer first; its END_OF_STREAM then
drains the scorer and the sink in order, so checkpoints and files are complete.
A child that fails stops the others.

Endpoints, from ``base_port`` P on 127.0.0.1: producer data P (control P+1),
scorer selections P+2 (control P+3), telemetry P+4: every process publishes
there to this process's telemetry hub (:mod:`consumers.telemetry_hub`), which
republishes on P+5 for the live monitor and any other subscriber
(``streamflow monitor --connect tcp://127.0.0.1:P+5``, with or without
``--metrics-port``), all side by side.

With ``--reco-workers K`` the source is a raw LHCO particle file: the producer
sends RAW frames, K reconstruction workers (consumers/reco.py) share them and
send feature frames on P+6+2k (k = 0..K-1, control one above), joined for the
scorer by a proxy on P+6+2K when K > 1. The ledger then runs through the reco
stage: received, reconstructed, rejected by reason, per worker.

With ``--acked`` both hops use acknowledged delivery (streamflow.stream.delivery):
the producer keeps every frame until the scorer acknowledges it, the scorer keeps
every selection until the sink has committed it, and acknowledges the frame
upstream only then. The producer's window and buffer are both ``ack_window``
frames (:data:`RUN_ACK_WINDOW` by default): the frames queued anywhere between the
producer and the scorer are at most that many, as the PUSH path's one-frame
queues bound them, so frame latency stays bounded at any input rate; a wider
window only buys slack against the sink's commit pauses.
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
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from consumers.sink import SinkConfig, run_sink
from consumers.telemetry_hub import TelemetryHub
from producers.replay import ReplayConfig, run_replay
from streamflow.cli.outputs import output_folder
from streamflow.cli.replay import delivery_line, parse_rate
from streamflow.cli.scorer_options import add_scorer_options, apply_scorer_options, scorer_menu
from streamflow.config import from_dict, read_toml, to_dict
from streamflow.errors import ConfigError, StreamflowError
from streamflow.stream.delivery import MAX_WINDOW, DeliveryConfig
from streamflow.stream.ledger import Ledger
from streamflow.stream.telemetry import ProducerRecord, RateMeter, TelemetryReporter

if TYPE_CHECKING:  # torch-heavy: imported where used, so the producer and sink processes stay light
    from streamflow.scoring.frame_scorer import ScorerConfig

DEFAULT_EVENTS = 1_000_000
RUN_LEARN: Literal["budget"] = "budget"
"""``streamflow run``'s learning policy unless its [scorer] table or --learn says otherwise."""
CHILD_HWM = 1  # frames queued per socket: bounds latency and the drain after a stop
CHILD_KERNEL_BUFFER = 64 * 1024  # bytes; tcp's default megabytes would queue ~30 more frames
EOS_TIMEOUT_S = 120.0  # the scorer acknowledges END_OF_STREAM only after draining its queue
MAX_RECO_WORKERS = 64
RUN_ACK_WINDOW = 4
"""``--acked``: frames the scorer may hold unacknowledged, and the producer keeps for redelivery. A frame
is acknowledged once the sink committed its selection, so the window must cover the frame being scored
plus those waiting for the sink's commit (it commits after ``CONFIRM_IDLE_MS`` without a selection):
a window of 1-2 leaves the scorer waiting for frames, each frame more adds a frame's scoring time to the
worst latency."""
_STAGE_RANK = {"producer": 0, "reco": 1, "reco-proxy": 2, "scorer": 3, "sink": 4}


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
    reco_workers: int = 0
    acked: bool = False
    ack_window: int = RUN_ACK_WINDOW

    def __post_init__(self) -> None:
        if not 1 <= self.ack_window <= MAX_WINDOW:
            raise ConfigError(f"ack window must be 1 to {MAX_WINDOW} frames, got {self.ack_window}")
        if self.acked and self.reco_workers:
            raise ConfigError("--acked with --reco-workers is not supported: the reco workers forward frames "
                              "by PUSH, so acknowledged delivery would end at them")
        if not 1024 <= self.base_port <= 65530:
            raise ConfigError(f"base port must be in [1024, 65530], got {self.base_port}")
        if not 0 <= self.reco_workers <= MAX_RECO_WORKERS:
            raise ConfigError(f"reco workers must be in [0, {MAX_RECO_WORKERS}], got {self.reco_workers}")
        if self.base_port + 7 + 2 * self.reco_workers > 65535:
            raise ConfigError(f"base port {self.base_port} leaves no room for {self.reco_workers} reco workers' ports")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"duration must be positive seconds, got {self.duration}")

    def endpoint(self, offset: int) -> str:
        return f"tcp://127.0.0.1:{self.base_port + offset}"

    @property
    def folder(self) -> Path:
        """The run folder; ``build_config`` resolves the default (runs/<date-time>) before anything runs."""
        if self.run_dir is None:
            raise StreamflowError("the run folder is not set (build_config resolves it)")
        return Path(self.run_dir)


@dataclass(frozen=True)
class RunConfig:
    """A whole run: ``[run]``, ``[replay]`` and ``[scorer]`` tables of one TOML file."""

    run: RunOptions
    replay: ReplayConfig
    scorer: ScorerConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="producer + scorer + sink + monitor in one command (the main job)",
        description="Replay a stream (by default the embedded synthetic LHCO-like stream with 1% signal), "
                    "train the default menu online, trigger at q = 1%, write selections, checkpoints, "
                    "telemetry and a report to a run folder.",
    )
    p.add_argument("--config", metavar="TOML", help="a run config with [run], [replay] and [scorer] tables")
    p.add_argument("--source", help="synthetic (default), gaussian, or an LHCO features/raw HDF5 file")
    p.add_argument("--events", type=int, help=f"events to replay (streamed: any number; default {DEFAULT_EVENTS:,})")
    p.add_argument("--rate", help="events/s, or max (default max)")
    p.add_argument("--frame-size", type=int, help="events per frame, 1 to 1,048,576 (default 4096)")
    p.add_argument("--signal-fraction", type=float, help="signal fraction of the stream (default 0.01)")
    p.add_argument("--seed", type=int, help="seed of the source and the injection (default 0)")
    p.add_argument("--preset", help="learner menu: lhco, lhco-density (lhco and the density-flow lines) or gaussian "
                   "(default: the one that fits the source)")
    p.add_argument("--learners", help="comma-separated learner names of the preset to keep (default: all)")
    add_scorer_options(p, "q", "budget", "zero_bias", "device", "threads", "learn", "refresh_frames",
                       note="; given, it replaces the --config file's value")
    p.add_argument("--run-dir", help="run folder (default runs/<date-time>)")
    p.add_argument("--base-port", type=int, help="first of six local tcp ports (default 5555)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--no-monitor", action="store_true", help="no live dashboard")
    p.add_argument("--plain", action="store_true", help="plain monitor lines instead of the dashboard")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--reco-workers", type=int, metavar="K",
                   help="reconstruct a raw LHCO particle file with K worker processes (default 0: the source "
                        "holds features)")
    p.add_argument("--loop", action="store_true", help="replay a file source again and again (ids stay unique)")
    p.add_argument("--acked", action="store_true",
                   help="acknowledged delivery on both hops (producer -> scorer -> sink): a killed scorer or "
                        "sink loses no event")
    p.add_argument("--ack-window", type=int, metavar="FRAMES",
                   help=f"with --acked: frames the scorer holds unacknowledged, 1 to {MAX_WINDOW} "
                        f"(default {RUN_ACK_WINDOW}: each frame more adds a frame's scoring time to the latency)")
    p.set_defaults(func=main)


def build_config(args: argparse.Namespace) -> RunConfig:
    """The run config: the TOML file's tables, then the command-line options on top."""
    from streamflow.scoring.presets import preset_for_source

    tables = read_toml(args.config) if args.config else {}
    where = args.config or "run"
    run = from_dict(RunOptions, tables.get("run", {}), f"{where}[run]")
    replay_table = {"events": DEFAULT_EVENTS, "signal_fraction": 0.01, **tables.get("replay", {})}
    overrides = {"source": args.source, "events": args.events, "frame_size": args.frame_size,
                 "signal_fraction": args.signal_fraction, "seed": args.seed}
    replay_table.update({k: v for k, v in overrides.items() if v is not None})
    if args.rate is not None:
        replay_table["rate"] = parse_rate(args.rate)
    if args.loop:
        replay_table["loop"] = True
    if (args.reco_workers or tables.get("run", {}).get("reco_workers")) and args.signal_fraction is None \
            and "signal_fraction" not in tables.get("replay", {}):
        replay_table["signal_fraction"] = None  # raw frames replay the file as it is
    if replay_table.get("source", "synthetic") == "gaussian" and "signal_fraction" not in tables.get("replay", {}) \
            and args.signal_fraction is None:
        replay_table["signal_fraction"] = None  # the toy's own 10%-of-background signal
    replay = from_dict(ReplayConfig, replay_table, f"{where}[replay]")
    scorer = scorer_menu(args.preset, tables.get("scorer"), f"{where}[scorer]", preset_for_source(replay.source))
    if args.learners is not None:
        scorer = _keep_learners(scorer, args.learners.split(","))
    if "learn" not in tables.get("scorer", {}):  # the main job never falls behind its input
        scorer = dataclasses.replace(scorer, learn=RUN_LEARN)
    scorer = apply_scorer_options(scorer, args)
    run_overrides = {"run_dir": args.run_dir, "base_port": args.base_port, "duration": args.duration,
                     "reco_workers": args.reco_workers, "acked": args.acked or None, "ack_window": args.ack_window}
    run = dataclasses.replace(run, **{k: v for k, v in run_overrides.items() if v is not None})
    if args.no_monitor:
        run = dataclasses.replace(run, monitor=False)
    if args.plain:
        run = dataclasses.replace(run, plain=True)
    if args.no_report:
        run = dataclasses.replace(run, report=False)
    if run.run_dir is None:
        run = dataclasses.replace(run, run_dir=str(Path("runs") / time.strftime("%Y%m%d-%H%M%S")))
    _check_reco_source(replay.source, run.reco_workers)
    replay = dataclasses.replace(replay, endpoint=run.endpoint(0), hwm=CHILD_HWM,
                                 kernel_buffer=CHILD_KERNEL_BUFFER, eos_timeout=EOS_TIMEOUT_S,
                                 raw=run.reco_workers > 0)
    if run.acked:  # the buffer is the window: no frame waits in the producer for a receiver's credit
        replay = dataclasses.replace(replay, delivery=DeliveryConfig(window=run.ack_window,
                                                                     max_unacked=run.ack_window))
    return RunConfig(run=run, replay=replay, scorer=scorer)


def _check_reco_source(source: str, reco_workers: int) -> None:
    """A raw particle file needs reco workers, and reco workers need one (ConfigError before anything starts)."""
    from streamflow.events.lhco_raw import LHCORawFile
    from streamflow.events.sources import GENERATOR_OPTIONS, open_file

    raw = source not in GENERATOR_OPTIONS and isinstance(open_file(Path(source)), LHCORawFile)
    if raw and not reco_workers:
        raise ConfigError(f"{source} holds particles, not features: reconstruct them with --reco-workers K")
    if reco_workers and not raw:
        raise ConfigError(f"--reco-workers reconstructs a raw LHCO particle file; {source} is not one")


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

        def message() -> ProducerRecord:
            events_per_s, frames_per_s = rates.rates()
            return ProducerRecord(events=events, frames=frames, events_per_s=events_per_s, frames_per_s=frames_per_s,
                                  source=config.source, sent_all=sent_all)

        if sent_all:  # the last frame is out: say so now, the receivers may drain their queues for a while
            reporter.report(message())
        else:
            reporter.maybe_report(message)

    try:
        stats = run_replay(config, stop, progress)
        reporter.report(ProducerRecord(events=stats.events, frames=stats.frames, events_per_s=stats.rate,
                                       blocked_s=stats.blocked_s, source=config.source, final=True))
        ledger = Ledger()
        ledger.add("sent", stats.events, f"{stats.frames} frames by the producer"
                   + ("; stopped early" if stats.stopped else ""))
        ledger.details.update(eos_acks=stats.eos.acks)
        if stats.delivery is not None:
            ledger.details.update(delivery=stats.delivery.to_dict())
            ledger.notes.append(f"producer: {delivery_line(stats.delivery)}")
        ledger.write(Path(run_dir) / "ledger-producer.json")
    finally:
        reporter.close()
        pub.close(linger=0)
        ctx.destroy(linger=0)


def _start(role: str, errors: Any, target: Callable[..., Any], *args: Any) -> BaseProcess:
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

    run, run_dir = config.run, config.run.folder
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(to_dict(config), indent=2, default=str) + "\n")
    telemetry = run.endpoint(4)
    hub = TelemetryHub(telemetry, run.endpoint(5))  # before the children: their records have a listener
    sink = SinkConfig(endpoint=run.endpoint(2), telemetry=telemetry, run_dir=str(run_dir), acked=run.acked)
    scorer = ConsumeConfig(scorer=config.scorer, endpoint=run.endpoint(0), selections=run.endpoint(2),
                           telemetry=telemetry, run_dir=str(run_dir), checkpoint_every=run.checkpoint_every,
                           hwm=CHILD_HWM, kernel_buffer=CHILD_KERNEL_BUFFER, acked=run.acked,
                           ack_window=run.ack_window)
    stop = threading.Event()
    errors = mp.get_context("spawn").SimpleQueue()
    children = {"sink": _start("sink", errors, functools.partial(run_sink, run_config=to_dict(config)), sink)}
    if run.reco_workers:
        scorer = dataclasses.replace(scorer, endpoint=_start_reco(children, errors, run, str(run_dir), telemetry))
    children["scorer"] = _start("scorer", errors, run_consume, scorer)
    # every reco worker gets a share; acknowledged, the first frames wait for the scorer's HELLO, not in its queue
    replay = dataclasses.replace(config.replay, receivers=max(run.reco_workers, int(run.acked)))
    children["producer"] = _start("producer", errors, _produce, replay, str(run_dir), telemetry)
    supervisor = threading.Thread(target=_supervise, args=(children, stop, run.duration), daemon=True)
    supervisor.start()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main else None
    try:
        if console_monitor is not None:
            console_monitor(hub.subscribe, stop)  # returns once ``stop`` is set, or early on q
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
        hub.close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    codes = {role: p.exitcode for role, p in children.items()}
    return PipelineResult(codes, _pipeline_error(codes, reported))


def _start_reco(children: dict[str, BaseProcess], errors: Any, run: RunOptions, run_dir: str, telemetry: str) -> str:
    """Start the K reco workers (and the proxy joining them when K > 1); the endpoint the scorer reads."""
    from consumers.reco import RecoWorkerConfig, run_reco_worker
    from producers.proxy import ProxyConfig

    outputs = [run.endpoint(6 + 2 * k) for k in range(run.reco_workers)]
    for k, output in enumerate(outputs):
        worker = RecoWorkerConfig(endpoint=run.endpoint(0), output=output, stream_id=k + 1, name=f"reco-{k}",
                                  telemetry=telemetry, run_dir=run_dir, hwm=CHILD_HWM,
                                  kernel_buffer=CHILD_KERNEL_BUFFER, eos_timeout=EOS_TIMEOUT_S)
        children[worker.name] = _start(worker.name, errors, run_reco_worker, worker)
    if len(outputs) == 1:
        return outputs[0]
    proxy = ProxyConfig(upstream=tuple(outputs), endpoint=run.endpoint(6 + 2 * len(outputs)), stream_id=0,
                        hwm=CHILD_HWM, kernel_buffer=CHILD_KERNEL_BUFFER, eos_timeout=EOS_TIMEOUT_S,
                        name="reco-proxy")
    children["reco-proxy"] = _start("reco-proxy", errors, _join_workers, proxy, run_dir)
    return proxy.endpoint


def _join_workers(config: Any, run_dir: str, stop: threading.Event) -> None:
    """The proxy that merges the reco workers' streams for the scorer; its ledger goes to the run folder."""
    from producers.proxy import ProxyError, run_proxy

    try:
        stats = run_proxy(config, stop)
    except ProxyError as exc:
        exc.stats.ledger().write(Path(run_dir) / f"ledger-{config.name}.json")
        raise
    stats.ledger().write(Path(run_dir) / f"ledger-{config.name}.json")


def _stream_order(children: dict[str, BaseProcess]) -> list[str]:
    """The roles from the source to the sink: producer, reco workers, their proxy, scorer, sink."""
    return sorted(children, key=lambda role: (_STAGE_RANK.get(role, _STAGE_RANK["reco"]), role))


def _supervise(children: dict[str, BaseProcess], stop: threading.Event, duration: float | None) -> None:
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


def _stop_all(children: dict[str, BaseProcess], grace_s: float = STOP_GRACE_S) -> None:
    """Stop in stream order: end the producer's stream, let the scorer and sink drain and exit.

    Only the producer is told to stop; END_OF_STREAM then finishes the scorer and the
    sink by themselves (signalling a process that is already finishing could kill it
    during interpreter shutdown). If a child failed, the rest are told to stop at once.
    Whatever is still running ``grace_s`` after the stop began is terminated (SIGTERM:
    it stops within its 10 s handshake limit), then killed: at most about 30 s in all.
    """
    failed = any(p.exitcode not in (None, 0) for p in children.values())
    deadline = time.monotonic() + grace_s
    for role in _stream_order(children):
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
    """The stage-by-stage account of a run, from each process's ledger file.

    The reco workers' ledgers (a run with a reco stage) are summed into one "reco
    received" and one "reconstructed" stage, with a line per worker under the table.
    """
    ledger = Ledger()
    for role in ("producer", "reco", "scorer", "sink"):
        if role == "reco":
            _add_reco_stages(ledger, run_dir)
            continue
        path = run_dir / f"ledger-{role}.json"
        if path.exists():
            data = json.loads(path.read_text())
            for stage in data["stages"]:
                ledger.add(stage["name"], stage["events"], stage["note"])
            if role == "producer":  # acknowledged delivery's account
                ledger.notes += data["notes"]
        else:
            ledger.add(f"{role}: no ledger", 0, "the process did not finish cleanly")
    return ledger


def _add_reco_stages(ledger: Ledger, run_dir: Path) -> None:
    paths = sorted(p for p in run_dir.glob("ledger-reco-*.json") if p.stem != "ledger-reco-proxy")
    if not paths:
        return
    workers = {p.stem.removeprefix("ledger-"): json.loads(p.read_text()) for p in paths}
    received = sum(w["stages"][0]["events"] for w in workers.values())
    reconstructed = sum(w["stages"][1]["events"] for w in workers.values())
    rejected: dict[str, int] = {}
    for worker in workers.values():
        for reason, count in worker.get("rejected", {}).items():
            rejected[reason] = rejected.get(reason, 0) + count
    reasons = ", ".join(f"{reason} {count:,d}" for reason, count in rejected.items() if count)
    ledger.add("reco received", received, f"by {len(workers)} reco workers")
    ledger.add("reconstructed", reconstructed,
               f"rejected {sum(rejected.values()):,d}" + (f": {reasons}" if reasons else ""))
    for name, worker in workers.items():
        ledger.notes.append(f"{name}: received {worker['stages'][0]['events']:,d}, reconstructed "
                            f"{worker['stages'][1]['events']:,d}; {worker['stages'][1]['note']}")


def main(args: argparse.Namespace) -> int:
    config = build_config(args)
    assert config.run.run_dir is not None  # build_config names one
    output_folder(config.run.run_dir, "--run-dir")
    monitor = _monitor_runner(config.run) if config.run.monitor else None
    result = run_pipeline(config, console_monitor=monitor)
    run_dir = config.run.folder
    ledger = combined_ledger(run_dir)
    ledger.write(run_dir / "ledger.json")
    print(ledger.render())
    if result.error is None:
        from streamflow.ops.run_folder import load_run
        from streamflow.ops.summary import write_summary

        print(f"summary: {write_summary(load_run(run_dir))}")
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
                    interval=0.5 if sys.stdout.isatty() else 5.0, connect_to_hub=True)

    return monitor
