"""`streamflow report RUN_DIR`: figures and a markdown summary of a finished run."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamflow.cli.outputs import output_file, output_folder
from streamflow.errors import ConfigError
from streamflow.ops.report import make_report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="figures and a markdown summary of a run folder",
        description="Read a run folder's telemetry, held-out scores and selections; draw throughput, latency, "
                    "thresholds, accept rates, losses, ROC and SIC into RUN_DIR/figures and write RUN_DIR/report.md.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holds telemetry-*.jsonl)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR {run_dir}: {'is a file, not a' if run_dir.exists() else 'no such'} run folder")
    output_folder(run_dir / "figures", "RUN_DIR")
    output_file(run_dir / "report.md", "RUN_DIR")
    print(make_report(args.run_dir))
    return 0
