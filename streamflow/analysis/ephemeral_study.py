"""Ephemeral learning: bump-hunt a stream after it is gone, from the flow that learnt it.

The study (DESIGN.md, "Science in one page"):

1. stream events through a :class:`~streamflow.scoring.frame_scorer.FrameScorer` (test-then-train,
   each event seen once) whose conditional flow learns p(x | mjj); keep a histogram
   of mjj beside it; the checkpoint (flow + histogram) is all that survives;
2. sample the checkpoint in the signal region and the sidebands (streamflow.analysis.sampling);
3. run the same offline CWoLA bump hunt twice -- on the real stream events in those
   ranges and on the samples -- and score held-out *real* events with truth labels.

The CWoLA hunt (Metodiev, Nachman, Thaler 2017) trains an MLP h(x) on the CATHODE
features to tell SR events (3.3 <= mjj < 3.7 TeV) from sideband events (3.1-3.9 TeV
outside the SR), labels from mjj only, classes weighed equally; h approximates
p_SR / (p_SR + p_SB), monotone in the signal-to-background likelihood ratio when the
background varies slowly with mjj. It reuses the online
:class:`~streamflow.learners.CWoLALearner` offline: one ``learn`` call over all
training events with ``steps_per_frame`` = epochs (the standardisation is fitted on
the whole training set first). Its figure of merit is SIC(eff_S) = eff_S / sqrt(eff_B)
over held-out real SR events; max SIC counts thresholds keeping >= 10 background events
(and is noisy with a few thousand test events: the AUC, over all thresholds, is steadier).

If the flow is a faithful copy, both hunts find the same signal (similar max SIC);
the checkpoint is typically far smaller than the stream it replaces. A control hunt
on the stream's background alone (truth removes its signal: a control, not a hunt)
shows what the classifier finds without any signal -- the background's own mjj
correlations (heavier jets at higher mjj) already separate signal from background a
little -- so that a hunt beats it only by finding the signal.

The held-out test events never reach the stream: for a file, a seeded fraction of
its rows (signal and background) is set aside *before* the signal injection; for
the synthetic generator, they come from an independent seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from streamflow import metrics
from streamflow.analysis.sampling import (
    HISTOGRAM_KEY,
    ContextHistogram,
    MassRange,
    Samples,
    sample_checkpoint,
    write_samples,
)
from streamflow.config import to_dict
from streamflow.errors import ConfigError
from streamflow.events import EventBatch, InjectedSource, open_source
from streamflow.events.chunking import check_chunk_size, rebatch
from streamflow.learners import CATHODE_FEATURES, CWoLAConfig, CWoLALearner, FlowLearner
from streamflow.scoring.checkpoint import load_checkpoint, save_checkpoint
from streamflow.scoring.frame_scorer import FrameScorer, ScorerConfig

CONTROL = "real background only (control)"
ID_BYTES = 8  # a uint64 event id on the wire, beside 4 bytes per float32 feature
READ_EVENTS = 1 << 16


MAX_STUDY_EVENTS = 10_000_000
"""The most stream or test events of a study: the hunt holds the signal-region and sideband events, and
the test events, in memory (about 60 bytes an event)."""

@dataclass(frozen=True)
class HuntConfig:
    """The offline CWoLA classifier (see the module docstring)."""

    signal_region: tuple[float, float] = (3300.0, 3700.0)
    sideband: tuple[float, float] = (3100.0, 3900.0)
    features: tuple[str, ...] = CATHODE_FEATURES
    hidden: tuple[int, ...] = (64, 64, 64)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"bump hunt: epochs must be >= 1, got {self.epochs}")

    def learner_config(self, n_train: int) -> CWoLAConfig:
        return CWoLAConfig(
            name="cwola_offline", features=self.features, region_feature="mjj",
            signal_region=self.signal_region, sideband=self.sideband, hidden=self.hidden,
            steps_per_frame=self.epochs, batch_size=self.batch_size, lr=self.lr,
            warmup_events=n_train, seed=self.seed,
        )

    @property
    def ranges(self) -> tuple[MassRange, ...]:
        """The signal region and the two sidebands around it, as sampling ranges."""
        (s_lo, s_hi), (b_lo, b_hi) = self.signal_region, self.sideband
        return tuple(MassRange(lo, hi) for lo, hi in ((s_lo, s_hi), (b_lo, s_lo), (s_hi, b_hi)) if lo < hi)


@dataclass(frozen=True)
class HuntResult:
    """One bump hunt: training events per class, and SIC on the held-out real SR events."""

    name: str
    n_signal_region: int
    n_sideband: int
    max_sic: float
    auc: float
    eff_s: np.ndarray
    sic: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n_signal_region": self.n_signal_region, "n_sideband": self.n_sideband,
                "max_sic": self.max_sic, "auc": self.auc}


def bump_hunt(name: str, train: EventBatch, test: EventBatch, config: HuntConfig) -> HuntResult:
    """Train CWoLA on ``train`` (labels from mjj only) and evaluate SIC on ``test``'s SR events (truth)."""
    if test.labels is None:
        raise ConfigError("the held-out test events need truth labels")
    learner = CWoLALearner(config.learner_config(len(train)))
    learner.bind(train.names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        learner.learn(torch.from_numpy(train.features))
    n_sb, n_sr = learner.class_counts
    if not (n_sr and n_sb):
        raise ConfigError(f"bump hunt on {name}: needs events in both the signal region and the sidebands "
                          f"(got {n_sr} and {n_sb})")
    sr = test.take(_in_range(test.column("mjj"), config.signal_region))
    learner.bind(sr.names)
    scores = learner.score(torch.from_numpy(sr.features)).numpy()
    labels = sr.labels
    assert labels is not None  # taken from the labelled test events
    eff_s, sic = metrics.sic_curve(labels, scores, min_background=10)
    return HuntResult(name, n_sr, n_sb, metrics.max_sic(labels, scores), metrics.auc(labels, scores),
                      eff_s, sic)


def _in_range(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return (values >= bounds[0]) & (values < bounds[1])


class MemoryFile:
    """Labelled events held in memory, as the file a :class:`InjectedSource` thins."""

    n_nonfinite_dropped = 0
    has_labels = True

    def __init__(self, batch: EventBatch) -> None:
        self.batch = batch
        self.names = batch.names
        self.n_rows = len(batch)

    def label_counts(self) -> tuple[int, int]:
        assert self.batch.labels is not None  # built from labelled events only
        n_signal = int(np.count_nonzero(self.batch.labels == 1))
        return self.n_rows - n_signal, n_signal

    def chunks(self, chunk_size: int) -> Iterator[EventBatch]:
        check_chunk_size(chunk_size)
        return rebatch(iter([self.batch]), chunk_size)


def read_all(source: Any) -> EventBatch:
    """Every event of a finite source, in one batch."""
    return EventBatch.concatenate(list(source.chunks(READ_EVENTS)))


@dataclass(frozen=True)
class StreamSpec:
    """Where the stream and the held-out test events come from.

    source: a features file path (test events: ``test_fraction`` of its rows, set aside
    before injecting signal at ``signal_fraction``; ``events`` caps the stream) or
    "synthetic" (``events`` streamed at ``signal_fraction``, default 1%; ``test_events``
    held out from seed + 1 at signal fraction ``test_signal_fraction``).
    """

    source: str
    signal_fraction: float | None = None
    events: int | None = None
    test_fraction: float = 0.3
    test_events: int = 200_000
    test_signal_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source == "gaussian":
            raise ConfigError("ephemeral needs an LHCO-like source (a features file or synthetic), not the toy")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test fraction must be in (0, 1), got {self.test_fraction}")
        for name, value in (("events", self.events), ("test events", self.test_events)):
            if value is not None and not 1 <= value <= MAX_STUDY_EVENTS:
                raise ConfigError(f"{name} must be 1 to {MAX_STUDY_EVENTS:,d}, got {value:,d}")

    def open(self) -> tuple[Any, EventBatch]:
        """(the stream source, the held-out test events)."""
        if self.source == "synthetic":
            stream = open_source("synthetic", signal_fraction=self.signal_fraction, seed=self.seed,
                                 n_events=self.events or 100_000)
            test = open_source("synthetic", signal_fraction=self.test_signal_fraction, seed=self.seed + 1,
                               n_events=self.test_events)
            return stream, read_all(test)
        events = read_all(open_source(self.source))
        if "mjj" not in events.names:
            raise ConfigError(f"{self.source}: no mjj column (ephemeral needs an LHCO features file)")
        if events.labels is None:
            raise ConfigError(f"{self.source}: the bump hunt is evaluated with truth labels, and this file has none")
        held_out = np.random.default_rng(self.seed).random(len(events)) < self.test_fraction
        pool: Any = MemoryFile(events.take(~held_out))
        if self.signal_fraction is not None:
            pool = InjectedSource(pool, self.signal_fraction, seed=self.seed)
        if self.events is not None:
            pool = MemoryFile(next(pool.chunks(self.events)))
        return pool, events.take(held_out)


@dataclass
class StreamRecord:
    """What streaming left behind besides the checkpoint: counts and the real events in the hunt's ranges."""

    events: int = 0
    signal: int = 0
    bytes: int = 0
    kept: list[EventBatch] = field(default_factory=list)

    def in_ranges(self) -> EventBatch:
        if not self.kept:
            raise ConfigError("the stream had no events")
        return EventBatch.concatenate(self.kept)


def stream(scorer: FrameScorer | None, source: Any, hunt: HuntConfig, frame_size: int = 1000,
           histogram: ContextHistogram | None = None) -> StreamRecord:
    """Run ``source`` through ``scorer`` frame by frame (score, then learn; None: only read it),
    filling ``histogram`` with mjj, and keep the real events inside the sidebands for the real hunt."""
    record = StreamRecord()
    for batch in source.chunks(frame_size):
        if scorer is not None:
            scorer.process(batch)
        mjj = batch.column("mjj")
        if histogram is not None:
            histogram.add(mjj)
        record.events += len(batch)
        record.signal += 0 if batch.labels is None else int((batch.labels == 1).sum())
        record.bytes += len(batch) * (ID_BYTES + 4 * len(batch.names))
        record.kept.append(batch.take(_in_range(mjj, hunt.sideband)))
    if scorer is not None:
        scorer.flush()
    return record


def train_checkpoint(config: ScorerConfig, source: Any, hunt: HuntConfig, path: Path,
                     frame_size: int = 1000) -> StreamRecord:
    """Stream ``source`` through a fresh scorer and save its checkpoint with the mjj histogram at ``path``."""
    scorer = FrameScorer(config)
    histogram = ContextHistogram("mjj")
    record = stream(scorer, source, hunt, frame_size, histogram)
    save_checkpoint(path, {"scorer": scorer.state_dict(), HISTOGRAM_KEY: histogram.state_dict()})
    return record


def flow_bytes(flow: FlowLearner) -> int:
    """Bytes of the weights that score and sample (the compressed copy itself, float32)."""
    return sum(p.numel() * p.element_size() for p in flow.scoring_model.parameters())


@dataclass
class EphemeralResult:
    """Everything the study measured (see :func:`markdown`)."""

    stream: StreamRecord
    stream_signal_region: tuple[int, int] | None
    test_events: int
    test_signal_region: tuple[int, int] | None
    checkpoint_bytes: int
    flow_bytes: int
    flow_name: str
    context: str
    samples: Samples
    hunts: list[HuntResult]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": {"events": self.stream.events, "signal": self.stream.signal, "bytes": self.stream.bytes,
                       "signal_region": _counts_dict(self.stream_signal_region)},
            "test_events": self.test_events,
            "test_signal_region": _counts_dict(self.test_signal_region),
            "checkpoint_bytes": self.checkpoint_bytes, "flow_bytes": self.flow_bytes, "flow": self.flow_name,
            "context_distribution": self.context, "samples": len(self.samples),
            "hunts": [h.to_dict() for h in self.hunts],
        }


