"""A finished run folder, read: each process's telemetry, the run config, the scores samples, the selections.

Inputs, all written by the run's processes (each optional but the telemetry):

- ``telemetry-<role>.jsonl``: every stats message of each process, about two a
  second -- rates, latency percentiles, learner losses, and per trigger line its
  threshold, accept fraction and running counts (streamflow.trigger.lines);
- ``scores-<scorer>.npz``: a sample of the last scored events (ids, mjj,
  labels and one score array per learner, NaN = not scored);
- ``selections.h5``: the accepted events;
- ``run.json`` (or the selections file's ``config``): the run config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamflow.errors import StreamflowError
from streamflow.ops.dashboard import lookup, number
from streamflow.stream.selections import SelectedEvents, read_selections
from streamflow.stream.telemetry import ProducerRecord, read_jsonl, read_record, record_kind


@dataclass
class Stream:
    """The telemetry of one process: its file's role, its stage, its messages in time order."""

    role: str
    kind: str
    messages: list[dict[str, Any]]

    def times(self, t0: float) -> np.ndarray:
        return np.array([(number(m.get("time")) or np.nan) - t0 for m in self.messages])

    def values(self, *keys: str) -> np.ndarray:
        """A nested numeric field over time, NaN where missing or null."""
        return np.array([nan_of(lookup(m, *keys)) for m in self.messages], dtype=np.float64)

    @property
    def final(self) -> dict[str, Any]:
        return self.messages[-1]


@dataclass
class RunData:
    """Everything a report is drawn from."""

    run_dir: Path
    streams: list[Stream]
    t0: float
    config: dict[str, Any]
    scores: dict[str, dict[str, np.ndarray]]
    selections: tuple[SelectedEvents, dict[str, Any]] | None

    def of_kind(self, kind: str) -> list[Stream]:
        return [s for s in self.streams if s.kind == kind]

    @property
    def source(self) -> str | None:
        """The source spec: the run config's, else the one the producer reported."""
        source = lookup(self.config, "replay", "source")
        if source is None:
            records = [read_record(s.final) for s in self.of_kind("producer")]
            source = next((r.source for r in records if isinstance(r, ProducerRecord) and r.source), None)
        return str(source) if source is not None else None

    def learner_config(self, name: str) -> dict[str, Any]:
        learners = lookup(self.config, "scorer", "learners") or self.config.get("learners") or []
        return next((c for c in learners if isinstance(c, dict) and c.get("name") == name), {})


def nan_of(value: Any) -> float:
    """A telemetry value as a float, NaN where missing or null."""
    x = number(value)
    return np.nan if x is None else x


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder; a missing folder or one without telemetry is a one-line StreamflowError."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise StreamflowError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise StreamflowError(f"{run_dir} is not a folder: give the run folder (RUN_DIR)")
    files = sorted(run_dir.glob("telemetry-*.jsonl"))
    if not files:
        raise StreamflowError(f"no telemetry in {run_dir}: no telemetry-*.jsonl files (is it a run folder?)")
    streams = []
    for path in files:
        messages = sorted((m for m in read_jsonl(path) if isinstance(m, dict) and number(m.get("time"))),
                          key=lambda m: m["time"])
        if messages:
            streams.append(Stream(path.stem.removeprefix("telemetry-"), record_kind(messages[-1]), messages))
    if not streams:
        raise StreamflowError(f"no telemetry in {run_dir}: its telemetry-*.jsonl files hold no messages")
    order = {"producer": 0, "scorer": 1, "sink": 2}
    streams.sort(key=lambda s: (order.get(s.kind, 3), s.role))
    selections_path = run_dir / "selections.h5"
    selections = read_selections(selections_path) if selections_path.exists() else None
    config: dict[str, Any] = {}
    if (run_dir / "run.json").exists():
        try:
            config = json.loads((run_dir / "run.json").read_text())
        except json.JSONDecodeError as exc:
            raise StreamflowError(f"{run_dir / 'run.json'} is not valid JSON: {exc}") from None
    elif selections is not None:
        config = selections[1].get("config") or {}
    scores = {}
    for path in sorted(run_dir.glob("scores-*.npz")):
        try:
            with np.load(path) as data:
                scores[path.stem.removeprefix("scores-")] = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            raise StreamflowError(f"{path} is not a readable scores file: {exc}") from None
    t0 = min(s.messages[0]["time"] - (number(s.messages[0].get("uptime_s")) or 0.0) for s in streams)
    return RunData(run_dir, streams, float(t0), config if isinstance(config, dict) else {}, scores, selections)
