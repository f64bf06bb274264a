"""The scorer's per-frame logic: test-then-train with every learner, then the trigger.

For each frame, :meth:`FrameScorer.process`

1. moves the features to the device once (pinned memory and a non-blocking copy on CUDA),
2. scores the frame with every learner (no learner has seen these events yet),
3. brings the scores to the host (the one synchronisation a frame needs) and asks
   the trigger menu which events each line accepts,
4. learns: from this frame, or -- with ``learn_events`` > 0 -- from frames
   accumulated until that many events have been scored, in one large step
   (small frames keep latency low, large steps keep a GPU busy; every event in a
   step was scored before the step, so test-then-train still holds).

That is ``learn = "all"``: the scorer's rate is then its learning rate. Any other
``learn`` policy scores with copies of the learners and offers the frame to a
learner thread (:mod:`streamflow.scoring.decoupled`), which learns from all of it
or a random subset per learner, and refreshes the copies every
``refresh_frames`` learnt frames; step 4 then takes no time on the scoring thread.

The process loop around it (sockets, telemetry, signals) lives in
``consumers/scorer.py``; this module has none of that, so tests and benchmarks
drive it directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from streamflow.config import to_dict
from streamflow.distributed import Collective, SoloCollective
from streamflow.errors import ConfigError
from streamflow.events.batch import EventBatch
from streamflow.learners import AnyLearner, LearnerConfig, build_learner
from streamflow.scoring.decoupled import LearnerThread
from streamflow.scoring.scan import ScanConfig
from streamflow.trigger import LineConfig, LineStats, Selection, TriggerMenu
from streamflow.trigger.menu import SIGNAL_REGION, check_budget

Thresholds = Literal["rank", "global"]
"""Whose windows a data-parallel scorer's lines judge against (see ScorerConfig)."""
LearnPolicy = Literal["all", "budget"] | float
"""How much of the stream the learners learn from (see ScorerConfig.learn)."""
MAX_REFRESH_FRAMES = 100_000
"""The most learnt frames between two refreshes of the scoring copies."""

MAX_LEARN_EVENTS = 10_000_000
"""The most scored events held back for one deferred learning step (``learn_events``): they wait in memory."""
MAX_THREADS = 1024
"""The most torch CPU threads a scorer asks for."""


