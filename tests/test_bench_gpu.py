"""``python -m bench.gpu --device cpu --quick``: one call, under two minutes, prints the README's GPU tables."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import gpu
from streamflow.scoring.presets import preset

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 120.0


def table(lines: list[str], first_header: str) -> tuple[list[str], list[list[str]]]:
    """The markdown table whose header starts with ``first_header``: its header and its rows' cells."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header}"))
    cells = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells.append([c.strip() for c in line.strip("|").split("|")])
    return cells[0], cells[2:]


def figure(cell: str) -> float:
    """A printed rate or speed-up (``123k``, ``4.56 M``, ``1.2 G``, ``1.05x``, ``1,234``) as a number."""
    text = cell.replace(",", "").removesuffix("x").strip()
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if text.endswith(unit):
            return float(text.removesuffix(unit)) * scale
    return float(text)


def test_quick_cpu_suite_prints_every_row_with_finite_positive_figures(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--device", "cpu", "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=2 * LIMIT_S)
    elapsed = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    assert elapsed < LIMIT_S, f"bench.gpu --quick took {elapsed:.0f} s"
    lines = done.stdout.splitlines()

    header, rows = table(lines, "measurement")
    sizes = [f"{n:,}" for n in gpu.QUICK_SIZES]
    assert header == ["measurement", "device", *sizes, "target (H100-class)"]
    names = [row[0] for row in rows]
    for config in preset("lhco").learners:
        for call in ("score", "learn", "learn + score"):
            assert any(name.startswith(f"{call} {config.name}") for name in names), (call, config.name)
    for call in ("score", "learn", "learn + score"):
        assert f"{call} menu, events/s" in names
    for stage in ("score", "learn"):
        assert f"zuko / nflows {stage} flow_m (zuko: same options)" in names
        assert f"zuko / nflows {stage} flow_m (zuko: nflows' MACs)" in names
    targets = {row[0]: row[-1] for row in rows}
    assert targets["score flow_m, events/s"] == ">= 100 M/s"
    assert targets["learn + score flow_m, events/s"] == ">= 40 M/s"
    for row in rows:
        assert row[1] == "cpu"
        measured = [figure(cell) for cell in row[2:-1] if cell]
        assert measured, row  # every row has a figure at some size
        assert all(math.isfinite(v) and v > 0 for v in measured), row
    # Every size measured on every row (CATHODE's rows split where its gate opened between sizes).
    assert all(all(row[2:-1]) for row in rows if "cathode" not in row[0])

    header, runs = table(lines, "streamflow run")
    assert header[1:] == ["device", "frame", "events", "scorer events/s", "latency p50 ms", "p99 ms"]
    assert len(runs) == len(gpu.LEARN_POLICIES)
    for run in runs:
        assert run[1] == "cpu" and run[2] == f"{gpu.QUICK_E2E[0]:,}"
        assert figure(run[3]) == gpu.QUICK_E2E[1]  # every event of the stream scored
        assert all(math.isfinite(figure(c)) and figure(c) > 0 for c in run[4:])

    figures = json.loads(out.read_text())
    assert {r["frame_size"] for r in figures["learners"]} == set(gpu.QUICK_SIZES)
    assert figures["end_to_end"][0]["events"] == gpu.QUICK_E2E[1]
