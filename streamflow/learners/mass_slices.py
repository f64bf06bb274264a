"""Per-mass-slice standardisation of a resonance score: one threshold that is flat in mjj inside the SR.

A trigger line accepts the events whose score exceeds one quantile of all its
scored events. If the score's spread on background depends on m, one threshold
keeps more events where the spread is larger and sculpts a bump into the accepted
mjj spectrum. ANODE's R = log p_SR(x | m) - log p_bkg(x | m) does this: on a
background-only stream its mean is flat in m (0.003-0.018 in eight 50 GeV slices)
but its 95% quantile rises from 0.25 at 3.3 TeV to 0.38 at 3.7 TeV -- the steeply
falling spectrum leaves the high-mass end of the SR with fewer events, so both
flows' errors there are larger -- and a cut on R gathered at high m (KS D = 0.10).
Better-matched flows shrink that error but cannot remove it: both learn from a
spectrum that falls across the SR.

The cure, as in the designed decorrelated tagger (Dolen et al. 2016), but for
every quantile rather than one: report

    z = Phi^-1(F_b(s)),   b = the mass slice of the event,

with F_b the distribution of the score over recent SR events in slice b and Phi
the normal CDF. On background z is N(0, 1) in every slice, so one threshold on z
keeps the same fraction of every slice whatever the line's q, and a signal still
sits in the high tail of its own slice. Standardising by each slice's mean and
standard deviation was tried first and is not enough: R has heavy tails (a few
events at |R| >> 1 set sigma_b), the slices' z spreads stayed at 0.40-0.62 and the
accepted mjj still differed from the SR's (KS D = 0.086).


F_b is measured on a **reference sample**: the last ``reference`` SR events
(:class:`RecentRows`, a ring buffer of stream rows), re-scored by the current
models after every frame they learn from. A calibration of the scores as they
were computed (decayed histograms of each event's score on arrival) lags behind
learners that still improve: R's spread shrinks as the flows converge, the
calibration still held the broader past, and slices shrinking at different rates
kept the selection sculpted (KS D = 0.045-0.053, p ~ 1e-4, with memories of
2,500-20,000 SR events). Re-scoring removes that lag; the price is two flow
forwards over the reference per frame (4,000 rows by default, about the cost of
scoring one frame of 4,096 events; 8,000 cost ANODE a quarter of its time).

F_b is a histogram of u = asinh(s) on ``BINS`` fixed bins over |s| <= ``LIMIT``
(0.02 wide in s near the 1% tail of R; a score beyond the limit is clamped), read
with linear interpolation inside a bin, so that z is continuous and keeps the
order of the scores within a slice -- except beyond the reference's last event in
a slice, where F_b is 1 and every score would get the same z: the most anomalous
events, where a signal sits, tied. So z carries a tie-break, ``TIE_BREAK`` x
asinh(s) (at most +-0.005), which orders those events by their raw score and
moves no other event by more than a few thousandths of a standard deviation.

What the calibration costs, measured (README, "CATHODE and ANODE online"): it
reorders the most anomalous events across slices -- on the same final ANODE
models the top-1% overlap between m and log m coordinates is 59.2% on raw R and
50.0% on z (4 slices: 52.1%, a 16,000-row reference: 52.8%, so not the
reference's noise), and the final models' max SIC at S/B 5.5% is 4.4 on raw R
against 4.1 on z (CATHODE's fell from 9.5 to 7.8 between runs); the stream-wide
efficiency at a 1% accept moved by about one point. The price of a threshold
that does not sculpt. Histograms are what data-parallel ranks can
merge: each rank re-scores its own reference, the ranks sum the histograms.

Trade-offs:

- A signal inside one slice moves that slice's F_b: a fraction f_S of the slice
  above a background quantile 1 - q raises that quantile so that about f_S more is
  counted as background -- the cost of any data-driven decorrelation, small at
  bump-hunt S/B. Fewer, wider slices dilute that pull, more slices follow the
  m-dependence closer: ``slices`` (default 8).
- The reference's size sets the calibration's noise: at 4,000 rows and 8 slices a
  slice's 1% quantile rests on ~5 events above it; that threshold moves from
  frame to frame as the buffer turns over (an eighth of it per 4k frame), noise
  that averages out across frames rather than building a bump. Measured on the
  synthetic million (``python -m bench.trigger_ops --done-when``, "dispersion"):
  the frames' counts above one fixed z threshold vary 1.17-1.29 times as much as
  binomial counts -- a tail jitter of ~10% a frame, small against the counting
  noise of the ~6 events a frame a 1% line on the SR accepts. A pooled tail
  (slices calibrated in the bulk, the tail above each slice's 90% quantile from
  all slices' excesses, scaled by the slice's 90%-50% spread) held 8 times the
  tail events and left the lines' interval rates as they were: not kept.
- A slice with fewer than ``MIN_EVENTS`` reference events is served by the pooled
  histogram of all slices; before the pool has that many there is no score (NaN).
- Because every frame's calibration is measured with the models as they then are,
  z stays comparable while a model's own scale still moves (a standardisation in
  its warm-up, a flow early in training): a learner may score from its first
  calibrated frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

MIN_EVENTS = 100
"""Reference events a slice needs before its own histogram calibrates it (its 5% quantile then to ~+-2%)."""
BINS = 512
LIMIT = 50.0
"""Scores beyond +-LIMIT are clamped there (a log-likelihood ratio of e^50 is far past any threshold)."""
U_LIMIT = math.asinh(LIMIT)
TIE_BREAK = 1e-3
"""Weight of asinh(score) added to z: orders the scores beyond the reference's tail (see the module docstring)."""


