"""`streamflow consume`: run a scorer (learners + trigger) on a producer's stream."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from streamflow.cli.common import acked_options, curve_options, curves_from_args, metrics_options, stop_on_signals
from streamflow.cli.outputs import output_folder
from streamflow.cli.scorer_options import add_scorer_options, apply_scorer_options, scorer_menu
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
    p.add_argument("--preset", help="built-in menu instead of --config: lhco, lhco-density or gaussian (default lhco)")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"producer data endpoint (default {DEFAULT_ENDPOINT})")
    p.add_argument("--ranks", type=int, default=1, metavar="K",
                   help="run K data-parallel scorer ranks on this machine that hold one model (gloo on CPU, "
                        f"NCCL on CUDA), at most {MAX_LOCAL_RANKS}; across machines use torchrun (default 1)")
    add_scorer_options(p, "q", "window", "warmup", "control", "budget", "zero_bias", "device", "threads",
                       "thresholds", "threshold_sync", "learn_events", "learn", "refresh_frames",
                       note="; given, it replaces the --config file's or the preset's value")
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
    acked_options(p)
    curve_options(p, connects_to="producer (or proxy)", binds="the --selections socket (the sinks' keys)")
    metrics_options(p)
    p.set_defaults(func=main)


def scorer_config(args: argparse.Namespace) -> ScorerConfig:
    """The scorer's learners and lines: the --config file's [scorer] table or the preset, then the options."""
    if args.config and args.preset:
        raise ConfigError("--config and --preset both choose the menu: give one")
    table = read_toml(args.config).get("scorer", {}) if args.config else None
    menu = scorer_menu(args.preset, table, f"{args.config}[scorer]", "lhco", args.thresholds)
    return apply_scorer_options(menu, args)


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
        metrics_port=args.metrics_port, metrics_hold=args.metrics_hold, acked=args.acked, ack_window=args.ack_window,
    )
    if args.acked and args.ranks > 1:
        raise ConfigError("--acked is for a lone scorer: data-parallel ranks (--ranks) take frames in rounds")
    if not 1 <= args.ranks <= MAX_LOCAL_RANKS:
        raise ConfigError(f"--ranks must be 1 to {MAX_LOCAL_RANKS} (processes on this machine), got {args.ranks:,d}")
    launched = launched_ranks()
    if launched > 1 and args.ranks not in (1, launched):
        raise ConfigError(f"started as one of {launched} ranks (WORLD_SIZE), so --ranks {args.ranks} does not apply")
    if max(args.ranks, launched) > 1 and config.scorer.learn != "all":
        raise ConfigError(f"learn = {config.scorer.learn!r} needs a single scorer: data-parallel ranks learn every "
                          f"event together (--learn all)")
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
