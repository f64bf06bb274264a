"""`streamflow coordinates`: the coordinate study -- learners in several frames, side by side.

Streams the source through the real pipeline (producer, scorer and sink processes,
as ``streamflow run``, no monitor), then loads the scorer's final checkpoint and
scores an evaluation sample with every learner (streamflow.analysis.coordinate_study):

- Gaussian toy: the ``gaussian`` preset (flow, autoencoder and CWoLA in the
  identity, normal_cdf and tanh_shift frames); evaluation on held-out toy events
  of another seed; the exact models' AUCs beside the measured ones.
- LHCO (a features/raw file or "synthetic"): the conditional flow in the identity
  and log-mass frames and CWoLA in both, and a flow and a CWoLA on (mjmin, delta_m,
  tau1, tau2 of both jets) in the identity and tau_ratio (tau2 -> tau21) frames
  (coordinates.lhco_menu); evaluation on the streamed events themselves for a file
  (the models have seen them once), on events of another seed for the generator.

Writes coordinates.md, coordinates.json and roc.png to the output folder (the run
folder with the checkpoint is its ``run`` subfolder) and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from streamflow.cli.outputs import output_folder
from streamflow.errors import ConfigError, StreamflowError

if TYPE_CHECKING:  # torch-heavy: imported where used (fast start-up)
    from streamflow.events import EventBatch

TOY_EVENTS = 300_000
GENERATOR_EVAL_EVENTS = 200_000
LHCO_SIGNAL_FRACTION = 0.01
MAX_EVAL_EVENTS = 10_000_000
"""The most evaluation events: they are held in memory and scored by every learner at once."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "coordinates", help="the coordinate study: learners in several frames, AUC/SIC and selection overlaps",
        description="Stream a source through the pipeline with learners in several coordinate maps, then "
                    "compare their AUC, SIC and top-q selections (and, for the Gaussian toy, the exact AUCs).",
    )
    p.add_argument("--source", default="gaussian",
                   help="gaussian (default), synthetic, or an LHCO features/raw HDF5 file")
    p.add_argument("--events", type=int, help=f"events to stream (default: {TOY_EVENTS:,} for a generator, "
                                              "a file once)")
    p.add_argument("--eval-events", type=int, default=GENERATOR_EVAL_EVENTS,
                   help=f"held-out events of a generator to evaluate on, at most {MAX_EVAL_EVENTS:,} "
                        f"(default {GENERATOR_EVAL_EVENTS:,})")
    p.add_argument("--frame-size", type=int, default=4096, help="events per frame, 1 to 1,048,576 (default 4096)")
    p.add_argument("--signal-fraction", type=float,
                   help=f"LHCO streams: signal fraction (default {LHCO_SIGNAL_FRACTION}); the toy has its own")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream (evaluation: seed + 1)")
    p.add_argument("--q", type=float, default=0.01, help="selection fraction compared between frames "
                                                        "(default 0.01)")
    p.add_argument("--out", help="output folder (default runs/coordinates-<date-time>)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=0, help="the scorer's torch CPU threads (0: automatic)")
    p.add_argument("--base-port", type=int, default=5555, help="first of five local tcp ports (default 5555)")
    p.set_defaults(func=main)


def _check(args: argparse.Namespace) -> None:
    from streamflow.stream.pacing import check_frame_size

    if args.events is not None and args.events < 1:  # streamed: no upper bound
        raise ConfigError(f"--events must be at least 1, got {args.events}")
    if not 1 <= args.eval_events <= MAX_EVAL_EVENTS:
        raise ConfigError(f"--eval-events must be 1 to {MAX_EVAL_EVENTS:,d}, got {args.eval_events:,d}")
    check_frame_size(args.frame_size)
    if not 0 < args.q <= 1:
        raise ConfigError(f"--q must be in (0, 1], got {args.q}")
    if args.source == "gaussian" and args.signal_fraction is not None:
        raise ConfigError("--signal-fraction is for LHCO streams; the toy's signal is 10% of its data sample")


def evaluation_events(args: argparse.Namespace, signal_fraction: float | None) -> EventBatch:
    """The events the final models are scored on (see the module docstring)."""
    from streamflow.events import EventBatch, open_source

    if args.source in ("gaussian", "synthetic"):
        source = open_source(args.source, signal_fraction=signal_fraction, seed=args.seed + 1)
        return next(iter(source.chunks(args.eval_events)))
    source = open_source(args.source, signal_fraction=signal_fraction, seed=args.seed)
    batches = list(source.chunks(1 << 16))
    events = EventBatch.concatenate(batches)
    return events if args.events is None else events.take(slice(0, args.events))


def main(args: argparse.Namespace) -> int:
    from streamflow.cli.run import CHILD_HWM, EOS_TIMEOUT_S, RunConfig, RunOptions, run_pipeline
    from producers.replay import ReplayConfig
    from streamflow.scoring.presets import preset
    from streamflow.analysis import coordinate_study as coordinates

    _check(args)
    out = output_folder(args.out or Path("runs") / time.strftime("coordinates-%Y%m%d-%H%M%S"), "--out")
    toy = args.source == "gaussian"
    signal_fraction = None if toy else (LHCO_SIGNAL_FRACTION if args.signal_fraction is None
                                        else args.signal_fraction)
    events = evaluation_events(args, signal_fraction)  # also checks the source before any process starts
    scorer = preset("gaussian", q=args.q) if toy else coordinates.lhco_menu(args.q)
    scorer = dataclasses.replace(scorer, device=args.device, threads=args.threads)
    run = RunOptions(run_dir=str(out / "run"), base_port=args.base_port, monitor=False, report=False)
    stream_events = args.events or (TOY_EVENTS if args.source in ("gaussian", "synthetic") else None)
    replay = ReplayConfig(source=args.source, events=stream_events, frame_size=args.frame_size,
                          signal_fraction=signal_fraction, seed=args.seed, endpoint=run.endpoint(0),
                          hwm=CHILD_HWM, eos_timeout=EOS_TIMEOUT_S)
    started = time.monotonic()
    result = run_pipeline(RunConfig(run=run, replay=replay, scorer=scorer))
    if result.error is not None:
        raise StreamflowError(result.error)
    streamed_s = time.monotonic() - started
    learners = coordinates.load_learners(Path(run.run_dir) / "scorer.ckpt.pt")
    study = coordinates.run_study(learners, events, source=args.source, q=args.q, exact=toy)
    table = coordinates.markdown(study)
    (out / "coordinates.md").write_text(table)
    (out / "coordinates.json").write_text(json.dumps(
        {**study.to_dict(), "stream_events": stream_events, "streamed_s": round(streamed_s, 1)}, indent=2) + "\n")
    plotted = coordinates.plot_roc(study, out / "roc.png")
    print(table)
    print(f"streamed in {streamed_s:.0f} s; wrote {out / 'coordinates.md'}, {out / 'coordinates.json'}"
          + (f", {out / 'roc.png'}" if plotted else " (no ROC plot: the evaluation events have one class)"))
    return 0