class MassSliceStandardiser:
    """Per-slice histograms of a score over the band ``[low, high)`` of the resonance variable."""

    def __init__(self, band: tuple[float, float], slices: int, device: torch.device) -> None:
        self.low, self.high = band
        self.slices = slices
        self.counts = torch.zeros(slices, BINS, dtype=torch.float64, device=device)
        """The reference sample's counts per slice and bin of u = asinh(score)."""

    def slice_of(self, m: Tensor) -> Tensor:
        """The slice index of band-feature values m (clamped to the band's slices)."""
        fraction = (m.double() - self.low) / (self.high - self.low)
        return (fraction * self.slices).long().clamp_(0, self.slices - 1)

    @staticmethod
    def _position(scores: Tensor) -> Tensor:
        """Bin coordinate in [0, BINS] of each score (integer part: the bin, fraction: where inside)."""
        u = torch.asinh(scores.double()).clamp(-U_LIMIT, U_LIMIT)
        return (u + U_LIMIT) / (2 * U_LIMIT) * BINS

    def histograms(self, scores: Tensor, m: Tensor) -> Tensor:
        """float64[slices, BINS]: the finite ``scores`` per slice and bin (data-parallel, the caller sums them
        across ranks before :meth:`calibrate`)."""
        finite = torch.isfinite(scores)
        bins = self._position(scores[finite]).long().clamp_(0, BINS - 1)
        flat = self.slice_of(m[finite]) * BINS + bins
        return torch.bincount(flat, minlength=self.slices * BINS).double().reshape(self.slices, BINS)

    def calibrate(self, counts: Tensor) -> None:
        """Take ``counts`` (:meth:`histograms` of the reference sample's scores) as the slices' F_b."""
        self.counts = counts

    def standardise(self, scores: Tensor, m: Tensor) -> Tensor:
        """z = Phi^-1(F_b(s)) per event (see the module docstring); NaN before any calibration."""
        pooled = self.counts.sum(dim=0)
        if float(pooled.sum()) < MIN_EVENTS:
            return torch.full_like(scores, math.nan)
        own = self.counts.sum(dim=1) >= MIN_EVENTS
        histograms = torch.where(own.unsqueeze(1), self.counts, pooled.unsqueeze(0))
        below = torch.cumsum(histograms, dim=1) - histograms  # counts in the bins below each bin
        norm = histograms.sum(dim=1)
        position = self._position(scores)
        index = self.slice_of(m)
        bin_ = position.long().clamp_(0, BINS - 1)
        inside = (position - bin_).clamp_(0, 1)
        total = norm[index]
        cdf = (below[index, bin_] + inside * histograms[index, bin_]) / total
        cdf = torch.minimum(torch.maximum(cdf, 0.5 / total), 1 - 0.5 / total)
        z = math.sqrt(2) * torch.erfinv(2 * cdf - 1) + TIE_BREAK * torch.asinh(scores.double())
        return torch.where(torch.isfinite(scores), z, scores.double()).float()


