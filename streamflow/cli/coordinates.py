"""`streamflow coordinates`: the coordinate study -- learners in several frames, side by side.

- Gaussian toy: streams the toy through the real pipeline (producer, scorer and
  sink processes, as ``streamflow run``, no monitor) with the ``gaussian`` preset
  (flow, autoencoder and CWoLA in the identity, normal_cdf and tanh_shift frames),
  loads the scorer's final checkpoint and scores held-out toy events of another
  seed (streamflow.analysis.coordinate_study); the exact models' AUCs beside the
  measured ones; writes coordinates.md, coordinates.json and roc.png (the run
  folder with the checkpoint is the output's ``run`` subfolder).
- LHCO (a features/raw file or "synthetic"): the source paper's study with its
  controls (streamflow.analysis.mass_coordinate_study): an unconditional flow and
  the paper's autoencoder on (m_j1, m_j2) vs (log m_j1, log m_j2), trained offline
  on background selected by truth (for this study only), scored on held-out
  events, two seeds per frame and one model evaluated in both frames; and the
  same for the CATHODE features given mjj. Writes coordinates.md and coordinates.json.

Prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from streamflow.cli.outputs import output_folder
from streamflow.cli.scorer_options import add_scorer_options, apply_scorer_options
from streamflow.errors import ConfigError, StreamflowError

if TYPE_CHECKING:  # torch-heavy: imported where used (fast start-up)
    from streamflow.events import EventBatch
    from streamflow.scoring.frame_scorer import ScorerConfig

TOY_EVENTS = 300_000
GENERATOR_EVAL_EVENTS = 200_000
LHCO_GENERATOR_EVENTS = 100_000
LHCO_GENERATOR_SIGNAL_FRACTION = 0.05
STUDY_EPOCHS = 10
STUDY_Q = 0.01
"""The accept fraction of the toy's trigger lines, and the top fraction whose selections are compared, without --q."""
MAX_EVAL_EVENTS = 10_000_000
"""The most evaluation events: they are held in memory and scored by every learner at once."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "coordinates", help="the coordinate study: learners in several frames, AUC/SIC and selection overlaps",
        description="Gaussian toy: stream it through the pipeline with learners in several coordinate maps, "
                    "then compare their AUC, SIC and top-q selections with the exact models'. LHCO: the source "
                    "paper's m vs log m study with two-seed and exact-Jacobian controls.",
    )
    p.add_argument("--source", default="gaussian",
                   help="gaussian (default), synthetic, or an LHCO features/raw HDF5 file")
    p.add_argument("--events", type=int, help=f"toy: events to stream (default {TOY_EVENTS:,}); LHCO: events "
                                              f"to study (default: a file's all, {LHCO_GENERATOR_EVENTS:,} "
                                              "synthetic)")
    p.add_argument("--eval-events", type=int, default=GENERATOR_EVAL_EVENTS,
                   help=f"held-out events of a generator to evaluate on, at most {MAX_EVAL_EVENTS:,} "
                        f"(default {GENERATOR_EVAL_EVENTS:,})")
    p.add_argument("--frame-size", type=int, default=4096, help="events per frame, 1 to 1,048,576 (default 4096)")
    p.add_argument("--signal-fraction", type=float,
                   help="LHCO: signal fraction of the events (default: a file's own, "
                        f"{LHCO_GENERATOR_SIGNAL_FRACTION} synthetic; only held-out signal gives AUCs, training "
                        "is on background only); the toy has its own")
    p.add_argument("--epochs", type=int, default=STUDY_EPOCHS,
                   help=f"LHCO: passes over the training background per model (default {STUDY_EPOCHS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream (evaluation: seed + 1)")
    p.add_argument("--out", help="output folder (default runs/coordinates-<date-time>)")
    add_scorer_options(p, "q", "device", "threads", note="; --q is also the selection fraction compared "
                       f"between coordinates (default {STUDY_Q})")
    p.add_argument("--base-port", type=int, default=5555, help="first of six local tcp ports (default 5555)")
    p.set_defaults(func=main)


def _check(args: argparse.Namespace) -> None:
    from streamflow.stream.pacing import check_frame_size

    for key in ("events", "epochs"):  # events are streamed or read: no upper bound
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
    if not 1 <= args.eval_events <= MAX_EVAL_EVENTS:
        raise ConfigError(f"--eval-events must be 1 to {MAX_EVAL_EVENTS:,d}, got {args.eval_events:,d}")
    check_frame_size(args.frame_size)
    if args.q is not None and not 0 < args.q <= 1:
        raise ConfigError(f"--q must be in (0, 1], got {args.q}")
    if args.source == "gaussian" and args.signal_fraction is not None:
        raise ConfigError("--signal-fraction is for LHCO streams; the toy's signal is 10% of its data sample")


def toy_evaluation_events(args: argparse.Namespace) -> EventBatch:
    """Held-out toy events of another seed, for the final models."""
    from streamflow.events import open_source

    return next(iter(open_source(args.source, seed=args.seed + 1).chunks(args.eval_events)))


def lhco_events(args: argparse.Namespace) -> EventBatch:
    """The LHCO-like events the mass study splits into training background and held-out events."""
    from streamflow.events import EventBatch, open_source

    synthetic = args.source == "synthetic"
    fraction = args.signal_fraction if args.signal_fraction is not None else (
        LHCO_GENERATOR_SIGNAL_FRACTION if synthetic else None)
    source = open_source(args.source, signal_fraction=fraction, seed=args.seed)
    if synthetic:
        return next(iter(source.chunks(args.events or LHCO_GENERATOR_EVENTS)))
    events = EventBatch.concatenate(list(source.chunks(1 << 16)))
    return events if args.events is None else events.take(slice(0, args.events))


def scorer_config(args: argparse.Namespace) -> ScorerConfig:
    """The toy study's menu (the gaussian preset at :data:`STUDY_Q`), then the options given (--q: every
    line's accept fraction). The LHCO study trains offline and has no scorer menu."""
    from streamflow.scoring.presets import preset

    return apply_scorer_options(preset("gaussian", q=STUDY_Q), args)


