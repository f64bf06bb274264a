"""The run report: figures and markdown from a run folder as the processes write it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import streamflow.cli.main
from streamflow.errors import StreamflowError
from streamflow.ops.report import make_report
from streamflow.ops.run_folder import load_run
from streamflow.ops.summary import run_summary
from streamflow.stream.selections import SelectedEvents, SelectionWriter
from streamflow.stream.telemetry import encode_stats
from tests.test_monitor import pipeline_messages

TOY_LINES = ("flow_identity", "ae_identity", "cwola_identity")
TOY_LEARNERS = [{"name": "flow_identity", "kind": "flow", "coordinates": "identity"},
                {"name": "ae_identity", "kind": "autoencoder", "coordinates": "identity"},
                {"name": "cwola_identity", "kind": "cwola", "coordinates": "identity"}]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_telemetry(run_dir: Path, lines: tuple[str, ...], labels: bool, seconds: float = 20.0,
                    source: str = "synthetic") -> None:
    """telemetry-<role>.jsonl files as TelemetryReporter appends them, one message per 0.5 s."""
    files = {role: open(run_dir / f"telemetry-{role}.jsonl", "a") for role in ("producer", "scorer", "sink")}
    for k in range(1, int(seconds / 0.5) + 1):
        for message in pipeline_messages(0.5 * k, lines, labels=labels, source=source):
            files[message["role"]].write(encode_stats(message).decode() + "\n")
    for handle in files.values():
        handle.close()


def toy_scores(rng: np.random.Generator, n_background: int = 20_000) -> dict[str, np.ndarray]:
    """The Gaussian toy scored by exact models: background N(0, I2), signal N(1, I2) at 10 %;
    the likelihood ratio is monotone in x0 + x1, the background density score is |x|^2 / 2."""
    x = np.r_[rng.normal(0, 1, (n_background, 2)), rng.normal(1, 1, (n_background // 10, 2))]
    labels = np.r_[np.zeros(n_background), np.ones(n_background // 10)].astype(np.int8)
    ae = (x ** 2).sum(1) + rng.normal(0, 1, len(x))
    ae[::50] = np.nan  # not scored
    return {"labels": labels, "flow_identity": (x ** 2).sum(1) / 2, "ae_identity": ae,
            "cwola_identity": x.sum(1)}


def write_selections(run_dir: Path, rng: np.random.Generator) -> SelectedEvents:
    n = 600
    bits = rng.integers(1, 8, n).astype(np.uint64)
    events = SelectedEvents(
        ids=np.arange(n, dtype=np.uint64), seq=np.arange(n, dtype=np.uint64) // 100,
        bits=bits, passed=bits, scores=rng.normal(size=(n, 3)).astype(np.float32),
        features=rng.normal(size=(n, 3)).astype(np.float32), labels=(rng.random(n) < 0.3).astype(np.int8),
    )
    writer = SelectionWriter(run_dir / "selections.h5", ("x0", "x1", "sample"), TOY_LINES)
    writer.append(events)
    writer.close()
    return events


@pytest.fixture
def toy_run(tmp_path: Path) -> tuple[Path, SelectedEvents]:
    rng = np.random.default_rng(7)
    write_telemetry(tmp_path, TOY_LINES, labels=True, source="gaussian")
    np.savez(tmp_path / "scores-scorer.npz", **toy_scores(rng))
    (tmp_path / "run.json").write_text(json.dumps({"replay": {"source": "gaussian"},
                                                   "scorer": {"learners": TOY_LEARNERS}}))
    return tmp_path, write_selections(tmp_path, rng)


def figures_of(report: Path) -> list[Path]:
    return [report.parent / ref for ref in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report.read_text())]


def table_row(report: Path, first_cell: str) -> list[str]:
    row = next(r for r in report.read_text().splitlines() if r.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_toy_run_report_has_every_figure_and_the_line_table(toy_run):
    run_dir, selected = toy_run
    report = make_report(run_dir)
    assert report == run_dir / "report.md"
    figures = figures_of(report)
    assert {f.name for f in figures} == {"throughput.png", "trigger.png", "efficiency.png", "losses.png",
                                         "roc-scorer.png"}
    for figure in figures:
        assert figure.read_bytes()[:8] == PNG_MAGIC and figure.stat().st_size > 10_000
    # line | population | target q | achieved | of population | eff_S | eff_B | SIC | AUC | exact AUC
    cwola = table_row(report, "cwola_identity | all events")
    assert cwola[2:5] == ["1.00%", "0.98%", "0.98%"]
    assert abs(float(cwola[8]) - 0.841) < 0.02 and cwola[9] == "0.841"
    flow = table_row(report, "flow_identity | all events")
    assert abs(float(flow[8]) - 0.696) < 0.02 and flow[9] == "0.696"
    assert table_row(report, "ae_identity | all events")[9] == "-", "no exact value for an autoencoder"
    # The signal-region row counts the telemetry's SR events; this sample has no mjj, so no SR AUC.
    sr = table_row(report, "flow_identity | signal region")
    assert sr[7] != "-" and sr[8] == "-"
    summary = json.loads(json.dumps(run_summary(load_run(run_dir))))
    line = summary["scorers"]["scorer"]["lines"][0]
    assert line["stream"]["fraction"] == pytest.approx(line["achieved"], rel=0.01)
    assert line["scores_all_events"] is True
    assert set(summary["scorers"]["scorer"]["equal_rate"]["learners"]) == set(TOY_LINES)
    # The selections: accepted events per line from the trigger bits, signal among them from the labels.
    passed = (selected.bits & 2) > 0  # bit 1: the second line, ae_identity
    rows = [r for r in report.read_text().splitlines() if r.startswith("| ae_identity |")]
    assert len(rows) == 6, ("two rows in the line table, one in the equal-rate table, one in the selections table, "
                            "two in trigger operations")
    assert rows[3].startswith(f"| ae_identity | {passed.sum():,} | {(selected.labels[passed] == 1).sum():,} (")
    assert "## Warnings\n\nNone." in report.read_text()


def test_report_without_labels_scores_or_selections_still_draws_what_there_is(tmp_path):
    write_telemetry(tmp_path, ("flow_m", "cwola"), labels=False, seconds=5.0)
    report = make_report(tmp_path)
    assert {f.name for f in figures_of(report)} == {"throughput.png", "trigger.png", "losses.png"}
    assert all(f.stat().st_size > 10_000 for f in figures_of(report))
    assert table_row(report, "flow_m | all events")[5:10] == ["-", "-", "-", "-", "-"]
    assert "No selections file" in report.read_text()


def test_report_lists_trouble_from_the_final_messages(tmp_path):
    write_telemetry(tmp_path, ("flow_m",), labels=False, seconds=2.0)
    with open(tmp_path / "telemetry-scorer.jsonl", "a") as handle:
        message = pipeline_messages(2.5, ("flow_m",))[1]
        message["sequence"]["gaps"] = 4
        message["learners"]["flow_m"]["skipped"] = 3
        handle.write(encode_stats(message).decode() + "\n" + '{"torn line')
    text = make_report(tmp_path).read_text()
    assert "- scorer: 4 frames missing (sequence gaps)" in text
    assert "- flow_m: 3 learning steps skipped (non-finite loss or gradient)" in text


@pytest.mark.parametrize("case, message", [
    ("missing", "run folder .*missing does not exist"),
    ("empty folder", "no telemetry in .*: no telemetry-\\*.jsonl files"),
    ("empty telemetry", "hold no messages"),
])
def test_report_errors_are_one_line(tmp_path, case, message, monkeypatch, capsys):
    run_dir = tmp_path / "missing" if case == "missing" else tmp_path
    if case == "empty telemetry":
        (tmp_path / "telemetry-scorer.jsonl").write_text("")
    with pytest.raises(StreamflowError, match=message):
        make_report(run_dir)
    monkeypatch.setattr(streamflow.cli.main, "SUBCOMMANDS", ("report",))
    assert streamflow.cli.main.main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamflow report: error: ") and err.count("\n") == 1


def test_report_command_prints_the_markdown_path(toy_run, monkeypatch, capsys):
    monkeypatch.setattr(streamflow.cli.main, "SUBCOMMANDS", ("report",))
    assert streamflow.cli.main.main(["report", str(toy_run[0])]) == 0
    assert capsys.readouterr().out == f"{toy_run[0] / 'report.md'}\n"


def test_trigger_operations_section_has_the_menu_counts_and_zero_bias_rates(tmp_path):
    from streamflow.scoring.frame_scorer import line_figures
    from streamflow.trigger import LineConfig, TriggerMenu

    lines = [LineConfig("a", "a", 0.05, window=5_000), LineConfig("b", "b", 0.05, window=5_000, prescale=2),
             LineConfig("zb", accept=0.05, kind="zero_bias", seed=1)]
    menu = TriggerMenu(lines)
    rng = np.random.default_rng(8)
    kept, n = [], 40 * 1000
    for k in range(40):
        common = rng.normal(size=1000)
        labels = (rng.random(1000) < 0.1).astype(np.int8)
        scores = {"a": common + rng.normal(size=1000) + 2 * labels, "b": common + rng.normal(size=1000)}
        selection = menu.select(scores, labels)
        i = selection.indices
        kept.append(SelectedEvents(ids=np.arange(k * 1000, (k + 1) * 1000, dtype=np.uint64)[i],
                                   seq=np.full(len(i), k, np.uint64), bits=selection.bits[i],
                                   passed=selection.passed[i],
                                   scores=np.zeros((len(i), 3), np.float32), features=np.zeros((len(i), 1), np.float32),
                                   labels=labels[i]))
    writer = SelectionWriter(tmp_path / "selections.h5", ("x0",), tuple(line.name for line in lines))
    for events in kept:
        writer.append(events)
    writer.close()
    stats = menu.stats()
    record = {"kind": "scorer", "role": "scorer", "time": 1.7e9, "uptime_s": 1.0, "events": n, "frames": 40,
              "lines": [line_figures(s, kind=line.kind) for s, line in zip(stats, lines, strict=True)]}
    (tmp_path / "telemetry-scorer.jsonl").write_text(encode_stats(record).decode() + "\n")
    report = make_report(tmp_path)
    text = report.read_text()
    section = text[text.index("## Trigger operations"):].splitlines()

    def row(first: str, nth: int = 0) -> list[str]:
        return [c.strip() for c in [r for r in section if r.startswith(f"| {first} |")][nth].strip("|").split("|")]

    for s in stats:
        assert row(s.name)[1:4] == [f"{s.seen:,}", f"{s.not_judged:,}", f"{s.accepted:,}"]
        assert row(s.name)[5:7] == [f"{s.recorded:,}", f"{s.unique:,}"]
    assert stats[1].recorded == stats[1].accepted // 2
    assert row("a", 1)[2] == f"{stats[0].overlap['b']:,}"  # the overlap matrix's a/b cell
    def estimate(cell: str) -> tuple[float, float]:
        value, error = (float(x.strip().rstrip("%")) / 100 for x in cell.split("(")[0].split("±"))
        return value, error

    passed, passed_error = estimate(row("b", 2)[1])
    recorded, recorded_error = estimate(row("b", 2)[3])
    assert abs(passed - stats[1].accepted / n) < 3 * passed_error  # b's rate before its prescale of 2
    assert abs(recorded - stats[1].recorded / n) < 3 * recorded_error  # and after it
    assert passed > 1.5 * recorded
