"""`streamflow reco`: a reconstruction worker between a raw-frame producer and a scorer.

It pulls a producer's RAW particle frames (``streamflow replay --raw``), clusters
each event's particles into anti-kT R=1.0 jets with FastJet, computes the 16 LHCO
stream features and pushes them as DATA frames to whatever connects to --output (a
scorer, or a proxy joining several workers). Run one per core, on any host: each
takes its share of the producer's frames. Ctrl-C ends its output stream cleanly.
"""

from __future__ import annotations

import argparse
import sys

from consumers.reco import DEFAULT_RECO_ENDPOINT, RecoWorkerConfig, run_reco_worker
from streamflow.cli.common import curve_options, curves_from_args, stop_on_signals
from streamflow.events.reco import RecoConfig
from streamflow.stream.transport import DEFAULT_ENDPOINT, DEFAULT_HWM


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reco", help="reconstruction worker: raw particle frames -> jets -> feature frames",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--from", dest="endpoint", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                   help=f"the producer's data endpoint (default {DEFAULT_ENDPOINT})")
    p.add_argument("--output", default=DEFAULT_RECO_ENDPOINT, metavar="ENDPOINT",
                   help=f"endpoint to bind for the scorer or a proxy (default {DEFAULT_RECO_ENDPOINT}; control on "
                        "port+1)")
    p.add_argument("--stream-id", type=int, default=1, metavar="N",
                   help="id of this worker's output stream: give each worker its own (default 1)")
    p.add_argument("--name", default="reco", help="name in telemetry and the ledger file (default reco)")
    p.add_argument("--run-dir", default=".", help="folder for telemetry and the ledger (default .)")
    p.add_argument("--telemetry", metavar="ENDPOINT", default=None, help="publish stats to a monitor here")
    p.add_argument("--hwm", type=int, default=DEFAULT_HWM, metavar="FRAMES",
                   help=f"frames queued per socket (default {DEFAULT_HWM})")
    p.add_argument("--idle-timeout", type=float, default=60.0, metavar="S",
                   help="give up after S seconds without a raw frame (default 60)")
    p.add_argument("--eos-timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for the downstream to acknowledge the end of the stream (default 60)")
    p.add_argument("--per-event", action="store_true",
                   help="call FastJet once per event instead of once per frame (slower; same results)")
    p.add_argument("--periodic-phi", action="store_true",
                   help="wrap the phi difference in N-subjettiness (physical; the official LHCO features do not)")
    curve_options(p, connects_to="producer", binds="this worker's output socket")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    curve, output_curve = curves_from_args(args)
    config = RecoWorkerConfig(endpoint=args.endpoint, output=args.output, stream_id=args.stream_id, name=args.name,
                              telemetry=args.telemetry, run_dir=args.run_dir, hwm=args.hwm,
                              idle_timeout=args.idle_timeout, eos_timeout=args.eos_timeout,
                              reco=RecoConfig(vectorised=not args.per_event, periodic_phi=args.periodic_phi),
                              curve=curve, output_curve=output_curve)
    stats, ledger = run_reco_worker(config, stop_on_signals())
    print(ledger.render())
    if stats.stopped:
        print("streamflow reco: interrupted; the output stream was ended cleanly", file=sys.stderr)
        return 130
    return 0
