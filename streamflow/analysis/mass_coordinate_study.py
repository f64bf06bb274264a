"""The source paper's coordinate study on LHCO: jet masses in m and in log m, with controls.

"Anomaly detection under coordinate transformations" trains an *unconditional*
density on two features, the jet masses (m_j1, m_j2), on background only, and
compares the events it finds least likely with those of the same density
estimator trained on (log m_j1, log m_j2): the top-1% selections share about 20%.
A density is not invariant under a change of coordinates, p_Y(y) = p_X(x) |dx/dy|,
so a density score's "most anomalous" events depend on the frame.

Setup here (:func:`run_study`):

- the background events of the source are selected **by truth label, for this
  study only** (the paper's background-only training; no trigger ever does this),
  split in half by a seeded permutation: one half trains, the other half is held
  out; every signal event is held out too (never trained on);
- each model is trained offline for ``epochs`` passes over its half (the online
  learners' code, many passes), then scores the held-out events;
- the overlap of a pair is the fraction of model a's top-q held-out *background*
  events that model b also puts in its top q (both select ceil(q n) of the same
  events, so it is symmetric), with the binomial error sqrt(f (1 - f) / k) of k
  selected events; two unrelated scores share q on average.

Controls, per learner kind and table:

- training noise: the same learner, same frame, two seeds -> the overlap that
  training alone gives; an m vs log m overlap is a coordinate effect only as far
  as it is below this;
- the pure coordinate effect (flows): the seed-0 model trained in m, evaluated in
  log m through the exact Jacobian, -log p_Y(y) = -log p_X(x) + log|dy/dx| with
  log|dy/dx| = -sum_j log m_j -- one model, two frames, no training noise.

Table 1 is the paper's: (m_j1, m_j2) vs (log m_j1, log m_j2), an unconditional MAF
and the paper's autoencoder (50-20-10-1). Table 2 keeps the earlier variant: the
CATHODE features (mjmin, delta_m, tau21 of both jets), the flow conditional on mjj,
m vs log m (log of mjmin only: delta_m stays linear, see events/coordinates.py),
with the same controls. AUCs (held-out background vs all signal, DeLong error) and
max SIC are given for orientation; the selections are what the paper compares.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamflow import metrics
from streamflow.analysis.coordinate_study import auc_standard_error, score_events
from streamflow.errors import ConfigError
from streamflow.events import EventBatch
from streamflow.learners import CATHODE_FEATURES, AutoencoderConfig, FlowConfig, LearnerConfig, TorchLearner
from streamflow.learners.registry import build_learner

PAPER_OVERLAP = 0.20
"""The source paper's top-1% overlap of a flow in (m_j1, m_j2) and in (log m_j1, log m_j2) on LHCO (about 20%)."""
JET_MASSES: tuple[str, ...] = ("mj1", "mj2")
TRAIN_CHUNK = 4096


@dataclass(frozen=True)
class StudyConfig:
    """How the models are trained and compared."""

    epochs: int = 20
    batch_size: int = 256
    seeds: tuple[int, int] = (0, 1)
    q: float = 0.01
    train_fraction: float = 0.5
    split_seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not 0 < self.q < 1:
            raise ConfigError(f"q must be in (0, 1), got {self.q!r}")
        if not 0 < self.train_fraction < 1:
            raise ConfigError(f"train fraction must be in (0, 1), got {self.train_fraction!r}")
        if len(set(self.seeds)) != 2:
            raise ConfigError(f"the training-noise control needs two different seeds, got {list(self.seeds)}")


@dataclass(frozen=True)
class ModelFigures:
    name: str
    kind: str
    coordinates: str
    seed: int
    auc: float
    auc_error: float
    max_sic: float


@dataclass(frozen=True)
class PairOverlap:
    """Fraction of a's top-q held-out background also in b's, with its binomial error."""

    kind: str
    control: str
    a: str
    b: str
    fraction: float
    error: float
    selected: int


@dataclass
class Table:
    title: str
    features: tuple[str, ...]
    context: str | None
    models: list[ModelFigures] = field(default_factory=list)
    overlaps: list[PairOverlap] = field(default_factory=list)