def main(args: argparse.Namespace) -> int:
    _check(args)
    out = output_folder(Path(args.out) if args.out is not None
                        else Path("runs") / time.strftime("coordinates-%Y%m%d-%H%M%S"), "--out")
    return toy_study(args, out) if args.source == "gaussian" else mass_study(args, out)


def mass_study(args: argparse.Namespace, out: Path) -> int:
    import torch

    from streamflow.analysis import mass_coordinate_study as study
    from streamflow.scoring.frame_scorer import cpu_threads, resolve_device

    events = lhco_events(args)
    torch.set_num_threads(cpu_threads(args.threads or 0))
    config = study.StudyConfig(epochs=args.epochs, q=STUDY_Q if args.q is None else args.q, split_seed=args.seed,
                               device=str(resolve_device(args.device or "auto")))
    started = time.monotonic()
    result = study.run_study(events, source=args.source, study=config)
    elapsed = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    table = study.markdown(result)
    (out / "coordinates.md").write_text(table)
    (out / "coordinates.json").write_text(json.dumps({**result.to_dict(), "seconds": round(elapsed, 1)},
                                                     indent=2) + "\n")
    print(table)
    print(f"trained and scored in {elapsed:.0f} s; wrote {out / 'coordinates.md'}, {out / 'coordinates.json'}")
    return 0


def toy_study(args: argparse.Namespace, out: Path) -> int:
    from producers.replay import ReplayConfig
    from streamflow.analysis import coordinate_study as coordinates
    from streamflow.cli.run import CHILD_HWM, EOS_TIMEOUT_S, RunConfig, RunOptions, run_pipeline

    events = toy_evaluation_events(args)
    scorer = scorer_config(args)
    q = STUDY_Q if args.q is None else args.q  # the lines' accept fraction, as scorer_config set it
    run = RunOptions(run_dir=str(out / "run"), base_port=args.base_port, monitor=False, report=False)
    stream_events = TOY_EVENTS if args.events is None else args.events
    replay = ReplayConfig(source=args.source, events=stream_events, frame_size=args.frame_size,
                          seed=args.seed, endpoint=run.endpoint(0), hwm=CHILD_HWM, eos_timeout=EOS_TIMEOUT_S)
    started = time.monotonic()
    result = run_pipeline(RunConfig(run=run, replay=replay, scorer=scorer))
    if result.error is not None:
        raise StreamflowError(result.error)
    streamed_s = time.monotonic() - started
    learners = coordinates.load_learners(run.folder / "scorer.ckpt.pt")
    study = coordinates.run_study(learners, events, source=args.source, q=q, exact=True)
    table = coordinates.markdown(study)
    (out / "coordinates.md").write_text(table)
    (out / "coordinates.json").write_text(json.dumps(
        {**study.to_dict(), "stream_events": stream_events, "streamed_s": round(streamed_s, 1)}, indent=2) + "\n")
    plotted = coordinates.plot_roc(study, out / "roc.png")
    print(table)
    print(f"streamed in {streamed_s:.0f} s; wrote {out / 'coordinates.md'}, {out / 'coordinates.json'}"
          + (f", {out / 'roc.png'}" if plotted else " (no ROC plot: the evaluation events have one class)"))
    return 0