@dataclass(frozen=True)
class ScorerConfig:
    """Learners and trigger lines of one scorer; a TOML ``[scorer]`` table is
    ``streamflow.config.from_dict(ScorerConfig, table)`` (``[[learners]]``, whose
    ``kind`` selects the config type, ``[[lines]]`` and the options below), and
    ``to_dict`` writes it back.

    learn_events: 0 learns after every frame; N > 0 learns once N scored events
    have accumulated (all of them, in one call of each learner's ``learn``).
    thresholds: for data-parallel scorers (streamflow.distributed), "rank": each
    rank's lines judge against that rank's own window of scores; "global": the
    ranks sum their lines' window histograms every frame and all apply the
    threshold of the union of their windows (every line must then use the
    mergeable "histogram" estimator). Alone, a scorer's windows are its own either way.
    threshold_sync: global thresholds sum the histograms every this many frames
    (rounds), reusing the sum in between.
    signal_region: (low, high) of mjj in GeV, the population of every line's
    signal-region figures (streamflow.trigger.menu); the stream must carry mjj for them.
    scan: a bump hunt along mjj (streamflow.scoring.scan): its windows' learners and
    lines are added to ``learners`` and ``lines`` when the config is built (the built
    config holds them, and ``scan`` is None, so it round-trips through to_dict/from_dict).
    budget: the menu's total recorded fraction of the stream (the union of its
    lines' accepts, an event counted once), None for no budget; the lines keep
    their ``accept`` values as relative shares (streamflow.trigger.menu).
    budget_control: the budget feedback's time constant in accepts.
    threads: torch's CPU threads; 0 is automatic: all cores but three (kept for
    the producer, the sink and the monitor), at least one. More threads than free
    cores make torch's thread pool spin against the other processes and run many
    times slower, not faster. With a learner thread (``learn`` other than "all")
    the scoring and the learner thread each use this many.
    learn: "all" learns from every event before the next frame is taken (the
    scorer runs at the learning rate; the only policy of data-parallel ranks);
    "budget" scores every event at the input rate and learns, in a learner thread,
    from the share of each frame its core has time for (a uniform random subset per
    learner); a number f in (0, 1] learns, in the learner thread, from a uniform
    random fraction f of every frame, waiting for the learner when it falls behind
    (streamflow.scoring.decoupled).
    refresh_frames: with a learner thread, the scoring copies take the learning
    models' state every this many learnt frames (and at drains and checkpoints).
    """

    learners: tuple[LearnerConfig, ...] = ()
    lines: tuple[LineConfig, ...] = ()
    device: str = "auto"
    learn_events: int = 0
    threads: int = 0
    thresholds: Thresholds = "rank"
    threshold_sync: int = 1
    signal_region: tuple[float, float] = SIGNAL_REGION
    scan: ScanConfig | None = None
    budget: float | None = None
    budget_control: float = 80.0
    learn: LearnPolicy = "all"
    refresh_frames: int = 4

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.scan is not None:  # a [scan] table becomes its windows' learners and lines, here, once
            scan_learners, scan_lines = self.scan.expand()
            object.__setattr__(self, "learners", tuple(self.learners) + tuple(scan_learners))
            object.__setattr__(self, "lines", tuple(self.lines) + tuple(scan_lines))
            object.__setattr__(self, "scan", None)
        if not self.learners:
            raise ConfigError("a scorer needs at least one learner (a [[scorer.learners]] table)")
        low, high = self.signal_region
        if not low < high:
            raise ConfigError(f"signal_region must be [low, high] with low < high (GeV), "
                              f"got {list(self.signal_region)}")
        names = [learner.name for learner in self.learners]
        if len(set(names)) != len(names):
            raise ConfigError(f"learner names must be unique, got {names}")
        for line in self.lines:
            if line.kind == "score" and line.learner not in names:
                raise ConfigError(f"trigger line {line.name!r} reads learner {line.learner!r}, not among {names}")
        if not 0 <= self.learn_events <= MAX_LEARN_EVENTS:
            raise ConfigError(f"learn_events must be 0 to {MAX_LEARN_EVENTS:,d} events, got {self.learn_events:,d}")
        if not 0 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"threads must be 0 (automatic) to {MAX_THREADS}, got {self.threads:,d}")
        if self.threshold_sync < 1:
            raise ConfigError(f"threshold_sync must be at least 1 frame, got {self.threshold_sync}")
        if self.thresholds not in ("rank", "global"):
            raise ConfigError(f"thresholds must be 'rank' or 'global', got {self.thresholds!r}")
        exact = [line.name for line in self.lines if line.kind == "score" and line.estimator != "histogram"]
        if self.thresholds == "global" and exact:
            raise ConfigError(f"global thresholds need estimator = 'histogram' on every line; "
                              f"line(s) {', '.join(exact)} use the exact one")
        check_budget(self.lines, self.budget, self.budget_control)
        check_learn(self.learn)
        if not 1 <= self.refresh_frames <= MAX_REFRESH_FRAMES:
            raise ConfigError(f"refresh_frames must be 1 to {MAX_REFRESH_FRAMES:,d} frames, got {self.refresh_frames}")

    @property
    def learn_fraction(self) -> float | None:
        """The fixed learning fraction of a learner thread; None for "budget" (adaptive) and "all" (no thread)."""
        return None if isinstance(self.learn, str) else float(self.learn)


def check_learn(policy: object) -> None:
    """ConfigError unless ``policy`` is "all", "budget" or a fraction in (0, 1]."""
    if isinstance(policy, str):
        if policy not in ("all", "budget"):
            raise ConfigError(f"learn must be 'all', 'budget' or a fraction in (0, 1], got {policy!r}")
    elif isinstance(policy, bool) or not isinstance(policy, (int, float)) or not 0 < policy <= 1:
        raise ConfigError(f"learn must be 'all', 'budget' or a fraction in (0, 1], got {policy!r}")



def cpu_threads(requested: int) -> int:
    """Threads for torch on the CPU: ``requested``, or all cores but three (at least one) for 0."""
    return requested if requested > 0 else max(1, (os.cpu_count() or 1) - 3)


