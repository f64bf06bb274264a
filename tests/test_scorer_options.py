"""The scorer options of every subcommand: defined once, given values reach the config, files do not beat them.

The tests walk the real parser (streamflow.cli.main.build_parser): every subcommand that
offers a scorer option must build its ScorerConfig through the shared builder, and for
each option it offers, an explicit value -- even the default's -- must arrive in the
built config, over a --config file's value where the command reads one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from streamflow.cli import consume, coordinates, ephemeral, run
from streamflow.cli.main import SUBCOMMANDS, build_parser, main
from streamflow.cli.scorer_options import SCORER_OPTIONS, flag
from streamflow.errors import ConfigError
from streamflow.scoring.frame_scorer import ScorerConfig

BUILDERS: dict[str, Callable[[argparse.Namespace], ScorerConfig]] = {
    "consume": consume.scorer_config,
    "run": lambda args: run.build_config(args).scorer,
    "ephemeral": ephemeral.scorer_config,
    "coordinates": coordinates.scorer_config,
}
"""How each command builds its scorer config from its parsed options."""

POSITIONAL = {"ephemeral": ["synthetic"]}
GIVEN = {"q": 0.05, "window": 3000, "warmup": 1500, "device": "cpu", "threads": 3, "learn_events": 4096,
         "thresholds": "global", "threshold_sync": 4, "control": 5.0, "budget": 0.5, "zero_bias": 0.001,
         "learn": 0.5, "refresh_frames": 8}
"""A valid value of every option, unlike every menu's own."""
INVALID = {"q": 0.0, "window": 0, "warmup": -1, "device": None, "threads": -1, "learn_events": -5,
           "thresholds": None, "threshold_sync": 0, "control": -1.0, "budget": 0.0, "zero_bias": 1.5,
           "learn": 1.5, "refresh_frames": 0}
"""A value of every option the config refuses (None: argparse or the device itself refuses it)."""

FILE_MENU = """
[scorer]
device = "cuda"
threads = 2
learn_events = 100
threshold_sync = 2
learn = 0.25
refresh_frames = 2

[[scorer.learners]]
kind = "flow"
name = "flow_m"
context = "mjj"

[[scorer.lines]]
name = "flow_m"
learner = "flow_m"
accept = 0.02
window = 5000
warmup = 4000
"""
FILE_DEFAULTS = {"q": 0.01, "window": 20_000, "warmup": 3000, "device": "auto", "threads": 0, "learn_events": 0,
                 "threshold_sync": 1, "learn": "all", "refresh_frames": 4}
"""An explicit value unlike the file's (the preset's default where there is one)."""