def run_study(spec: StreamSpec, checkpoint: Path, out_dir: Path, *, scorer: ScorerConfig | None,
              hunt: HuntConfig = HuntConfig(), learner: str | None = None, n_samples: int | None = None,
              frame_size: int = 1000) -> EphemeralResult:
    """The whole study; with ``scorer`` the stream trains a new checkpoint at ``checkpoint``, else
    ``checkpoint`` is an existing one (then the same spec, seed included, keeps the test events out of it).
    Writes samples.h5, sic.png, results.md and results.json into ``out_dir``."""
    if scorer is None:
        load_checkpoint(checkpoint)  # a missing or corrupt checkpoint fails now, not after the stream
    out_dir.mkdir(parents=True, exist_ok=True)
    source, test = spec.open()
    if scorer is not None:
        record = train_checkpoint(scorer, source, hunt, checkpoint, frame_size)
    else:
        record = stream(None, source, hunt, frame_size)
    real = record.in_ranges()
    n = len(real) if n_samples is None else n_samples
    flow, samples = sample_checkpoint(checkpoint, n, hunt.ranges, learner=learner, seed=spec.seed)
    write_samples(out_dir / "samples.h5", samples)
    sampled = EventBatch(np.arange(len(samples), dtype=np.uint64), samples.features.astype(np.float32),
                         samples.names)
    hunts = [bump_hunt("real stream events", real, test, hunt), bump_hunt(f"{flow.name} samples", sampled, test, hunt)]
    if real.labels is not None:
        hunts.append(bump_hunt(CONTROL, real.take(real.labels == 0), test, hunt))
    result = EphemeralResult(
        stream=record, stream_signal_region=_signal_region_counts(real, hunt), test_events=len(test),
        test_signal_region=_signal_region_counts(test, hunt),
        checkpoint_bytes=checkpoint.stat().st_size, flow_bytes=flow_bytes(flow), flow_name=flow.name,
        context=samples.meta["context_distribution"], samples=samples, hunts=hunts,
    )
    plot_sic(hunts, out_dir / "sic.png")
    (out_dir / "results.md").write_text(markdown(result, spec, hunt))
    (out_dir / "results.json").write_text(json.dumps(
        {**result.to_dict(), "spec": to_dict(spec), "hunt": to_dict(hunt)}, indent=2))
    return result


