"""Ready-made scorer menus: which learners run, in which frames, behind which trigger lines.

``lhco``: the default of ``streamflow run`` on LHCO-like streams, the lines that
find a resonance first -- online CATHODE and online ANODE (learners/cathode.py,
anode.py; SR 3.3-3.7 TeV, sidebands 3.1-3.3 and 3.7-3.9 TeV), a CWoLA classifier
(same SR vs sidebands 3.1-3.9 TeV) -- then the paper's autoencoder; one trigger
line each, in that order (the run report and summary.json list lines in menu order).

``lhco-density``: the same, then the density-score lines: the conditional flow
(CATHODE features given mjj) in the identity and the log-mass frame, by name
(``--preset lhco-density --learners flow_m,cwola``), for the coordinate study
and the flow's own tools. They left the default menu because a density score
selects below a random selection at q = 1% (SIC 0.03-0.06 in the default run)
and because ANODE's cost had to be paid for: the two flows learn every event,
about a third of the old menu's time (README, "CATHODE and ANODE online").

``gaussian``: the source paper's toy -- flow, autoencoder and CWoLA (data vs
reference sample) in the identity, normal-CDF and tanh(x + 2) frames; the
density learners learn the reference (background-only) sample. Tuned so that a
300k-event stream reaches the paper's analytic AUCs (tests/test_toy_pipeline.py):

- each flow learns in x (``model_coordinates`` identity, where the background is a
  Gaussian an affine MAF fits exactly) and reports -log p in its own frame through
  the exact Jacobian, so the three flows differ only by the coordinate effect the
  study is about, not by how hard a frame is to learn in; batches of 256 give
  ~600 Adam steps on the ~150k reference events (batches of 1024 left the flow's
  variance visibly unconverged);
- CWoLA: lr 1e-3, batches of 256 (~1200 steps on 300k events);
- the autoencoder is the paper's, learning in its frame (its AUCs have no
  analytic value).
"""

from __future__ import annotations

from streamflow.errors import ConfigError
from streamflow.learners import (
    CATHODE_FEATURES,
    AnodeConfig,
    AutoencoderConfig,
    CathodeConfig,
    CWoLAConfig,
    FlowConfig,
    LearnerConfig,
    Window,
)
from streamflow.scoring.frame_scorer import ScorerConfig, Thresholds
from streamflow.trigger import LineConfig

PRESETS = ("lhco", "lhco-density", "gaussian")
TOY_COORDINATES = {"identity": "identity", "cdf": "normal_cdf", "tanh": "tanh_shift"}


def _density_learners() -> list[LearnerConfig]:
    return [
        FlowConfig(name="flow_m", features=CATHODE_FEATURES, context="mjj", coordinates="identity"),
        FlowConfig(name="flow_logm", features=CATHODE_FEATURES, context="mjj", coordinates="log_mass"),
    ]


def _lhco_learners() -> list[LearnerConfig]:
    return [
        CathodeConfig(name="cathode", features=CATHODE_FEATURES),
        AnodeConfig(name="anode", features=CATHODE_FEATURES),
        CWoLAConfig(name="cwola", features=CATHODE_FEATURES),
        AutoencoderConfig(name="ae", features=CATHODE_FEATURES),
    ]


def _gaussian_learners(dim: int) -> list[LearnerConfig]:
    features = tuple(f"x{i}" for i in range(dim))
    reference = Window("sample", -0.5, 0.5)
    learners: list[LearnerConfig] = []
    for short, frame in TOY_COORDINATES.items():
        learners += [
            FlowConfig(name=f"flow_{short}", features=features, coordinates=frame, train_where=reference,
                       model_coordinates="identity", batch_size=256),
            AutoencoderConfig(name=f"ae_{short}", features=features, coordinates=frame, train_where=reference),
            CWoLAConfig(name=f"cwola_{short}", features=features, coordinates=frame, region_feature="sample",
                        signal_region=(0.5, 1.5), sideband=(-0.5, 1.5), lr=1e-3, batch_size=256),
        ]
    return learners


def preset(name: str, q: float = 0.01, window: int = 20_000, warmup: int | None = None,
           device: str = "auto", learn_events: int = 0, dim: int = 2, thresholds: Thresholds = "rank") -> ScorerConfig:
    """The scorer config of preset ``name``: one trigger line at accept fraction ``q`` per learner.

    A line judges once its window holds ``warmup`` scores (None: ceil(5 / q), see
    :mod:`streamflow.trigger.lines`), its window then grows to ``window`` scores and
    its rate control holds q while its learner's scores drift. With ``thresholds`` "global"
    (data-parallel ranks agreeing on thresholds) the lines use the mergeable
    histogram estimator, else the exact rolling quantile.
    """
    if name == "lhco":
        learners = _lhco_learners()
    elif name == "lhco-density":
        learners = _lhco_learners() + _density_learners()
    elif name == "gaussian":
        learners = _gaussian_learners(dim)
    else:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    lines = tuple(
        LineConfig(name=learner.name, learner=learner.name, accept=q, window=window, warmup=warmup,
                   estimator="histogram" if thresholds == "global" else "exact")
        for learner in learners
    )
    return ScorerConfig(learners=tuple(learners), lines=lines, device=device, learn_events=learn_events,
                        thresholds=thresholds)


def preset_for_source(source: str) -> str:
    """The preset that fits a source spec: the toy's for "gaussian", else the LHCO menu."""
    return "gaussian" if source == "gaussian" else "lhco"
