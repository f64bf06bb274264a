"""`streamflow consume`: run a scorer (learners + trigger) on a producer's stream."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from typing import TYPE_CHECKING

from streamflow.cli.common import curve_options, curves_from_args, stop_on_signals
from streamflow.cli.outputs import output_folder
from streamflow.config import read_toml
from streamflow.errors import ConfigError
from streamflow.stream.transport import DEFAULT_ENDPOINT, DEFAULT_HWM, MAX_HWM, MAX_KERNEL_BUFFER

if TYPE_CHECKING:
    from streamflow.scoring.frame_scorer import ScorerConfig

MAX_LOCAL_RANKS = 64
"""The most ranks ``--ranks`` starts on one machine (one process each); beyond, use torchrun across hosts."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "consume", help="score, trigger and learn on a stream (the scorer process)",
        description="Pull frames from a producer; score each frame with every learner, select the most "
                    "anomalous events per trigger line, then learn from the frame (test-then-train).",
    )
    p.add_argument("--config", metavar="TOML", help="a run config: its [scorer] table (learners, lines) "
                   "replaces the preset")
    p.add_argument("--preset", default="lhco", help="built-in menu when no --config: lhco or gaussian (default lhco)")
    p.add_argument("--q", type=float, default=0.01, help="accept fraction of each preset line (default 0.01)")
    p.add_argument("--window", type=int, default=20_000, help="rolling-quantile window in events, at most 10,000,000 "
                   "(default 20000)")
    p.add_argument("--warmup", type=int, default=None, help="events before a line accepts anything (default: window)")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"producer data endpoint (default {DEFAULT_ENDPOINT})")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N] (default auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads, at most 1024 (default: all cores but three, at least one)")
    p.add_argument("--ranks", type=int, default=1, metavar="K",
                   help="run K data-parallel scorer ranks on this machine that hold one model (gloo on CPU, "
                        f"NCCL on CUDA), at most {MAX_LOCAL_RANKS}; across machines use torchrun (default 1)")
    p.add_argument("--thresholds", choices=("rank", "global"), default="rank",
                   help="under torchrun: each rank's lines use its own windows (rank, default) or all ranks "
                        "sum their windows' histograms each frame and apply one threshold (global; the "
                        "preset's lines then use the histogram estimator)")
    p.add_argument("--threshold-sync", type=int, default=1, metavar="FRAMES",
                   help="with --thresholds global: sum the ranks' histograms every N rounds (default 1)")
    p.add_argument("--learn-events", type=int, default=0, metavar="N",
                   help="learn once N scored events have accumulated, at most 10,000,000 (0: after every frame; "
                        "default 0)")
    p.add_argument("--selections", metavar="ENDPOINT", default=None,
                   help="bind here and push accepted events to a sink (default: none)")
    p.add_argument("--telemetry", metavar="ENDPOINT", default=None,
                   help="publish stats to a monitor listening here (default: only the run folder)")
    p.add_argument("--run-dir", default=".", help="folder for checkpoint, telemetry and ledger (default .)")
    p.add_argument("--name", default="scorer", help="this scorer's name in files and telemetry (default scorer)")
    p.add_argument("--checkpoint-every", type=int, default=200, metavar="FRAMES",
                   help="checkpoint every N frames (under torchrun: rounds of up to one frame per rank), "
                        "and always at exit (0: only at exit; default 200)")
    p.add_argument("--resume", action="store_true", help="start from the run folder's checkpoint if there is one")
    p.add_argument("--idle-timeout", type=float, default=60.0, metavar="S",
                   help="give up after S seconds without a frame (default 60)")
    p.add_argument("--hwm", type=int, default=DEFAULT_HWM, metavar="FRAMES",
                   help=f"frames queued on the receiving socket, 1 to {MAX_HWM:,} (default {DEFAULT_HWM})")
    p.add_argument("--kernel-buffer", type=int, default=0, metavar="BYTES",
                   help=f"cap the OS socket buffers, at most {MAX_KERNEL_BUFFER:,} bytes: fewer frames queued, "
                        "lower latency, smaller crash window (default 0: the OS default)")
    curve_options(p, connects_to="producer (or proxy)", binds="the --selections socket (the sinks' keys)")
    p.set_defaults(func=main)


def scorer_config(args: argparse.Namespace) -> ScorerConfig:
    """The scorer's learners and lines: the config file's [scorer] table, else the preset."""
    from streamflow.scoring.presets import preset
    from streamflow.scoring.frame_scorer import ScorerConfig

    if args.config:
        config = ScorerConfig.from_tables(read_toml(args.config).get("scorer", {}), where=f"{args.config}[scorer]")
        config = dataclasses.replace(config, device=args.device) if args.device != "auto" else config
        if args.thresholds != "rank":
            config = dataclasses.replace(config, thresholds=args.thresholds)
    else:
        config = preset(args.preset, q=args.q, window=args.window, warmup=args.warmup, device=args.device,
                        learn_events=args.learn_events, thresholds=args.thresholds)
    if args.threshold_sync != 1:
        config = dataclasses.replace(config, threshold_sync=args.threshold_sync)
    return dataclasses.replace(config, threads=args.threads) if args.threads is not None else config


def main(args: argparse.Namespace) -> int:
    from consumers.scorer import ConsumeConfig, run_consume
    from streamflow.distributed import launched_ranks

    output_folder(args.run_dir, "--run-dir")
    curve, selections_curve = curves_from_args(args)
    config = ConsumeConfig(
        scorer=scorer_config(args), endpoint=args.endpoint, selections=args.selections,
        telemetry=args.telemetry, run_dir=args.run_dir, checkpoint_every=args.checkpoint_every,
        resume=args.resume, idle_timeout=args.idle_timeout, name=args.name, hwm=args.hwm,
        kernel_buffer=args.kernel_buffer, curve=curve, selections_curve=selections_curve,
    )
    if not 1 <= args.ranks <= MAX_LOCAL_RANKS:
        raise ConfigError(f"--ranks must be 1 to {MAX_LOCAL_RANKS} (processes on this machine), got {args.ranks:,d}")
    launched = launched_ranks()
    if launched > 1 and args.ranks not in (1, launched):
        raise ConfigError(f"started as one of {launched} ranks (WORLD_SIZE), so --ranks {args.ranks} does not apply")
    if args.ranks > 1 and launched == 1:  # the config is valid: start the ranks, each runs this command
        from consumers.ranks import run_local_ranks

        return run_local_ranks([sys.executable, "-m", "streamflow.cli.main", *args.argv], args.ranks)
    stats, ledger = run_consume(config, stop_on_signals())
    if stats.idle_error:  # a rank beside rank 0, which has reported it
        return 2
    if stats.rank:
        print(f"rank {stats.rank}: {stats.events:,d} events in {stats.frames:,d} frames; rank 0 prints the "
              f"ledger of all ranks")
    else:
        print(ledger.render())
    if stats.stopped:
        print("scorer: stopped by signal; checkpoint written", file=sys.stderr)
    return 0