def _signal_region_counts(events: EventBatch, hunt: HuntConfig) -> tuple[int, int] | None:
    """(background, signal) events in the signal region, by truth; None without labels."""
    if events.labels is None:
        return None
    labels = events.labels[_in_range(events.column("mjj"), hunt.signal_region)]
    return int((labels == 0).sum()), int((labels == 1).sum())


def _counts_dict(counts: tuple[int, int] | None) -> dict[str, int] | None:
    return None if counts is None else {"background": counts[0], "signal": counts[1]}


def plot_sic(hunts: list[HuntResult], path: Path) -> None:
    """SIC against signal efficiency for every hunt, with the random classifier's sqrt(eff_S)."""
    figure = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = figure.subplots()
    for h in hunts:
        ax.plot(h.eff_s, h.sic, label=f"CWoLA on {h.name} (max SIC {h.max_sic:.2f})")
    grid = np.linspace(0, 1, 201)
    ax.plot(grid, np.sqrt(grid), ls=":", color="grey", label="random")
    ax.set_xlabel("signal efficiency (held-out real SR events)")
    ax.set_ylabel("SIC = eff_S / sqrt(eff_B)")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    figure.savefig(path, dpi=110)


def markdown(result: EphemeralResult, spec: StreamSpec, hunt: HuntConfig) -> str:
    """The study's summary: sizes, and max SIC of both hunts, as markdown."""
    rec = result.stream
    sr = f"SR {hunt.signal_region[0]:g}-{hunt.signal_region[1]:g} GeV"
    stream_sr = ""
    if result.stream_signal_region is not None:
        sr_b, sr_s = result.stream_signal_region
        stream_sr = f"; in the {sr}: {sr_b} background, {sr_s} signal (S/B {sr_s / max(sr_b, 1):.3f})"
    b, s = result.test_signal_region or (0, 0)
    lines = [
        "# Ephemeral learning: CWoLA on the stream vs on its flow's samples", "",
        f"Stream: {spec.source}, {rec.events} events, {rec.signal} signal "
        f"(signal fraction {rec.signal / max(rec.events, 1):.4f}){stream_sr}.",
        f"Held-out real test events in the {sr}: {b} background, {s} signal.",
        f"Samples: {len(result.samples)} from {result.flow_name}, mjj from the {result.context}.", "",
        "| CWoLA trained on | SR events | SB events | max SIC | AUC |",
        "|---|---|---|---|---|",
        *(f"| {h.name} | {h.n_signal_region} | {h.n_sideband} | {h.max_sic:.2f} | {h.auc:.3f} |"
          for h in result.hunts), "",
        "| what | bytes |", "|---|---|",
        f"| stream on the wire (ids + float32 features) | {rec.bytes} |",
        f"| checkpoint file (all learners, optimizer state, histogram) | {result.checkpoint_bytes} |",
        f"| {result.flow_name} scoring weights (float32) | {result.flow_bytes} |",
        f"| stream / checkpoint | {rec.bytes / result.checkpoint_bytes:.1f}x |", "",
    ]
    return "\n".join(lines)
