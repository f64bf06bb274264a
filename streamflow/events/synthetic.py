"""An LHCO-like event generator: the embedded default source, no file needed.

Not a physics simulation: a fast, seeded, vectorised sampler whose background and
signal marginals resemble the LHC Olympics 2020 R&D dataset, so that the whole
pipeline (replay, online learners, triggers) runs and can be tested anywhere. It
emits the 16 ``LHCO_NAMES`` columns; tau1..3 are generated per jet and the ratio
columns are computed from them (so tau21 = tau2/(tau1 + 1e-5) holds exactly).

Background (QCD dijets), per event:

- mjj from the dijet function times a turn-on (the pT > 1.2 TeV trigger):
  p(m) ∝ sigmoid((m - t)/w) (1 - x)^p1 / x^p2, x = m / 13 TeV, sampled by inverting
  its tabulated CDF on [1, 10] TeV;
- two independent jets: log m0 = log(scale) + a log(mjj / 3 TeV) + sd z with z a
  skew-normal (a slightly longer tail to low masses), then m = m0 / (1 + m0 / cap)
  (a soft upper bound); log tau1 = c0 + c1 log m + c2 log(mjj / 3 TeV) + noise, the
  noise Gaussian plus a rare exponential outlier (the long tau1 tail of the real
  file; c0..c2 from a least-squares fit to it); tau21 = |mu21(m) + s21 z| and
  tau32 = |mu32(m) + s32 z| with left-skewed z, whose means fall from their
  light-jet values as the jet mass passes ~300 GeV
  (mu(m) = high - drop * sigmoid((log m - log m_prong) / width)): massive QCD jets
  look more two-pronged.

Signal (W' -> X(500 GeV) Y(100 GeV), both -> qq), per event:

- mjj: N(m_W', r m_W') in a fraction 1 - f_tail of events, else a wider, lower
  Gaussian (final-state radiation outside the jets);
- X and Y jets, each in the pT-leading slot with probability 1/2; each resolved
  with probability p_res: m = m_peak exp(N(0, r_m)), two-prong tau21 = |N(mu, s)|;
  an unresolved jet (a prong lost) is drawn like a QCD jet. The reconstructed Y
  peak (106 GeV) sits above the pole mass, as in the real file.

The defaults were fitted (scipy Nelder-Mead on quantiles, mjj on its exact CDF)
to the background of the real file's first 60,000 events
(``lhco_rnd_first60k.features.h5``: 54,646 background, 5,354 signal) and the
signal set by eye. Background quantiles 5/25/50/75/95 %, real vs synthetic
(GeV for masses):

    mjj         2398 2658 2982 3467 4505   vs  2396 2661 2966 3457 4527
    mjmin         38   66  100  154  283   vs    38   71  107  158  267
    mjmax         84  152  235  356  581   vs    91  157  229  334  565
    tau1_j1    .013 .033 .065 .142 .386    vs  .015 .039 .078 .152 .409
    tau21_jmin  .23  .47  .64  .80  .99    vs   .22  .49  .65  .80  .99
    tau21_jmax  .11  .32  .51  .69  .93    vs   .10  .34  .52  .69  .90
    tau32_jmin  .46  .66  .78  .88  .99    vs   .40  .64  .79  .90 1.01

Signal, real vs synthetic: mjj median 3492 vs 3485 (quartiles 3387-3589 vs
3372-3590), mjmax median 500 vs 490, mjmin median 110 vs 107, tau21_jmax median
0.19 vs 0.21, tau21_jmin 0.38 vs 0.40. Known differences: the 1% tails (tau1 up
to 1.2 instead of 1.9, tau2 and tau3 tails ~50% longer, mjmax 99% 790 vs 760);
unresolved signal jets are lighter than real ones (mjmax 5% quantile 120 vs 180);
the two jets are correlated only through mjj; there are no angles. Throughput:
about 1.5 M events/s on one busy CPU core. tests/test_events_synthetic.py checks
background quantiles against the real file within the tolerances it states.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from streamflow.errors import ConfigError
from streamflow.events.batch import EventBatch
from streamflow.events.chunking import check_seed, generate_chunks
from streamflow.events.derived import assemble
from streamflow.events.schema import LHCO_NAMES, TAU_EPS

_SQRT_S = 13000.0  # GeV, the LHC collision energy that scales the dijet function


@dataclass(frozen=True)
class SyntheticShapes:
    """Shape parameters of :class:`SyntheticLHCO` (GeV where dimensionful); see the module docstring."""

    # background mjj: dijet function (1 - x)^p1 / x^p2 times a sigmoid turn-on
    mjj_turn_on: float = 2472.0
    mjj_turn_on_width: float = 87.0
    mjj_p1: float = 11.78
    mjj_p2: float = 0.404
    # QCD jet mass: m = m0 / (1 + m0 / mass_cap) (a soft upper bound), with
    # log m0 = log(mass_scale) + mass_mjj_power log(mjj / 3 TeV) + mass_log_sd z,
    # z a standard skew-normal of shape mass_log_skew (< 0: a longer tail to low masses)
    mass_scale: float = 165.6
    mass_mjj_power: float = 0.43
    mass_log_sd: float = 0.749
    mass_log_skew: float = -0.32
    mass_cap: float = 2519.0
    # log tau1 = c0 + c1 log m + c2 log(mjj / 3 TeV) + N(0, s) [+ Exp(outlier_scale) w.p. outlier_fraction]
    tau1_intercept: float = -9.045
    tau1_mass_slope: float = 1.28
    tau1_mjj_slope: float = -0.55
    tau1_noise: float = 0.407
    tau1_outlier_fraction: float = 0.0386
    tau1_outlier_scale: float = 1.77
    # QCD tau21, tau32: |mean(m) + sd z|, z a standard skew-normal of shape delta (< 0: left tail),
    # mean(m) = high - drop * sigmoid((log m - log prong_mass) / prong_width)
    prong_mass: float = 282.0
    prong_width: float = 0.38
    tau21_high: float = 0.697
    tau21_drop: float = 0.478
    tau21_sd: float = 0.227
    tau21_skew: float = -0.89
    tau32_high: float = 0.772
    tau32_drop: float = 0.137
    tau32_sd: float = 0.189
    tau32_skew: float = -0.98
    # signal: mjj
    wprime_mass: float = 3500.0
    wprime_resolution: float = 0.04
    wprime_tail_fraction: float = 0.15
    wprime_tail_shift: float = 0.08
    wprime_tail_resolution: float = 0.12
    # signal: jets (each resolved with probability resolved_fraction, else drawn like a QCD jet)
    x_mass_peak: float = 500.0
    y_mass_peak: float = 106.0
    x_mass_resolution: float = 0.08
    y_mass_resolution: float = 0.12
    resolved_fraction: float = 0.8
    x_tau21_mean: float = 0.18
    x_tau21_sd: float = 0.13
    y_tau21_mean: float = 0.36
    y_tau21_sd: float = 0.16
    signal_tau32_mean: float = 0.67
    signal_tau32_sd: float = 0.19


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _skewed(rng: np.random.Generator, center: np.ndarray, sd: float, delta: float) -> np.ndarray:
    """center + sd z, z a standardised (mean 0, sd 1) skew-normal of shape delta in (-1, 1).

    z = (delta |u0| + sqrt(1 - delta^2) u1 - mu) / sqrt(1 - mu^2), u0, u1 ~ N(0, 1),
    mu = delta sqrt(2 / pi); delta < 0 gives a long left tail.
    """
    u = rng.standard_normal((2, len(center)))
    mu = delta * np.sqrt(2.0 / np.pi)
    scale = sd / np.sqrt(1.0 - mu * mu)
    np.abs(u[0], out=u[0])
    u[0] *= scale * delta
    u[1] *= scale * np.sqrt(1.0 - delta * delta)
    u[0] += u[1]
    u[0] += center - scale * mu
    return u[0]


class SyntheticLHCO:
    """EventSource of LHCO-like events with truth labels; endless unless ``n_events`` is given.

    ``signal_fraction`` is the probability that an event is signal (1% by default:
    about ten times the standard LHCO injection, so that a bump shows in short
    runs). Event i depends only on (seed, i).
    """

    names: tuple[str, ...] = LHCO_NAMES
    has_labels = True

    def __init__(
        self,
        signal_fraction: float = 0.01,
        seed: int = 0,
        n_events: int | None = None,
        shapes: SyntheticShapes = SyntheticShapes(),
    ) -> None:
        if not 0.0 <= signal_fraction <= 1.0:
            raise ConfigError(f"synthetic source: signal_fraction must be in [0, 1], got {signal_fraction!r}")
        if n_events is not None and n_events < 0:
            raise ConfigError(f"synthetic source: n_events must be >= 0, got {n_events!r}")
        self.signal_fraction = float(signal_fraction)
        check_seed(seed, "synthetic source")
        self.seed = seed
        self.n_events = n_events
        self.shapes = shapes
        self._mjj_grid, self._mjj_cdf = self._tabulate_mjj()

    def _tabulate_mjj(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.shapes
        grid = np.linspace(1000.0, 10000.0, 4097)
        x = grid / _SQRT_S
        log_pdf = s.mjj_p1 * np.log1p(-x) - s.mjj_p2 * np.log(x)
        pdf = _sigmoid((grid - s.mjj_turn_on) / s.mjj_turn_on_width) * np.exp(log_pdf - log_pdf.max())
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(grid))])
        return grid, cdf / cdf[-1]

    def _qcd_jets(self, rng: np.random.Generator, log_mjj: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """log m, tau21, tau32 of one QCD-like jet per event; log_mjj = log(mjj / 3 TeV)."""
        s = self.shapes
        log_m0 = _skewed(rng, np.log(s.mass_scale) + s.mass_mjj_power * log_mjj, s.mass_log_sd, s.mass_log_skew)
        log_m = log_m0 - np.log1p(np.exp(log_m0) / s.mass_cap)
        prong = _sigmoid((log_m - np.log(s.prong_mass)) / s.prong_width)
        tau21 = np.abs(_skewed(rng, s.tau21_high - s.tau21_drop * prong, s.tau21_sd, s.tau21_skew))
        tau32 = np.abs(_skewed(rng, s.tau32_high - s.tau32_drop * prong, s.tau32_sd, s.tau32_skew))
        return log_m, tau21, tau32

    def _signal_jets(
        self, rng: np.random.Generator, log_mjj: np.ndarray, peak: float, resolution: float, tau21: tuple[float, float]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """log m, tau21, tau32 of a resonance's jet: two-pronged if resolved, else QCD-like."""
        s = self.shapes
        n = len(log_mjj)
        log_m, ratio21, ratio32 = self._qcd_jets(rng, log_mjj)
        resolved = rng.random(n) < s.resolved_fraction
        k = int(resolved.sum())
        log_m[resolved] = np.log(peak) + resolution * rng.standard_normal(k)
        ratio21[resolved] = np.abs(tau21[0] + tau21[1] * rng.standard_normal(k))
        ratio32[resolved] = np.abs(s.signal_tau32_mean + s.signal_tau32_sd * rng.standard_normal(k))
        return log_m, ratio21, ratio32

    def _taus(self, rng: np.random.Generator, log_mjj: np.ndarray, log_m: np.ndarray, tau21: np.ndarray,
              tau32: np.ndarray) -> np.ndarray:  # fmt: skip
        """tau1, tau2, tau3 [n, 3] of jets with the given ratios."""
        s = self.shapes
        n = len(log_m)
        log_tau1 = (
            s.tau1_intercept
            + s.tau1_mass_slope * np.maximum(log_m, 0.0)
            + s.tau1_mjj_slope * log_mjj
            + s.tau1_noise * rng.standard_normal(n)
        )
        outlier = np.flatnonzero(rng.random(n) < s.tau1_outlier_fraction)
        log_tau1[outlier] += rng.exponential(s.tau1_outlier_scale, len(outlier))
        taus = np.empty((n, 3))
        taus[:, 0] = np.exp(log_tau1)
        taus[:, 1] = tau21 * (taus[:, 0] + TAU_EPS)
        taus[:, 2] = tau32 * (taus[:, 1] + TAU_EPS)
        return taus

    def _block(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.shapes
        is_signal = rng.random(n) < self.signal_fraction
        sig = np.flatnonzero(is_signal)
        mjj = np.interp(rng.random(n), self._mjj_cdf, self._mjj_grid)
        tail = rng.random(len(sig)) < s.wprime_tail_fraction
        relative = np.where(tail, 1.0 - s.wprime_tail_shift, 1.0) + np.where(
            tail, s.wprime_tail_resolution, s.wprime_resolution
        ) * rng.standard_normal(len(sig))
        mjj[sig] = s.wprime_mass * np.maximum(relative, 1e-3)
        log_mjj = np.log(mjj / 3000.0)

        jets = [self._qcd_jets(rng, log_mjj) for _ in range(2)]  # j1, j2: (log m, tau21, tau32)
        if len(sig):
            x_jet = self._signal_jets(rng, log_mjj[sig], s.x_mass_peak, s.x_mass_resolution,
                                      (s.x_tau21_mean, s.x_tau21_sd))  # fmt: skip
            y_jet = self._signal_jets(rng, log_mjj[sig], s.y_mass_peak, s.y_mass_resolution,
                                      (s.y_tau21_mean, s.y_tau21_sd))  # fmt: skip
            x_leads = rng.random(len(sig)) < 0.5  # is X the pT-leading jet j1?
            for k in range(3):
                jets[0][k][sig] = np.where(x_leads, x_jet[k], y_jet[k])
                jets[1][k][sig] = np.where(x_leads, y_jet[k], x_jet[k])

        taus = np.concatenate([self._taus(rng, log_mjj, *jet) for jet in jets], axis=1)
        return assemble(mjj, np.exp(jets[0][0]), np.exp(jets[1][0]), taus), is_signal.astype(np.int8)

    def chunks(self, chunk_size: int) -> Iterator[EventBatch]:
        return generate_chunks(self._block, self.names, self.seed, self.n_events, chunk_size)
