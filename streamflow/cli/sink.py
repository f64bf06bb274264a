"""`streamflow sink`: write a scorer's accepted events to an HDF5 selections file."""

from __future__ import annotations

import argparse
from pathlib import Path

from consumers.sink import DEFAULT_SELECTIONS_ENDPOINT, SinkConfig, run_sink
from streamflow.cli.common import curve_options, curves_from_args, metrics_options, stop_on_signals
from streamflow.cli.outputs import output_file, output_folder
from streamflow.config import read_toml
from streamflow.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sink", help="append accepted events to an HDF5 file",
                       description="Pull a scorer's selections and append them to a chunked HDF5 file, "
                                   "flushed at least every --flush-interval seconds.")
    p.add_argument("--endpoint", default=DEFAULT_SELECTIONS_ENDPOINT,
                   help=f"the scorer's selections endpoint (default {DEFAULT_SELECTIONS_ENDPOINT})")
    p.add_argument("--output", default="selections.h5", help="file name in the run folder (default selections.h5)")
    p.add_argument("--run-dir", default=".", help="folder for the file, telemetry and ledger (default .)")
    p.add_argument("--telemetry", metavar="ENDPOINT", default=None, help="publish stats to a monitor here")
    p.add_argument("--flush-interval", type=float, default=1.0, metavar="S", help="seconds between flushes (default 1)")
    p.add_argument("--idle-timeout", type=float, default=120.0, metavar="S",
                   help="give up after S seconds without selections (default 120)")
    p.add_argument("--run-config", metavar="TOML", help="a run config to store in the file's attributes")
    p.add_argument("--acked", action="store_true",
                   help="acknowledged delivery from a scorer run with --acked: each selection acknowledged once "
                        "committed, so a killed sink loses none")
    curve_options(p, connects_to="scorer's selections socket (or proxy)", binds=None)
    metrics_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import h5py

    output = output_file(Path(output_folder(args.run_dir, "--run-dir")) / args.output, "--output")
    if output.exists() and not h5py.is_hdf5(output):  # the sink appends to its own files only
        raise ConfigError(f"--output {output}: exists and is not an HDF5 file (give a new name, or a selections file "
                          f"to append to)")
    curve, _ = curves_from_args(args)
    config = SinkConfig(endpoint=args.endpoint, output=args.output, telemetry=args.telemetry,
                        run_dir=args.run_dir, flush_interval=args.flush_interval, idle_timeout=args.idle_timeout,
                        curve=curve, metrics_port=args.metrics_port, metrics_hold=args.metrics_hold,
                        acked=args.acked)
    run_config = read_toml(args.run_config) if args.run_config else None
    _, ledger = run_sink(config, stop_on_signals(), run_config=run_config)
    print(ledger.render())
    return 0
