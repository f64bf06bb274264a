"""The scorer's command-line options, defined once, and the one builder of a ScorerConfig from them.

Every command that builds a :class:`~streamflow.scoring.frame_scorer.ScorerConfig`
(``consume``, ``run``, ``ephemeral``, ``coordinates``) registers the options it offers
with :func:`add_scorer_options` and builds its config in two steps:

1. the menu: an explicit ``--preset``, else the ``[scorer]`` table of its config file,
   else its default menu (:func:`scorer_menu`, or the command's own menu);
2. :func:`apply_scorer_options`: every option **given on the command line** replaces the
   menu's value -- per score line (``--q`` is every score line's accept fraction,
   ``--window``, ``--warmup``, ``--control``) or for the scorer (``--device``,
   ``--threads``, ``--budget``, ...); ``--zero-bias`` adds a zero-bias line. An option
   not given leaves the file's or the preset's value standing.

So the options' parser defaults are all None ("not given"), an explicit value -- even one
equal to a default, as ``--device auto`` over a file's ``device = "cpu"`` -- always wins,
and an explicit value the config refuses is a one-line ConfigError naming the option.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamflow.config import from_dict
from streamflow.errors import ConfigError

if TYPE_CHECKING:  # torch-heavy: imported where used (fast start-up)
    from streamflow.scoring.frame_scorer import ScorerConfig


def learn_policy(text: str) -> str | float:
    """A ``--learn`` value: all, budget, or a number (the config checks it is a fraction in (0, 1])."""
    return text if text in ("all", "budget") else float(text)


@dataclass(frozen=True)
class ScorerOption:
    """One command-line option and the config field it sets (of every trigger line, or of the scorer)."""

    field: str
    per_line: bool
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


SCORER_OPTIONS: dict[str, ScorerOption] = {
    "q": ScorerOption("accept", True, float, "accept fraction of every trigger line (presets: 0.01)", "Q"),
    "window": ScorerOption("window", True, int, "every line's rolling-quantile window in events (presets: 20000)",
                           "EVENTS"),
    "warmup": ScorerOption("warmup", True, int, "scores a line's window must hold before it judges; the window "
                           "then grows to --window (default ceil(5 / q): 500 at q = 1%%)", "EVENTS"),
    "control": ScorerOption("control", True, float, "every line's rate-control time constant in accepts "
                            "(0: off; default 20)", "ACCEPTS"),
    "budget": ScorerOption("budget", False, float, "the menu's total recorded fraction of the stream: the union "
                           "of the lines' accepts, each line keeping its share (default: none)", "FRACTION"),
    "zero_bias": ScorerOption("accept", False, float, "add a zero-bias line \"zero_bias\" recording a uniform "
                              "random FRACTION of the stream (default: none)", "FRACTION"),
    "device": ScorerOption("device", False, str, "auto (CUDA if present), cpu or cuda[:N] (default auto)", "D"),
    "threads": ScorerOption("threads", False, int, "torch CPU threads (default: all cores but three, at least one)",
                            "N"),
    "learn_events": ScorerOption("learn_events", False, int,
                                 "learn once N scored events have accumulated (0: after every frame; default 0)", "N"),
    "learn": ScorerOption("learn", False, learn_policy,
                          "learning policy: all (every event, before the next frame is taken: the scorer runs at "
                          "the learning rate), budget (every event scored at the input rate, learnt from as far "
                          "as a learner thread has time: a random subset per learner) or a fraction F in (0, 1] "
                          "learnt in a learner thread (default: all; streamflow run: budget)", "POLICY"),
    "refresh_frames": ScorerOption("refresh_frames", False, int,
                                   "with a learner thread: the scoring copies take the learning models' state every "
                                   "N learnt frames (default 4)", "N"),
    "thresholds": ScorerOption("thresholds", False, str,
                               "data-parallel ranks: each rank's lines use its own windows (rank, default) or all "
                               "ranks sum their windows' histograms and apply one threshold (global; a preset's "
                               "lines then use the histogram estimator)", choices=("rank", "global")),
    "threshold_sync": ScorerOption("threshold_sync", False, int,
                                   "with --thresholds global: sum the ranks' histograms every N rounds (default 1)",
                                   "FRAMES"),
}
"""The scorer options by argparse ``dest``: the flag is ``--`` + dest with dashes."""


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def add_scorer_options(parser: argparse.ArgumentParser, *dests: str, note: str = "") -> None:
    """Register the scorer options ``dests`` (keys of :data:`SCORER_OPTIONS`), all defaulting to "not given".

    ``note`` is appended to every help text, e.g. where the values come from when not given.
    """
    for dest in dests:
        option = SCORER_OPTIONS[dest]
        parser.add_argument(flag(dest), dest=dest, type=option.parse, default=None, metavar=option.metavar,
                            choices=option.choices, help=option.help + note)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The scorer options given on the command line: {dest: value}."""
    return {dest: getattr(args, dest) for dest in SCORER_OPTIONS if getattr(args, dest, None) is not None}


def apply_scorer_options(config: ScorerConfig, args: argparse.Namespace) -> ScorerConfig:
    """``config`` with every scorer option given in ``args`` in place of its value (see the module doc)."""
    given = given_options(args)
    if not given:
        return config
    from streamflow.trigger.lines import LineConfig  # Numba-heavy, as the scorer

    zero_bias = given.pop("zero_bias", None)
    per_line = {SCORER_OPTIONS[d].field: v for d, v in given.items() if SCORER_OPTIONS[d].per_line}
    scorer = {SCORER_OPTIONS[d].field: v for d, v in given.items() if not SCORER_OPTIONS[d].per_line}
    try:
        lines = tuple(dataclasses.replace(line, **per_line) if line.kind == "score" else line for line in config.lines)
        if zero_bias is not None:
            lines += (LineConfig("zero_bias", accept=zero_bias, kind="zero_bias"),)
        return dataclasses.replace(config, lines=lines, **scorer)
    except ConfigError as exc:
        options = " ".join(f"{flag(d)} {v}" for d, v in given_options(args).items())
        raise ConfigError(f"{options}: {exc}") from None


def scorer_menu(preset_name: str | None, table: Mapping[str, Any] | None, where: str, default_preset: str,
                thresholds: str | None = None) -> ScorerConfig:
    """The menu before the options: ``preset_name`` if given, else the [scorer] ``table`` (read strictly,
    ``where`` naming it in errors) if there is one, else ``default_preset``.

    A preset is built for ``thresholds`` (global: its lines use the mergeable histogram estimator).
    """
    from streamflow.scoring.frame_scorer import ScorerConfig
    from streamflow.scoring.presets import preset

    if preset_name is None and table is not None:
        return from_dict(ScorerConfig, dict(table), where)
    return preset(preset_name or default_preset, thresholds="global" if thresholds == "global" else "rank")