class RecentRows:
    """The last ``capacity`` stream rows added (a ring buffer of this rank's rows), for re-scoring."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.device = device
        self.rows: Tensor | None = None
        self.filled = 0
        self.next = 0

    def add(self, x: Tensor) -> None:
        if x.shape[0] == 0:
            return
        if self.rows is None:
            self.rows = torch.zeros(self.capacity, x.shape[1], device=self.device)
        x = x[-self.capacity:]
        index = (self.next + torch.arange(x.shape[0], device=self.device)) % self.capacity
        self.rows[index] = x
        self.next = (self.next + x.shape[0]) % self.capacity
        self.filled = min(self.capacity, self.filled + x.shape[0])

    def view(self) -> Tensor | None:
        """The rows held (in no particular order), or None before any."""
        return None if self.rows is None else self.rows[: self.filled]

    def state_dict(self) -> dict[str, Any]:
        return {"rows": None if self.rows is None else self.rows.clone(), "filled": self.filled, "next": self.next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rows = state["rows"]
        self.rows = None if rows is None else rows.to(self.device)
        self.filled, self.next = int(state["filled"]), int(state["next"])


class MassSliceCalibration:
    """A score's per-mass-slice calibration on a reference sample of recent SR rows (see the module docstring):
    ``add`` each frame's SR rows, ``recalibrate`` after the models learnt, ``standardise`` scores."""

    def __init__(self, band: tuple[float, float], slices: int, reference: int, device: torch.device) -> None:
        self.slices = MassSliceStandardiser(band, slices, device)
        self.reference = RecentRows(reference, device)

    def add(self, rows: Tensor) -> None:
        self.reference.add(rows)

    def recalibrate(self, score: Callable[[Tensor], Tensor], region: Callable[[Tensor], Tensor],
                    sum_: Callable[[Tensor], Tensor]) -> None:
        """Re-score the reference rows with ``score`` (the models as they now are); their histograms, summed over
        the ranks by ``sum_``, become the slices' F_b."""
        rows = self.reference.view()
        with torch.no_grad():
            if rows is None or rows.shape[0] == 0:
                counts = torch.zeros_like(self.slices.counts)
            else:
                counts = self.slices.histograms(score(rows), region(rows))
        self.slices.calibrate(sum_(counts))

    def standardise(self, scores: Tensor, m: Tensor) -> Tensor:
        return self.slices.standardise(scores, m)

    def score(self, x: Tensor, inside: Tensor, score: Callable[[Tensor], Tensor],
              region: Callable[[Tensor], Tensor]) -> Tensor:
        """Rows x's calibrated scores: the rows ``inside`` the band scored by ``score`` and standardised at their
        ``region`` value, NaN elsewhere (a resonance line judges SR events only)."""
        scores = torch.full((x.shape[0],), math.nan, device=x.device)
        rows = x[inside]
        scores[inside] = self.standardise(score(rows), region(rows))
        return scores

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.slices.counts.clone(), "reference": self.reference.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.slices.counts = state["counts"].to(self.slices.counts.device, torch.float64)
        self.reference.load_state_dict(state["reference"])