def scorer_dests(command: str) -> list[str]:
    """The scorer options ``command``'s parser registers."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [a.dest for a in sub.choices[command]._actions if a.dest in SCORER_OPTIONS]


def parse(command: str, *argv: str) -> argparse.Namespace:
    return build_parser(command).parse_args([command, *POSITIONAL.get(command, []), *argv])


def value(config: ScorerConfig, dest: str) -> object:
    option = SCORER_OPTIONS[dest]
    if dest == "zero_bias":
        return next((line.accept for line in config.lines if line.kind == "zero_bias"), None)
    if not option.per_line:
        return getattr(config, option.field)
    values = {getattr(line, option.field) for line in config.lines if line.kind == "score"}
    assert len(values) == 1, f"{dest}: the lines differ: {values}"
    return values.pop()


def test_every_command_with_scorer_options_builds_through_the_shared_builder() -> None:
    with_options = {command for command in SUBCOMMANDS if scorer_dests(command)}
    assert with_options == set(BUILDERS)


@pytest.mark.parametrize("command", sorted(BUILDERS))
def test_scorer_options_default_to_not_given(command: str) -> None:
    args = parse(command)
    assert {dest: getattr(args, dest) for dest in scorer_dests(command)} == dict.fromkeys(scorer_dests(command))


@pytest.mark.parametrize(("command", "dest"), [(c, d) for c in sorted(BUILDERS) for d in scorer_dests(c)])
def test_a_given_option_reaches_the_built_config(command: str, dest: str) -> None:
    before = BUILDERS[command](parse(command))
    assert value(before, dest) != GIVEN[dest]
    after = BUILDERS[command](parse(command, flag(dest), str(GIVEN[dest])))
    assert value(after, dest) == GIVEN[dest]
    assert [c.name for c in after.learners] == [c.name for c in before.learners]


@pytest.mark.parametrize(("command", "dest"), [(c, d) for c in sorted(BUILDERS) for d in scorer_dests(c)
                                               if INVALID[d] is not None])
def test_an_invalid_given_option_is_an_error_naming_it(command: str, dest: str) -> None:
    with pytest.raises(ConfigError, match=f"^{flag(dest)} {INVALID[dest]}: "):
        BUILDERS[command](parse(command, flag(dest), str(INVALID[dest])))


def config_flag(command: str, path: Path) -> list[str]:
    return ["--config", str(path)] if "--config" in build_parser(command).format_help() else []


@pytest.mark.parametrize(("command", "dest"), [(c, d) for c in ("consume", "run", "ephemeral")
                                               for d in scorer_dests(c) if d in FILE_DEFAULTS])
def test_an_explicit_option_beats_the_config_file_and_the_file_beats_the_default(
        command: str, dest: str, tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(FILE_MENU)
    from_file = BUILDERS[command](parse(command, "--config", str(toml)))
    assert value(from_file, dest) != FILE_DEFAULTS[dest]  # the file's value stands when not given
    explicit = BUILDERS[command](parse(command, "--config", str(toml), flag(dest), str(FILE_DEFAULTS[dest])))
    assert value(explicit, dest) == FILE_DEFAULTS[dest]  # ... and a given value, even the default, wins


def test_run_q_zero_is_a_one_line_error_not_the_default(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", "--q", "0", "--run-dir", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streamflow run: error: --q 0.0: ") and "accept" in err[0]
    assert not (tmp_path / "never").exists()


def test_consume_config_and_preset_together_is_an_error(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(FILE_MENU)
    with pytest.raises(ConfigError, match="--config and --preset"):
        consume.scorer_config(parse("consume", "--config", str(toml), "--preset", "gaussian"))


def test_run_empty_learners_option_is_an_error_not_all_learners() -> None:
    with pytest.raises(ConfigError, match="--learners"):
        run.build_config(parse("run", "--learners", ""))


def test_ephemeral_flow_training_options_reach_the_preset_flow_and_a_config_files_flows(tmp_path: Path) -> None:
    preset_flow = ephemeral.scorer_config(parse("ephemeral")).learners[0]
    assert (preset_flow.steps_per_frame, preset_flow.batch_size) == (ephemeral.PRESET_STEPS_PER_FRAME,
                                                                     ephemeral.PRESET_BATCH_SIZE)
    toml = tmp_path / "run.toml"
    toml.write_text(FILE_MENU.replace('context = "mjj"', 'context = "mjj"\nsteps_per_frame = 3'))
    file_flow = ephemeral.scorer_config(parse("ephemeral", "--config", str(toml))).learners[0]
    assert (file_flow.steps_per_frame, file_flow.batch_size) == (3, 1024)  # the file's, and FlowConfig's default
    given = ephemeral.scorer_config(parse("ephemeral", "--config", str(toml), "--steps-per-frame", "7",
                                          "--batch-size", "64")).learners[0]
    assert (given.steps_per_frame, given.batch_size) == (7, 64)


def test_run_help_prints_one_percent_not_a_doubled_percent(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "with 1% signal" in out and "trigger at q = 1%," in out and "%%" not in out


def test_budget_below_a_line_target_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    expected = r"^--q 0.05 --budget 0.02: trigger line 'cathode': records 0.05 .*budget 0.02$"
    with pytest.raises(ConfigError, match=expected):
        consume.scorer_config(parse("consume", "--q", "0.05", "--budget", "0.02"))
