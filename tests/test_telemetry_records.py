"""Typed telemetry records: what each kind of process sends, its JSON line, and reading it back --
records that carry their kind, and lines written before records did, told apart by their fields."""

from __future__ import annotations

import json
import math

from streamflow.ops.dashboard import MonitorState, plain_line
from streamflow.stream.telemetry import (
    ProducerRecord,
    ScorerRecord,
    SinkRecord,
    TelemetryRecord,
    TelemetryReporter,
    read_jsonl,
    read_record,
    record_kind,
)


def _scorer_record() -> ScorerRecord:
    return ScorerRecord(events=4096, frames=1, events_per_s=8000.0, frames_per_s=2.0,
                        latency={"n": 1, "p50_ms": 4.0, "p90_ms": 4.0, "p99_ms": 4.0}, rejected=0,
                        sequence={"frames": 1, "gaps": 0}, accepted=41, blocked_s=0.0,
                        learners={"flow_m": {"loss": math.nan, "steps": 3.0}},
                        lines=[{"name": "flow_m", "learner": "flow_m", "q": 0.01, "achieved": 0.01}], device="cpu")


def test_records_round_trip_through_the_json_lines_and_carry_their_kind(tmp_path) -> None:
    records = [ProducerRecord(events=8192, frames=2, source="synthetic", sent_all=True), _scorer_record(),
               SinkRecord(events=41, frames=1, written=41, pending=0)]
    for record in records:  # a scorer may carry any name: its kind, not its role, says what it is
        reporter = TelemetryReporter(f"proc-{record.KIND}-rank1", jsonl_path=tmp_path / f"{record.KIND}.jsonl")
        reporter.report(record)
        reporter.close()
        [line] = read_jsonl(tmp_path / f"{record.KIND}.jsonl")
        assert line["kind"] == record.KIND and record_kind(line) == record.KIND
        assert line["role"] == f"proc-{record.KIND}-rank1" and {"pid", "n", "time", "uptime_s"} <= set(line)
        back = read_record(line)
        assert type(back) is type(record)
        if isinstance(record, ScorerRecord):  # NaN travels as null
            assert line["learners"]["flow_m"]["loss"] is None
            record.learners = {"flow_m": {"loss": None, "steps": 3.0}}  # type: ignore[dict-item]
        assert back == record


def test_lines_written_before_records_had_a_kind_are_told_apart_by_their_fields() -> None:
    assert record_kind({"role": "replay-1", "source": "gaussian"}) == "producer"
    assert record_kind({"role": "scorer-rank1", "lines": []}) == "scorer"
    assert record_kind({"role": "writer", "written": 3}) == "sink"
    assert record_kind({"role": "tool"}) == "tool"
    assert record_kind({"kind": "scorer", "role": "producer"}) == "scorer", "a record's kind decides"
    assert record_kind({"kind": "bogus", "role": "sink"}) == "sink", "an unknown kind falls back on the fields"
    old = read_record({"role": "scorer", "events": 5, "lines": [], "device": None, "unknown": 1})
    assert isinstance(old, ScorerRecord) and old.events == 5 and old.device == "", "null takes the default"
    assert type(read_record({"role": "tool", "events": 2})) is TelemetryRecord


def test_the_monitor_reads_a_scorer_by_its_record_kind_whatever_its_name(tmp_path) -> None:
    sent: list[bytes] = []
    reporter = TelemetryReporter("my-scorer", publish=sent.append)
    reporter.report(_scorer_record())
    state = MonitorState("tcp://127.0.0.1:5559")
    assert state.feed(sent[0], now=1.0)
    [view] = state.views("scorer")
    assert view.role == "my-scorer" and json.loads(sent[0])["kind"] == "scorer"
    assert "flow_m 1.00%/1.00%" in plain_line(state, 1.0)
