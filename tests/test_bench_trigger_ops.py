"""bench.trigger_ops: its figures and verdicts, and menus replayed on a run's recorded scores."""

from __future__ import annotations

from pathlib import Path

from bench.trigger_ops import run, verdicts

SMALL = {"source": "synthetic", "events": 40_960, "signal_fraction": 0.01, "learners": ["ae"], "budget": None,
         "zero_bias": None, "interval": 8_192, "threads": 1, "seed": 0}


def test_a_replay_on_recorded_scores_counts_as_the_live_run(tmp_path: Path) -> None:
    scores = tmp_path / "scores.npz"
    live = run(**SMALL, scores_file=str(scores))  # type: ignore[arg-type]
    assert scores.exists()
    replayed = run(**SMALL, scores_file=str(scores))  # type: ignore[arg-type]
    for a, b in zip(live["lines"], replayed["lines"], strict=True):
        assert (a["population"], a["fraction"], a["intervals"]) == (b["population"], b["fraction"], b["intervals"])
    plain = run(**{**SMALL, "control": 0.0}, scores_file=str(scores))  # type: ignore[arg-type]
    assert plain["lines"][0]["population"] == live["lines"][0]["population"]
    assert plain["lines"][0]["not_judged"] > 0, "a plain line waits for its warm-up; a controlled one tracks"


def test_the_rate_control_holds_the_autoencoder_line_on_every_interval(tmp_path: Path) -> None:
    out = run(**SMALL)  # type: ignore[arg-type]
    line = out["lines"][0]
    assert abs(line["deviation"]) < 0.05 and line["worst_interval"] < 0.15
    assert dict(verdicts(out))[f"ae: overall {line['fraction']:.3%} ({line['deviation']:+.1%})"]