@dataclass
class MassCoordinateStudy:
    source: str
    train_events: int
    test_background: int
    test_signal: int
    config: StudyConfig
    tables: list[Table]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "train_background_events": self.train_events,
            "test_background_events": self.test_background, "test_signal_events": self.test_signal,
            "config": dataclasses.asdict(self.config), "paper_overlap": PAPER_OVERLAP,
            "tables": [dataclasses.asdict(t) for t in self.tables],
        }


def split(events: EventBatch, train_fraction: float, seed: int) -> tuple[EventBatch, EventBatch]:
    """(training background, held-out events): background chosen by truth label (this study only),
    a seeded ``train_fraction`` of it to train on; the rest and every signal event held out."""
    if events.labels is None:
        raise ConfigError("the coordinate study needs truth labels (it trains on background only)")
    background = np.flatnonzero(events.labels == 0)
    signal = np.flatnonzero(events.labels == 1)
    if len(background) < 1000 or len(signal) < 10:
        raise ConfigError(f"the coordinate study needs >= 1000 background and >= 10 signal events, "
                          f"got {len(background)} and {len(signal)}")
    order = np.random.default_rng(seed).permutation(background)
    n_train = int(round(train_fraction * len(order)))
    held_out = np.sort(np.r_[order[n_train:], signal])
    return events.take(np.sort(order[:n_train])), events.take(held_out)


def train(config: LearnerConfig, events: EventBatch, study: StudyConfig) -> TorchLearner:
    """A learner trained offline on ``events``: ``epochs`` seeded passes in chunks of TRAIN_CHUNK.

    Its standardisation is frozen on the whole first pass (warm-up = the training set)."""
    config = dataclasses.replace(config, warmup_events=len(events), batch_size=study.batch_size,
                                 steps_per_frame=1)
    learner = build_learner(config, study.device)
    assert isinstance(learner, TorchLearner)  # a flow or an autoencoder
    learner.bind(events.names)
    x = torch.from_numpy(np.ascontiguousarray(events.features)).to(learner.device)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(study.epochs):
        order = torch.randperm(len(events), generator=generator)
        for chunk in order.split(TRAIN_CHUNK):
            learner.learn(x[chunk.to(learner.device)])
    return learner


def evaluated_in(flow: TorchLearner, coordinates: str) -> TorchLearner:
    """The trained flow ``flow`` reporting -log p in ``coordinates`` through the exact Jacobian (same weights)."""
    config = flow.config
    assert isinstance(config, FlowConfig)
    twin_config = dataclasses.replace(config, name=f"{config.name}_as_{coordinates}", coordinates=coordinates,
                                      model_coordinates=config.coordinates)
    twin = build_learner(twin_config, flow.device)
    assert isinstance(twin, TorchLearner)
    state = flow.state_dict()
    twin.model.load_state_dict(state["model"])
    if twin.ema_model is not None and state["average"] is not None:
        twin.ema_model.load_state_dict(state["average"])
    for pre, pre_state in zip(twin.preprocessors, state["preprocessing"], strict=True):
        pre.load_state_dict(pre_state)
    return twin


def overlap(scores_a: np.ndarray, scores_b: np.ndarray, q: float) -> tuple[float, float, int]:
    """(shared fraction, binomial error, events selected) of two scores' top-q selections."""
    k = len(metrics.top_fraction(scores_a, q))
    f = metrics.selection_overlap(scores_a, scores_b, q)
    return f, math.sqrt(f * (1.0 - f) / k) if k else math.nan, k


