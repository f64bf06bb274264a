"""`streamflow ephemeral SOURCE`: CWoLA bump hunt on a stream vs on its flow's samples."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from streamflow.cli.scorer_options import add_scorer_options, apply_scorer_options, scorer_menu

if TYPE_CHECKING:
    from streamflow.scoring.frame_scorer import ScorerConfig

PRESET_STEPS_PER_FRAME = 32
"""Passes of the preset flow over each frame here: the lhco preset's 1 leaves it far from converged after a
short stream."""
PRESET_BATCH_SIZE = 256


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ephemeral", help="bump-hunt a stream and its flow's samples (ephemeral learning)",
        description="Stream SOURCE through a scorer whose conditional flow learns p(x | mjj) online (or take "
                    "--checkpoint), sample the flow in the signal region and sidebands, train the same offline "
                    "CWoLA classifier on the real stream events and on the samples, and compare their SIC on "
                    "held-out real events. Writes samples.h5, sic.png, results.md and results.json to --out.",
    )
    p.add_argument("source", metavar="SOURCE", help="an LHCO features file or 'synthetic'")
    p.add_argument("--signal-fraction", type=float, default=None,
                   help="signal fraction of the stream (file: injected after the test split; default: as in "
                        "the file; synthetic: default 0.01)")
    p.add_argument("--events", type=int, default=None,
                   help="events in the stream, at most 10,000,000 (synthetic: default 100000; file: a cap, "
                        "default all)")
    p.add_argument("--test-fraction", type=float, default=0.3,
                   help="file: fraction of its rows held out as labelled test events (default 0.3)")
    p.add_argument("--test-events", type=int, default=200_000,
                   help="synthetic: held-out test events, drawn from seed + 1 at signal fraction 0.1, at most "
                        "10,000,000 (default 200000)")
    p.add_argument("--checkpoint", default=None,
                   help="sample this scorer checkpoint instead of training one (give the same SOURCE, "
                        "--signal-fraction and --seed as it was trained with, so the test events stay held out)")
    p.add_argument("--config", metavar="TOML", default=None,
                   help="train the [scorer] table of this run config "
                        "(default: the lhco-density preset's --learner alone)")
    p.add_argument("--learner", default=None,
                   help="the flow to train and sample (default: flow_bounded, the lhco preset's flow_m in the "
                        "bounded coordinates, whose samples stay in the physical range; or flow_m, flow_logm; with "
                        "--config or --checkpoint, the first flow with a context)")
    p.add_argument("--steps-per-frame", type=int, default=None,
                   help=f"passes of the flow(s) over each frame before the next one (default: "
                        f"{PRESET_STEPS_PER_FRAME} for the preset flow -- the lhco preset's 1 leaves it far "
                        f"from converged after a short stream --, else the --config file's value)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"the flow(s)' minibatch size (default: {PRESET_BATCH_SIZE} for the preset flow, "
                        f"else the --config file's value)")
    p.add_argument("--frame-size", type=int, default=1000, help="events per frame, 1 to 1,048,576 (default 1000)")
    add_scorer_options(p, "device", note="; given, it replaces the --config file's value")
    p.add_argument("--samples", type=int, default=None,
                   help="events to sample, at most 10,000,000 (default: as many as the stream had in the SR and "
                        "sidebands)")
    p.add_argument("--epochs", type=int, default=20, help="CWoLA training epochs (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, injection and sampling (default 0)")
    p.add_argument("--out", default="ephemeral", help="output folder (default ./ephemeral)")
    p.set_defaults(func=main)


def scorer_config(args: argparse.Namespace) -> ScorerConfig:
    """The [scorer] table of --config, else one lhco preset flow (--learner, default flow_bounded: flow_m in the
    bounded coordinates) alone, trained with more passes over each frame in smaller batches
    (:data:`PRESET_STEPS_PER_FRAME`, :data:`PRESET_BATCH_SIZE`); then the options given (--steps-per-frame and
    --batch-size: every flow's)."""
    from streamflow.config import read_toml
    from streamflow.errors import ConfigError
    from streamflow.scoring.presets import preset

    steps, batch = args.steps_per_frame, args.batch_size
    if args.config:
        menu = scorer_menu(None, read_toml(args.config).get("scorer", {}), f"{args.config}[scorer]", "lhco")
    else:
        full = preset("lhco-density")
        name = "flow_bounded" if args.learner is None else args.learner
        flows = [c for c in full.learners if c.kind == "flow"]
        flows.append(dataclasses.replace(flows[0], name="flow_bounded", coordinates="bounded"))
        chosen = [c for c in flows if c.name == name]
        if not chosen:
            known = ", ".join(c.name for c in flows)
            raise ConfigError(f"the lhco-density preset has no flow {name!r} (its flows: {known})")
        menu = dataclasses.replace(full, learners=(chosen[0],),
                                   lines=(dataclasses.replace(full.lines[0], name=name, learner=name),))
        steps = PRESET_STEPS_PER_FRAME if steps is None else steps
        batch = PRESET_BATCH_SIZE if batch is None else batch
    learners = tuple(
        dataclasses.replace(c, steps_per_frame=c.steps_per_frame if steps is None else steps,
                            batch_size=c.batch_size if batch is None else batch) if c.kind == "flow" else c
        for c in menu.learners
    )
    return apply_scorer_options(dataclasses.replace(menu, learners=learners), args)


def main(args: argparse.Namespace) -> int:
    from streamflow.analysis.ephemeral_study import HuntConfig, StreamSpec, run_study
    from streamflow.analysis.sampling import check_sample_events
    from streamflow.cli.outputs import output_folder
    from streamflow.stream.pacing import check_frame_size

    check_frame_size(args.frame_size)
    if args.samples is not None:
        check_sample_events(args.samples)
    out = output_folder(args.out, "--out")
    spec = StreamSpec(args.source, signal_fraction=args.signal_fraction, events=args.events,
                      test_fraction=args.test_fraction, test_events=args.test_events, seed=args.seed)
    checkpoint = Path(args.checkpoint) if args.checkpoint else out / "ephemeral.ckpt.pt"
    scorer = None if args.checkpoint else scorer_config(args)
    run_study(spec, checkpoint, out, scorer=scorer, hunt=HuntConfig(epochs=args.epochs, seed=args.seed),
                       learner=args.learner, n_samples=args.samples, frame_size=args.frame_size)
    print((out / "results.md").read_text())
    print(f"written to {out}/ (samples.h5, sic.png, results.md, results.json); checkpoint {checkpoint}")
    return 0
