"""`streamflow sample CHECKPOINT`: draw events from a checkpoint's conditional flow in mjj ranges."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample", help="draw events from a scorer checkpoint's conditional flow, in mjj ranges",
        description="Load a checkpoint of `streamflow consume` or `run`, pick its conditional flow and draw "
                    "N events: mjj from the stream's mjj distribution restricted to each range (N split in "
                    "proportion to the stream's events in each), then the flow's features given mjj, in physical "
                    "units. Written in the selections-file layout (one bit per range).",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a scorer checkpoint (e.g. RUN_DIR/scorer.ckpt.pt)")
    p.add_argument("--events", type=int, required=True, metavar="N",
                   help="events to draw over all ranges, 1 to 10,000,000")
    p.add_argument("--mjj-range", type=float, nargs=2, action="append", metavar=("LO", "HI"),
                   help="an mjj range in GeV, repeatable (default: SR 3300 3700 and sidebands 3100 3300, "
                        "3700 3900)")
    p.add_argument("--output", required=True, metavar="FILE", help="HDF5 file to write (replaced if it exists)")
    p.add_argument("--learner", default=None, help="the flow to sample (default: the first conditional flow in the "
                                                   "bounded frame, whose samples stay physical, else the first "
                                                   "conditional flow)")
    p.add_argument("--seed", type=int, default=0, help="random seed of mjj and of the flow (default 0)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from streamflow.analysis.sampling import DEFAULT_RANGES, MassRange, sample_checkpoint, write_samples
    from streamflow.cli.outputs import output_file

    output_file(args.output, "--output")
    ranges = [MassRange(lo, hi) for lo, hi in args.mjj_range] if args.mjj_range else DEFAULT_RANGES
    flow, samples = sample_checkpoint(args.checkpoint, args.events, ranges, learner=args.learner, seed=args.seed)
    write_samples(args.output, samples)
    print(f"{len(samples)} events from {flow.name}, {flow.config.context} from the "
          f"{samples.meta['context_distribution']}")
    for r, count in zip(samples.ranges, samples.counts()):
        print(f"  {flow.config.context} {r.label}: {count}")
    print(f"written to {args.output}")
    return 0