def _table(title: str, features: tuple[str, ...], context: str | None, train_events: EventBatch,
           test: EventBatch, study: StudyConfig) -> Table:
    table = Table(title, features, context)
    configs: dict[str, LearnerConfig] = {}
    for seed in study.seeds:
        for frame, short in (("identity", "m"), ("log_mass", "logm")):
            configs[f"flow_{short}_s{seed}"] = FlowConfig(name=f"flow_{short}_s{seed}", features=features,
                                                          context=context, coordinates=frame, seed=seed)
            configs[f"ae_{short}_s{seed}"] = AutoencoderConfig(name=f"ae_{short}_s{seed}", features=features,
                                                               coordinates=frame, seed=seed)
    learners = {name: train(config, train_events, study) for name, config in configs.items()}
    s0, s1 = study.seeds
    jacobian = f"flow_m_s{s0}_as_log_mass"
    learners[jacobian] = evaluated_in(learners[f"flow_m_s{s0}"], "log_mass")
    scores = score_events(learners, test)
    assert test.labels is not None
    labels = test.labels
    background = labels == 0
    for name, learner in learners.items():
        table.models.append(ModelFigures(
            name, learner.config.kind, learner.coordinates, learner.config.seed, metrics.auc(labels, scores[name]),
            auc_standard_error(labels, scores[name]), metrics.max_sic(labels, scores[name])))
    pairs = []
    for kind in ("flow", "ae"):
        pairs += [(kind, "m vs log m", f"{kind}_m_s{s0}", f"{kind}_logm_s{s0}"),
                  (kind, "m vs log m", f"{kind}_m_s{s1}", f"{kind}_logm_s{s1}"),
                  (kind, "training noise (two seeds)", f"{kind}_m_s{s0}", f"{kind}_m_s{s1}"),
                  (kind, "training noise (two seeds)", f"{kind}_logm_s{s0}", f"{kind}_logm_s{s1}")]
        if kind == "flow":
            pairs.append((kind, "coordinates alone (one model, exact Jacobian)", f"flow_m_s{s0}", jacobian))
    for kind, control, a, b in pairs:
        f, error, k = overlap(scores[a][background], scores[b][background], study.q)
        table.overlaps.append(PairOverlap(kind, control, a, b, f, error, k))
    return table


def run_study(events: EventBatch, *, source: str, study: StudyConfig) -> MassCoordinateStudy:
    """Both tables (module docstring) on ``events`` (an LHCO-schema batch with truth labels)."""
    train_events, test = split(events, study.train_fraction, study.split_seed)
    assert test.labels is not None
    tables = [
        _table("Jet masses, unconditional (the paper's setup)", JET_MASSES, None, train_events, test, study),
        _table("CATHODE features given mjj (conditional flow)", CATHODE_FEATURES, "mjj", train_events, test, study),
    ]
    return MassCoordinateStudy(source, len(train_events), int((test.labels == 0).sum()),
                               int((test.labels == 1).sum()), study, tables)


def markdown(result: MassCoordinateStudy) -> str:
    """Both tables as markdown, overlaps with their errors beside the paper's figure."""
    c = result.config
    lines = [
        f"# Coordinate study (m vs log m): {result.source}", "",
        f"Trained offline ({c.epochs} epochs) on {result.train_events:,} background events chosen by truth label "
        f"(this study only: the paper's background-only training); scored on {result.test_background:,} held-out "
        f"background and {result.test_signal:,} signal events. Overlap: the fraction of model a's top "
        f"{c.q:.0%} held-out background events that model b selects too (binomial error); the source paper "
        f"finds about {PAPER_OVERLAP:.0%} for a flow in m vs log m; two unrelated scores share {c.q:.0%}.", "",
    ]
    for table in result.tables:
        context = f" given {table.context}" if table.context else ""
        lines += [f"## {table.title}: ({', '.join(table.features)}){context}", "",
                  "| kind | comparison | a | b | selected | shared | error |", "|---|---|---|---|---:|---:|---:|"]
        lines += [f"| {o.kind} | {o.control} | {o.a} | {o.b} | {o.selected:,} | {o.fraction:.1%} | {o.error:.1%} |"
                  for o in table.overlaps]
        lines += ["", "| model | frame | seed | AUC | AUC error | max SIC |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {m.name} | {m.coordinates} | {m.seed} | {m.auc:.3f} | {m.auc_error:.3f} | {m.max_sic:.2f} |"
                  for m in table.models]
        lines.append("")
    return "\n".join(lines)
