"""bench.cathode invariance: one stream's figures, with the seed control that separates frame from noise."""

from __future__ import annotations

import pytest

from bench.cathode import OVERLAPS, invariance_stream


def test_one_stream_gives_every_overlap_and_the_coordinate_effect_beyond_training_noise() -> None:
    summary, rows = invariance_stream(61_440, 0.01, 20_480, 3, ("cwola",), {})
    assert "synthetic events streamed (seed 3" in summary and "held-out SR events" in summary
    overlaps, aucs = rows["cwola"]
    assert len(overlaps) == len(OVERLAPS) and all(0.0 <= v <= 100.0 for v in overlaps[:-1])
    cross, seeds = overlaps[3], overlaps[4]
    assert overlaps[-1] == pytest.approx(seeds - cross), "the effect is the seed overlap minus the cross-frame one"
    assert min(aucs) > 0.75, f"CWoLA finds the 3.5 TeV resonance in every frame and from either seed: {aucs}"
    assert aucs[0] != aucs[2], "the control is another model: seed 1's weights are not seed 0's"
