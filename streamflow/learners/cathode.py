"""Online CATHODE: the sideband flow as the background model, a classifier for data over background.

CATHODE (Hallin et al. 2022) in a stream, each event seen once, scored before it
is learnt from. Three parts learn together, in this order every frame:

1. **background** (:class:`~streamflow.learners.bands.BandFlow`): a conditional flow
   p_bkg(x | m) learning only sideband events (default 3.1-3.3 and 3.7-3.9 TeV); it
   counts the SR events it learnt from, which stays 0;
2. **SR mass model** (:class:`MassHistogram`): the mjj histogram of the SR events
   seen so far (fixed bins over the SR, mergeable across ranks);
3. **classifier** (:class:`CathodeClassifier`, the CWoLA MLP on the same features,
   never mjj): SR data (class 1) against k = ``oversample`` samples per SR event
   drawn fresh from the background flow's EMA weights at masses m ~ the SR mass
   model (class 0, weight 1/k, so both classes weigh the same). Its optimum is
   f = p_data / (p_data + p_bkg) on the SR, so its logit estimates
   log p_data(x | SR) / p_bkg(x | SR): the likelihood ratio, which does not depend
   on the coordinates (the Jacobian cancels) and is monotone in S/B for a narrow
   resonance.

**Gate.** Samples from an unconverged flow differ from SR data even without
signal, and a classifier learning that difference selects flow artefacts. The
classifier starts once the flow has learnt ``gate_events`` sideband events and its
loss has settled: the median -log p of incoming sideband events under the EMA flow,
*before* it learns them (a held-out loss, test-then-train), over blocks of
``gate_block`` events, changes by less than ``gate_tolerance`` nats between two
consecutive blocks. The gate then stays open (telemetry ``gate_open``; its state is
in the checkpoint). The median, not the mean: a learning flow can put an absurd
-log p on a rare event, and one such event decides a block's mean -- on the real
LHCO file an ordinary tail event (delta_m 665 GeV, the sideband background's
99.4% quantile) got 6e18 nats, a block's mean went to 3e15 nats while its median
was ~7, and no gate can settle on such blocks. The median's statistical error over
a block of n events is ~1.25 sd / sqrt(n) (~0.03 nats at 5,000 events for the
~1.5-nat spread of the real file's sideband losses).
Data-parallel, each rank takes the median of its own share of the block and the
gate the event-weighted mean of those, the same figure on every rank.

**Score**, on SR events only (NaN elsewhere: a line judges only SR events), from
the first frame after the first SR events reached the calibration below (the
second frame of a stream): the classifier's logit (EMA weights).

**Before the gate** (``before_gate``, default "sidebands") the classifier does not
wait: it learns SR data (class 1) against the frame's *sideband events* (class 0,
weighted so both classes weigh the same) -- CWoLA's background model, real
events at the wrong mjj, where CATHODE's will be the flow's samples at the right
one. Its logit then estimates log p_SR(x) / p_SB(x): a likelihood ratio as well,
biased only by how the features change between the sidebands and the SR (CWoLA's
limit), and free of the flow's artefacts, which is what the gate guards against.
When the gate opens, class 0 becomes the flow's samples and the same classifier
carries on, so the line keeps the signal it found and the flow's interpolation
removes what the sidebands' mjj offset taught it. Measured (README): on the
synthetic million at 1% signal the line's stream-wide efficiency went from 39.0%
to 47.7% (its first ~200k events no longer judged by a density score), and on the
real 60k file -- where the gate never opens -- its SR AUC from 0.59 to 0.83.
"density" keeps the earlier behaviour: before the gate the line scores by the
background flow's -log p_bkg(x | m), how unlike the interpolated sideband
background an SR event is -- a density score, weaker and coordinate-dependent,
from the background model alone -- and the classifier starts at the gate.
(Waiting for the flow's standardisation to freeze instead left 41% of the SR
events of the first 40k real events unjudged; taking SR events into that
standardisation, as ANODE does, moved the closure AUC from 0.51-0.53 to
0.52-0.55, so CATHODE's standardisation stays the sideband events'.) The gate is
not lowered: a classifier learning against an unsettled flow learns the flow's
artefacts.

The score is reported as its per-mass-slice quantile z = Phi^-1(F_b(s)) over the
SR's ``mass_slices`` slices, F_b measured on the last ``reference_events`` SR events
re-scored by the current models after each frame
(:class:`~streamflow.learners.mass_slices.MassSliceCalibration`). Two reasons: the
threshold of a line is then flat in mjj inside the SR (no sculpted bump, as for
ANODE), and whatever the classifier's scale as it learns (or the density's, under
"density") the line sees one N(0, 1) scale per slice, so when the gate opens its
threshold stays where it was.

Cost per frame: one flow forward on the sideband events while the gate is closed
(and a classifier pass on the SR and sideband events, "sidebands"),
one flow training pass on the sideband events, k autoregressive flow samples per
SR event (d passes of each MADE for d features) and a classifier pass on (1 + k)
rows per SR event; the calibration re-scores ``reference_events`` rows (a
classifier forward; a flow forward before the gate under "density").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from streamflow.errors import ConfigError
from streamflow.learners.bands import (
    Band,
    BandFlow,
    FlowShape,
    band_flow_config,
    check_band_options,
    check_slices,
    in_bands,
    part_options,
)
from streamflow.learners.base import LearnerConfigBase, TorchLearner
from streamflow.learners.composite import CompositeLearner
from streamflow.learners.cwola import CWoLAConfig, CWoLALearner
from streamflow.learners.flow import FlowConfig
from streamflow.learners.mass_slices import MassSliceCalibration


@dataclass(frozen=True, kw_only=True)
class CathodeConfig(LearnerConfigBase):
    """Online CATHODE (see the module docstring).

    oversample: k, flow samples per SR event in the classifier's class 0.
    hidden: the classifier's hidden widths; flow: the background flow's shape.
    gate_events, gate_block, gate_tolerance: the gate (sideband events learnt before it
    may open; events per held-out loss block; nats a block may differ from the last).
    mass_bins: bins of the SR mjj histogram the sample masses are drawn from.
    mass_slices, reference_events: the score's per-mass-slice calibration (see the module docstring).
    The optimiser, warm-up, EMA, features and coordinates apply to both the flow and the classifier; by
    default log-mass coordinates, batches of 256 and two passes per frame at lr 3e-3 (the sideband flow
    sees ~15% of the stream: at the template's 1024 and 1e-3 it took ~70 steps in 300k events and its
    gate never opened; in identity coordinates the closure AUC was 0.53-0.54, in log m 0.515-0.53).
    """

    kind: Literal["cathode"] = "cathode"
    coordinates: str = "log_mass"
    warmup_events: int = 2000
    """Sideband events whose moments standardise the flow (and SR events the classifier's inputs): to ~2%."""
    lr: float = 3e-3
    batch_size: int = 256
    steps_per_frame: int = 2
    region_feature: str = "mjj"
    signal_region: Band = (3300.0, 3700.0)
    sidebands: tuple[Band, Band] = ((3100.0, 3300.0), (3700.0, 3900.0))
    oversample: int = 4
    hidden: tuple[int, ...] = (64, 64, 64)
    flow: FlowShape = field(default_factory=FlowShape)
    before_gate: Literal["sidebands", "density"] = "sidebands"
    """What the line scores by until the gate opens: "sidebands" -- the classifier, learning SR data against
    sideband events (CWoLA's background); "density" -- the flow's -log p_bkg(x | m), the classifier idle."""
    gate_events: int = 30_000
    gate_block: int = 5_000
    gate_tolerance: float = 0.05
    mass_bins: int = 100
    mass_slices: int = 8
    reference_events: int = 4_000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_band_options(self)
        check_slices(self)
        if self.oversample < 1:
            raise ConfigError(f"{self.kind}: oversample (k flow samples per SR event) must be >= 1, "
                              f"got {self.oversample!r}")
        for key in ("gate_events", "gate_block", "mass_bins"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{self.kind}: {key} must be >= 1, got {getattr(self, key)!r}")
        if not self.gate_tolerance > 0:
            raise ConfigError(f"{self.kind}: gate_tolerance must be > 0 nats, got {self.gate_tolerance!r}")
        self.background_config()  # the parts' own checks, at config time
        self.classifier_config()

    def background_config(self) -> FlowConfig:
        return band_flow_config(self, "background", self.flow, self.region_feature)

    def classifier_config(self) -> CWoLAConfig:
        return CWoLAConfig(name=f"{self.name}.classifier", region_feature=self.region_feature,
                           signal_region=self.signal_region, sideband=(self.sidebands[0][0], self.sidebands[1][1]),
                           hidden=self.hidden, **{**part_options(self), "seed": self.seed + 1})


class MassHistogram:
    """The distribution of the band feature over the SR events seen so far: ``bins`` equal bins on [low, high).

    Sampling draws a bin by its count, then a value uniformly inside it: exact up to
    the bin width (4 GeV for the default 400 GeV SR and 100 bins)."""

    def __init__(self, band: Band, bins: int, device: torch.device) -> None:
        self.low, self.high = band
        self.counts = torch.zeros(bins, dtype=torch.float64, device=device)

    def add(self, values: Tensor) -> Tensor:
        """Per-bin counts of ``values`` inside the band (the caller sums them across ranks, then ``merge``s)."""
        values = values[(values >= self.low) & (values < self.high)].double()
        bins = len(self.counts)
        index = ((values - self.low) / (self.high - self.low) * bins).long().clamp_(0, bins - 1)
        return torch.bincount(index, minlength=bins).double()

    def merge(self, counts: Tensor) -> None:
        self.counts += counts

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """float32[n] values drawn from the histogram (its total must be > 0)."""
        index = torch.multinomial(self.counts.float(), n, replacement=True, generator=generator)
        u = torch.rand(n, generator=generator, device=self.counts.device)
        width = (self.high - self.low) / len(self.counts)
        return (self.low + (index.float() + u) * width).float()


class CathodeClassifier(CWoLALearner):
    """The CWoLA MLP learning SR data (class 1) against k background-flow samples per SR event (class 0).

    The training tensors are per SR event: its own standardised features and its k
    samples' ([n, 1 + k, F]), so a minibatch of events carries their samples with
    them and CWoLA's weighted loss applies unchanged (samples weigh 1/k; a sample the
    flow could not put inside a bounded frame weighs 0)."""

    def __init__(self, config: CWoLAConfig, background: BandFlow, masses: MassHistogram, oversample: int,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(config, device)
        self.background = background
        self.masses = masses
        self.oversample = oversample
        self.against_sidebands = False
        """Class 0 is k sideband events per SR event, drawn from the frame's (CATHODE's gate still closed)."""

    def _learnable(self, x: Tensor) -> Tensor:
        return self._in_sideband(x) if self.against_sidebands else self._in_signal_region(x)

    def _against_sidebands(self, x: Tensor) -> tuple[Tensor, ...]:
        """CWoLA's tensors, one row an event: SR events (class 1) against sideband events (class 0), the
        sideband events weighted so that both classes weigh the same in the frame."""
        label = self._in_signal_region(x).float()
        n1 = int(label.sum())
        counts = [int(c) for c in self.collective.totals([len(label) - n1, n1])]
        self.class_counts[0] += counts[0]
        self.class_counts[1] += counts[1]
        self.inputs.fit(x[label > 0])  # the standardisation is the SR data's, as after the gate
        w0 = counts[1] / counts[0] if counts[0] else 0.0
        weight = torch.where(label > 0, 1.0, w0)
        return self.inputs(x).unsqueeze(1), label.unsqueeze(1), weight.unsqueeze(1)

    def _training_tensors(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.against_sidebands:
            return self._against_sidebands(x)
        n, k = x.shape[0], self.oversample
        data = self.inputs.fit(x)
        counts = [n * k, n]
        counts = [int(c) for c in self.collective.totals(counts)]
        self.class_counts[0] += counts[0]
        self.class_counts[1] += counts[1]
        if n == 0:
            empty = torch.empty(0, 1 + k, device=self.device)
            return torch.empty(0, 1 + k, data.shape[1], device=self.device), empty, empty
        masses = self.masses.sample(n * k, self._generator)
        samples = self.inputs.encode(self.background.sample_tensor(n * k, masses))
        samples = samples.reshape(n, k, -1)
        usable = torch.isfinite(samples).all(dim=2)
        samples = torch.where(usable.unsqueeze(2), samples, torch.zeros_like(samples))
        z = torch.cat([data.unsqueeze(1), samples], dim=1)
        label = torch.cat([torch.ones(n, 1, device=self.device), torch.zeros(n, k, device=self.device)], dim=1)
        weight = torch.cat([torch.ones(n, 1, device=self.device), usable.float() / k], dim=1)
        return z, label, weight


@dataclass
class Gate:
    """When CATHODE's classifier may start: the background flow's held-out sideband loss has settled."""

    open: bool = False
    block: list[Tensor] = field(default_factory=list)
    """This rank's held-out losses of the block so far."""
    block_events: int = 0
    """Events of the block so far, all ranks'."""
    last_block: float = math.nan
    opened_at: int = -1
    """Sideband events the flow had learnt when the gate opened (-1: still closed)."""

    def observe(self, losses: Tensor, totals: Callable[[list[float]], list[float]], block: int, tolerance: float,
                learnt: int, needed: int) -> None:
        """Add this rank's held-out ``losses`` (``totals`` sums over ranks); open once a block's median settles."""
        self.block.append(losses.detach().double().cpu())
        self.block_events += int(totals([float(len(losses))])[0])
        if self.block_events < block:
            return
        values = torch.cat(self.block)
        median = float(values.median()) if len(values) else 0.0
        weighted, events = totals([median * len(values), float(len(values))])
        mean = weighted / events
        settled = math.isfinite(self.last_block) and abs(mean - self.last_block) < tolerance
        self.last_block, self.block, self.block_events = mean, [], 0
        if settled and learnt >= needed:
            self.open, self.opened_at = True, learnt

    def state_dict(self) -> dict[str, Any]:
        block = torch.cat(self.block) if self.block else torch.zeros(0, dtype=torch.float64)
        return {"open": self.open, "block": block, "block_events": self.block_events,
                "last_block": self.last_block, "opened_at": self.opened_at}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Gate:
        """The gate of a checkpoint; one written before the median (a "block_sum") restarts its current block."""
        if "block" not in state:
            state = {**state, "block": torch.zeros(0, dtype=torch.float64), "block_events": 0}
        block = state["block"]
        return cls(open=bool(state["open"]), block=[block] if len(block) else [],
                   block_events=int(state["block_events"]), last_block=float(state["last_block"]),
                   opened_at=int(state["opened_at"]))


class CathodeLearner(CompositeLearner):
    """Online CATHODE: parts ``background`` (sideband flow) and ``classifier`` (see the module docstring)."""

    kind = "cathode"
    config: CathodeConfig

    def __init__(self, config: CathodeConfig, device: str | torch.device = "cpu") -> None:
        self.gate = Gate()
        super().__init__(config, device)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(config.seed + 2)

    @property
    def region_feature(self) -> str:
        return self.config.region_feature

    def _build_parts(self) -> dict[str, TorchLearner]:
        config = self.config
        background = BandFlow(config.background_config(), config.sidebands, (config.signal_region,), self.device)
        self.masses = MassHistogram(config.signal_region, config.mass_bins, self.device)
        self.calibration = MassSliceCalibration(config.signal_region, config.mass_slices, config.reference_events,
                                                self.device)
        classifier = CathodeClassifier(config.classifier_config(), background, self.masses, config.oversample,
                                       self.device)
        return {"background": background, "classifier": classifier}

    @property
    def background(self) -> BandFlow:
        return self.parts["background"]  # type: ignore[return-value]

    @property
    def classifier(self) -> CathodeClassifier:
        return self.parts["classifier"]  # type: ignore[return-value]

    def _in_signal_region(self, x: Tensor) -> Tensor:
        return in_bands(self.region(x), (self.config.signal_region,))

    @property
    def _classifier_scores(self) -> bool:
        """The line scores by the classifier: once the gate is open, and before it once the classifier learnt
        SR data against the sidebands (``before_gate = "sidebands"``)."""
        return self.gate.open or (self.config.before_gate == "sidebands" and self.classifier.class_counts[1] > 0)

    def _raw_score(self, x: Tensor) -> Tensor:
        """The classifier's logit (see ``_classifier_scores``), else the fallback -log p_bkg(x | m)."""
        return self.classifier.score(x) if self._classifier_scores else self.background.score(x)

    def _score(self, x: Tensor) -> Tensor:
        return self.calibration.score(x, self._in_signal_region(x), self._raw_score, self.region)

    def _learn(self, x: Tensor) -> dict[str, float]:
        config = self.config
        inside = self._in_signal_region(x)
        if not self.gate.open:
            nll = self.background.score(x[in_bands(self.region(x), config.sidebands)])
            self.gate.observe(nll[torch.isfinite(nll)], self._sum, config.gate_block, config.gate_tolerance,
                              self.background.totals.events, config.gate_events)
        leaked_before = self.background.forbidden_events
        background = self.background.learn(x)
        counts = self.masses.add(self.region(x))
        counts = self.collective.sum_(counts)
        self.masses.merge(counts)
        self.classifier.against_sidebands = not self.gate.open
        learns = self.gate.open or config.before_gate == "sidebands"
        classifier = self.classifier.learn(x) if learns else {}
        self.calibration.add(x[inside])
        self.calibration.recalibrate(self._raw_score, self.region, self.collective.sum_)
        stats = self.combine(classifier, background)
        stats.update(background_loss=background["loss"], gate_open=float(self.gate.open),
                     gate_loss=self.gate.last_block, classifier_events=float(classifier.get("events", 0)),
                     background_sr_events=float(self.background.forbidden_events - leaked_before))
        return stats

    def closure_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The classifier's logits (EMA weights) on the SR events of x, and on as many fresh background
        samples at masses from the SR model: the closure test. Without signal the two agree (AUC 0.5)
        when the flow interpolates the background into the SR and the classifier has not learnt artefacts."""
        x = x.to(self.device, torch.float32)
        classifier = self.classifier
        with torch.no_grad():
            data = classifier.score(x[self._in_signal_region(x)])
            data = data[torch.isfinite(data)]
            samples = self.background.sample_tensor(len(data), self.masses.sample(len(data), self._generator))
            samples = samples[torch.isfinite(samples).all(dim=1)]
            model = classifier.scoring_model
            return data, model(classifier.inputs.encode(samples)).squeeze(-1)

    def _extra_state(self) -> dict[str, Any]:
        return {"gate": self.gate.state_dict(),
                "mass_counts": self.masses.counts.clone(), "calibration": self.calibration.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.gate = Gate.from_state(state["gate"])
        self.masses.counts = state["mass_counts"].to(self.device, torch.float64)
        self.calibration.load_state_dict(state["calibration"])
