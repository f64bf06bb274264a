"""CI latency benchmarks of the scorer's per-frame hot paths (cases in bench/hotpaths.py), short mode.

pytest-benchmark times each streamflow path; its baseline is timed in the same rounds,
just before each timed call (the pedantic ``setup`` hook), so both see the same machine
load. A case fails when min(streamflow) / min(baseline) exceeds ``FACTOR`` (3) times the
ratio committed in bench/baseline_hotpaths.json: a real slow-down of the path itself,
not a slow or busy machine. Every figure, with pytest-benchmark's statistics of the
streamflow side, goes to ``.benchmarks/hotpaths.json`` under the rootdir (git-ignored).
Regenerate the committed ratios with ``python -m bench.hotpaths --write-baseline``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.hotpaths import FACTOR, FRAME, case_names, committed_ratio, machine, make_case, time_call
from streamflow.scoring.frame_scorer import resolve_device

ROUNDS = 25
WARMUP = 2

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Collects every case's figures; written to .benchmarks/hotpaths.json after the module."""
    collected: dict[str, Any] = {}
    yield collected
    path = Path(request.config.rootpath) / ".benchmarks" / "hotpaths.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "frame_size": FRAME, "rounds": ROUNDS, "factor": FACTOR,
                                "cases": collected}, indent=2) + "\n")


@pytest.mark.parametrize("name", case_names())
def test_hot_path_within_factor_of_committed_ratio(name: str, benchmark: Any, results: dict[str, Any]) -> None:
    case = make_case(name, FRAME, resolve_device("auto"))
    committed = committed_ratio(name, case.device)
    if committed is None:
        pytest.skip(f"no committed {case.device} ratio for {name}: run python -m bench.hotpaths --write-baseline")
    baseline_s: list[float] = []
    benchmark.group = f"hot paths, {FRAME}-event frames"
    benchmark.extra_info.update(device=case.device, committed_ratio=committed)
    benchmark.pedantic(case.target, setup=lambda: baseline_s.append(time_call(case.baseline)),
                       rounds=ROUNDS, warmup_rounds=WARMUP)
    if benchmark.disabled:
        pytest.skip("benchmarks disabled (--benchmark-disable)")
    baseline_s = baseline_s[WARMUP:]
    target = benchmark.stats.stats
    ratio = target.min / min(baseline_s)
    benchmark.extra_info.update(baseline_min_s=min(baseline_s), ratio=ratio)
    results[name] = {
        "device": case.device, "ratio": ratio, "committed_ratio": committed, "limit": FACTOR * committed,
        "target": target.as_dict(),
        "baseline": {"min": min(baseline_s), "median": statistics.median(baseline_s), "rounds": len(baseline_s)},
    }
    assert ratio <= FACTOR * committed, (
        f"{name}: {ratio:.2f}x its baseline ({target.min * 1e6:.0f} us vs {min(baseline_s) * 1e6:.0f} us); "
        f"committed {committed:.2f}x, limit {FACTOR:g}x that = {FACTOR * committed:.2f}x"
    )