def check_device(name: str) -> None:
    """ConfigError unless ``name`` is auto, cpu, cuda or cuda:N (whether the GPU exists is :func:`resolve_device`'s)."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; asking for a missing GPU is an error."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda asked for, but torch sees no CUDA GPU (use --device cpu or auto)")
    return torch.device(name)


def line_figures(stats: LineStats, learner_warming_up: bool = False, kind: str = "score") -> dict[str, Any]:
    """A line's stats as telemetry and ledgers show them: counts, q, achieved fraction, the fraction of
    all events, eff_S, eff_B, SIC stream-wide and in the signal region.

    ``achieved`` is the fraction of the line's whole population (the events its learner
    scored) it accepted, warm-up included (accepted / seen); ``warm`` says the line judges; ``learner_warming_up``
    that its learner is still in its own warm-up (standardisation not yet frozen),
    so its scores -- and the line's selections -- are not yet those of a trained model;
    ``kind`` is the line's (a "zero_bias" line's selections are the report's unbiased sample).
    """
    return {**stats.to_dict(), "q": stats.target, "achieved": stats.population_fraction, "warm": stats.judged > 0,
            "learner_warming_up": learner_warming_up, "kind": kind}


@dataclass
class FrameResult:
    """What one frame produced: every learner's scores (host arrays) and the trigger's decision."""

    scores: dict[str, np.ndarray]
    selection: Selection
    learn_stats: dict[str, dict[str, float]] = field(default_factory=dict)


class FrameScorer:
    """Scores, selects and learns, frame by frame, on one device."""

    def __init__(self, config: ScorerConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        torch.set_num_threads(cpu_threads(config.threads))
        self.learners: dict[str, AnyLearner] = {
            c.name: build_learner(c, self.device) for c in config.learners
        }
        self.menu = TriggerMenu(config.lines, signal_region=config.signal_region, budget=config.budget,
                                budget_control=config.budget_control)
        self.names: tuple[str, ...] | None = None
        self.frames = 0
        self.events_scored = 0
        self.events_learned = 0
        self._pending: list[torch.Tensor] = []
        self._pending_events = 0
        self._pinned: torch.Tensor | None = None
        self.collective: Collective = SoloCollective(device=self.device)
        self.decoupled: LearnerThread | None = None
        """The learner thread and the scoring copies (``learn`` other than "all"); None: learn in :meth:`process`."""
        if config.learn != "all":
            scoring = {c.name: build_learner(c, self.device) for c in config.learners}
            self.decoupled = LearnerThread(self.learners, scoring, config.learn_fraction, config.refresh_frames,
                                           cpu_threads(config.threads), config.learn_events)

    def distribute(self, collective: Collective) -> None:
        """Score and learn as one of ``collective``'s ranks (streamflow.distributed).

        Every learner then steps on all ranks' gradients, and with ``thresholds =
        "global"`` every line judges against the sum of all ranks' windows. From here
        on every rank must call :meth:`process` the same number of times (an empty
        batch when it has no frame) and :meth:`flush` together. Global thresholds of a
        single rank are its own: a :class:`SoloCollective` leaves the menu as it is.
        """
        if self.decoupled is not None and collective.world_size > 1:
            raise ConfigError(f"learn = {self.config.learn!r} needs a single scorer: data-parallel ranks learn "
                              f"every event together (learn = 'all')")
        self.collective = collective
        for learner in self.learners.values():
            learner.distribute(collective)
        if self.config.thresholds == "global" and collective.world_size > 1:
            self.menu = TriggerMenu(self.config.lines, reduce=collective.sum_counts,
                                    reduce_every=self.config.threshold_sync, signal_region=self.config.signal_region,
                                    budget=self.config.budget, budget_control=self.config.budget_control)

    def bind(self, names: Sequence[str]) -> None:
        """Resolve every learner's columns in this stream's schema (once, or when the schema changes)."""
        names = tuple(names)
        if names != self.names:
            if self.decoupled is not None:
                self.decoupled.drain()  # the learner thread is idle while the columns change
            for learner in self.learners.values():
                learner.bind(names)
            for learner in self.scoring_learners.values():
                learner.bind(names)
            self.names = names

    @property
    def scoring_learners(self) -> dict[str, AnyLearner]:
        """The learners that score: the learning models themselves, or with a learner thread their copies."""
        return self.learners if self.decoupled is None else self.decoupled.scoring

    def learned_by(self) -> dict[str, int]:
        """Events each learner has learnt from (its subsets; every learnt event with ``learn = "all"``)."""
        if self.decoupled is None:
            return dict.fromkeys(self.learners, self.events_learned)
        return {name: counts.learned for name, counts in self.decoupled.counts.items()}

    def to_device(self, features: np.ndarray) -> torch.Tensor:
        """The frame's features on the device: one copy (through pinned memory on CUDA)."""
        if self.device.type == "cpu":
            return torch.from_numpy(np.array(features, dtype=np.float32, copy=True))
        n = features.shape[0]
        if self._pinned is None or self._pinned.shape[0] < n or self._pinned.shape[1] != features.shape[1]:
            self._pinned = torch.empty(features.shape, dtype=torch.float32).pin_memory()
        staging = self._pinned[:n]
        staging.numpy()[...] = features
        return staging.to(self.device, non_blocking=True)

    def process(self, batch: EventBatch, *, counted: bool = True) -> FrameResult:
        """Test-then-train on one frame; returns the host scores and the trigger's selection.

        ``counted`` False: a data-parallel round without a frame on this rank (an empty
        batch that takes part in the others' step), not counted as a frame."""
        x, result = self._score_select(batch, counted)
        if self.decoupled is None:
            result.learn_stats = self._learn(x)
        else:
            if len(batch):
                self.decoupled.offer(x)
            result.learn_stats = self.decoupled.take_stats()
            self.events_learned = max(self.learned_by().values(), default=0)
        return result

    def score_only(self, batch: EventBatch) -> FrameResult:
        """Score and select one frame without learning from it (a menu's score-only capacity: bench.latency)."""
        return self._score_select(batch, counted=True)[1]

    def _score_select(self, batch: EventBatch, counted: bool) -> tuple[torch.Tensor, FrameResult]:
        """The frame on the device, and its scores and selection (counted as scored)."""
        self.bind(batch.names)
        x = self.to_device(batch.features)
        if self.decoupled is None:
            with torch.no_grad():
                device_scores = {name: learner.score(x) for name, learner in self.learners.items()}
        else:  # one model version per frame: no refresh while it is scored
            with self.decoupled.lock, torch.no_grad():
                device_scores = {name: learner.score(x) for name, learner in self.decoupled.scoring.items()}
        scores = {name: s.float().cpu().numpy() for name, s in device_scores.items()}
        region = batch.column("mjj") if "mjj" in batch.names else None
        selection = self.menu.select(scores, batch.labels, region)
        self.frames += int(counted)
        self.events_scored += len(batch)
        return x, FrameResult(scores=scores, selection=selection)

    def _learn(self, x: torch.Tensor) -> dict[str, dict[str, float]]:
        if self.config.learn_events == 0:
            return self._learn_now(x)
        self._pending.append(x)
        self._pending_events += x.shape[0]
        if self._pending_total() < self.config.learn_events:
            return {}
        return self._learn_pending()

    def _pending_total(self) -> int:
        """Scored events waiting for a step: this scorer's, or all ranks' (they step together)."""
        return int(self.collective.totals([self._pending_events])[0])

    def flush(self, stopped: bool = False) -> dict[str, dict[str, float]]:
        """Learn from the scored events still waiting for a step (at the end of a stream); with a
        learner thread, wait for it to learn from everything it was offered -- unless ``stopped``
        (a signal), when the frames it has not begun are left unlearnt (LearnerThread.drain)."""
        if self.decoupled is not None:
            self.decoupled.drain(flush=True, discard=stopped)
            self.events_learned = max(self.learned_by().values(), default=0)
            return self.decoupled.take_stats()
        if self._pending_total() == 0:
            return {}
        return self._learn_pending()

    def _learn_pending(self) -> dict[str, dict[str, float]]:
        x = torch.cat(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_events = [], 0
        return self._learn_now(x)

    def _learn_now(self, x: torch.Tensor) -> dict[str, dict[str, float]]:
        self.events_learned += x.shape[0]
        return {name: learner.learn(x) for name, learner in self.learners.items()}

    def close(self) -> None:
        """Stop the learner thread, if any (after what it holds)."""
        if self.decoupled is not None:
            self.decoupled.close()

    def line_stats(self) -> list[dict[str, Any]]:
        """Every trigger line's running figures, JSON-ready: target q, achieved fraction, eff_S, eff_B, SIC."""
        return [line_figures(stats, line.kind == "score" and self.learners[line.learner].warming_up, line.kind)
                for line, stats in zip(self.config.lines, self.menu.stats(), strict=True)]

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs: learners, counters and the config (trigger windows warm up again); with a
        learner thread, also its subsets' generators and account, taken between two of its frames."""
        if self.decoupled is None:
            return self._state_dict()
        with self.decoupled.paused():
            self.events_learned = max(self.learned_by().values(), default=0)
            return {**self._state_dict(), "decoupled": self.decoupled.state_dict()}

    def _state_dict(self) -> dict[str, Any]:
        return {
            "config": to_dict(self.config),
            "learners": {name: learner.state_dict() for name, learner in self.learners.items()},
            "counters": {"frames": self.frames, "events_scored": self.events_scored,
                         "events_learned": self.events_learned},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`; a checkpoint of another learner set is a ConfigError."""
        saved = set(state.get("learners", {}))
        if saved != set(self.learners):
            raise ConfigError(
                f"checkpoint holds learners {sorted(saved)}, this scorer runs {sorted(self.learners)}"
            )
        for name, learner in self.learners.items():
            learner.load_state_dict(state["learners"][name])
        counters = state["counters"]
        self.frames = int(counters["frames"])
        self.events_scored = int(counters["events_scored"])
        self.events_learned = int(counters["events_learned"])
        if self.decoupled is not None:  # a checkpoint of learn = "all" learnt every event it scored
            every = {name: {"offered": self.events_scored, "learned": self.events_learned, "skipped": 0}
                     for name in self.learners}
            self.decoupled.load_state_dict({"counts": every, **state.get("decoupled", {})})
