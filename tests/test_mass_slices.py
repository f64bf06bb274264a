"""Per-mass-slice calibration of a resonance score: one threshold keeps the same fraction of every slice."""

from __future__ import annotations

import math

import torch

from streamflow.learners.mass_slices import MassSliceCalibration

BAND = (3300.0, 3700.0)


def sculpting_score(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (mjj, score) of a background whose score spread grows with m, as ANODE's raw R did (heavy tails)."""
    m = BAND[0] + (BAND[1] - BAND[0]) * torch.rand(n, generator=generator)
    spread = 0.1 + 0.3 * (m - BAND[0]) / (BAND[1] - BAND[0])
    scores = spread * torch.distributions.StudentT(3.0).sample((n,))
    return m, scores


def test_a_threshold_on_the_calibrated_score_keeps_the_same_fraction_of_every_slice() -> None:
    generator = torch.Generator().manual_seed(1)
    calibration = MassSliceCalibration(BAND, slices=8, reference=4000, device=torch.device("cpu"))
    m, raw = sculpting_score(4000, generator)
    rows = torch.stack([m, raw], dim=1)
    assert torch.isnan(calibration.standardise(raw[:10], m[:10])).all()  # no calibration yet: no score
    calibration.add(rows)
    calibration.recalibrate(lambda x: x[:, 1], lambda x: x[:, 0], lambda t: t)
    m, raw = sculpting_score(200_000, generator)
    z = calibration.standardise(raw, m)
    edges = torch.linspace(*BAND, 9)
    index = torch.bucketize(m, edges[1:-1])
    for scores, spread in ((raw, "raw"), (z, "calibrated")):
        threshold = torch.quantile(scores[:100_000], 0.95)
        kept = [float((scores[index == b] > threshold).float().mean()) for b in range(8)]
        if spread == "raw":  # the raw score's cut gathers at high m: a sculpted bump
            assert kept[-1] > 2 * kept[0], kept
        else:  # per slice: the reference's quantile from ~500 events and ~3,100 events cut, both binomial
            sigma = math.sqrt(0.05 * 0.95 / 500 + 0.05 * 0.95 / 3100)  # ~1.05%
            assert max(abs(k - 0.05) for k in kept) < 3.5 * sigma, kept  # the raw cut: 5 sigma off at the ends
    # Within a slice the calibrated score keeps the raw score's order (a monotone map, ties broken).
    inside = index == 3
    order = torch.argsort(raw[inside])
    assert bool((z[inside][order].diff() >= 0).all())
    assert math.isclose(float(z.std()), 1.0, abs_tol=0.1)
