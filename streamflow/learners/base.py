"""The learner protocol and the machinery every online learner shares.

A learner, in the spirit of River's estimators and scikit-learn's ``partial_fit``:

- ``bind(names)``: resolve the columns it reads in this stream's schema;
- ``score(x) -> Tensor[n]``: float32 on the learner's device, higher = more
  anomalous, NaN for events it does not score (any with a non-finite input among
  them); no side effects, no gradient;
- ``learn(x) -> stats``: a few Adam steps on the events of frame x;
- ``state_dict()`` / ``load_state_dict()``: plain tensors and numbers (so
  ``torch.load(weights_only=True)`` reads a checkpoint), with the config, so a
  checkpoint from an incompatible config is refused.

The stream is scored first and learnt from second (test-then-train): no event is
scored by a model that has seen it.

``learn`` is robust to bad data: rows with a non-finite value in any column the
learner reads are dropped (counted as ``dropped``); a minibatch whose loss or
gradient is not finite is skipped before the optimizer sees it (counted as
``skipped``), so the weights never become NaN.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from streamflow.config import to_dict
from streamflow.distributed import Collective, SoloCollective
from streamflow.errors import ConfigError
from streamflow.events.coordinates import get_coordinates
from streamflow.learners.preprocessing import Preprocessor, column_indices

CATHODE_FEATURES: tuple[str, ...] = ("mjmin", "delta_m", "tau21_jmin", "tau21_jmax")
"""The standard LHCO anomaly-detection features (CATHODE, CWoLA hunting), mjj aside."""


@dataclass(frozen=True)
class Window:
    """Events with ``low <= feature < high`` (or outside that range if ``outside``)."""

    feature: str
    low: float = -math.inf
    high: float = math.inf
    outside: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ConfigError(f"window on {self.feature!r}: low {self.low} must be below high {self.high}")

    def contains(self, values: Tensor) -> Tensor:
        inside = (values >= self.low) & (values < self.high)
        return ~inside if self.outside else inside


@dataclass(frozen=True, kw_only=True)
class LearnerConfigBase:
    """Options every learner has.

    train_where: learn only from events inside this window of one feature (e.g. the
    reference sample of the Gaussian toy, or the mjj sidebands); all events are scored.
    warmup_events: events whose moments set the frozen standardisation.
    steps_per_frame: passes over each frame; a pass is ceil(n / batch_size) Adam steps.
    grad_clip: the gradient's total norm is clipped to this (math.inf: no clipping).
    ema_decay: if > 0, events are scored by an exponential moving average of the
    trained weights, w_avg <- d w_avg + (1 - d) w after every step (d ramps up as
    min(ema_decay, (1 + t)/(10 + t)) over the first steps): Polyak averaging, which
    smooths the step-to-step noise of online SGD out of the scores (horizon about
    1 / (1 - ema_decay) steps); 0 scores with the trained weights themselves.
    """

    kind: str
    name: str = ""
    features: tuple[str, ...] = CATHODE_FEATURES
    coordinates: str = "identity"
    train_where: Window | None = None
    warmup_events: int = 5000
    lr: float = 1e-3
    batch_size: int = 1024
    steps_per_frame: int = 1
    grad_clip: float = 10.0
    ema_decay: float = 0.999
    seed: int = 0

    TRAINING_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"name", "train_where", "lr", "batch_size", "steps_per_frame", "grad_clip", "seed"}
    )
    """Keys a checkpoint may differ in: they change how it goes on learning, not what it is."""

    def __post_init__(self) -> None:
        if not self.features:
            raise ConfigError(f"{self.kind}: features must not be empty")
        if len(set(self.features)) != len(self.features):
            raise ConfigError(f"{self.kind}: features listed twice in {list(self.features)}")
        get_coordinates(self.coordinates)
        positive = {"lr": self.lr, "batch_size": self.batch_size, "grad_clip": self.grad_clip}
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{self.kind}: {key} must be > 0, got {value!r}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"{self.kind}: ema_decay must be in [0, 1), got {self.ema_decay!r}")
        for key in ("warmup_events", "steps_per_frame"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{self.kind}: {key} must be >= 0, got {getattr(self, key)!r}")


@dataclass
class Totals:
    """Running counts over the learner's life (kept in checkpoints)."""

    events: int = 0
    steps: int = 0
    skipped: int = 0
    dropped: int = 0

    def add(self, stats: dict[str, float]) -> None:
        for key in ("events", "steps", "skipped", "dropped"):
            setattr(self, key, getattr(self, key) + int(stats[key]))


class TorchLearner(ABC):
    """A learner whose model is a torch module trained by Adam on standardised inputs: every
    learner is one, and its public methods are the protocol of the module docstring (with
    ``model``, the trained module, and ``distribute`` for data-parallel scorers).

    Subclasses build the model, say which events they can learn from and score,
    turn the kept rows into training tensors, and define the loss and the score.
    """

    kind: ClassVar[str]

    def __init__(self, config: LearnerConfigBase, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.features = config.features
        self.coordinates = config.coordinates
        self.name = config.name or f"{config.kind}-{config.coordinates}"
        self.inputs = Preprocessor(config.features, self._input_coordinates(), config.warmup_events, self.device)
        self.preprocessors: list[Preprocessor] = [self.inputs]
        self.aux_features: dict[str, str] = {}
        """Raw stream columns the learner reads besides its preprocessed ones (role -> name)."""
        if config.train_where is not None:
            self.aux_features["train_where"] = config.train_where.feature
        self._aux: dict[str, int] = {}
        self._width: int | None = None
        self._used: Tensor | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = self._build_model().to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False) if config.ema_decay > 0 else None
        """The weight average that scores events, or None to score with ``model``."""
        self._ema_updates = 0
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(config.seed)
        self.totals = Totals()
        self.collective: Collective = SoloCollective(device=self.device)
        """The ranks this learner steps with: alone, or set by :meth:`distribute` for a data-parallel scorer."""

    def distribute(self, collective: Collective) -> None:
        """Learn as one of ``collective``'s ranks: every step from all ranks' gradients, so the
        copies on the ranks stay identical (see streamflow.distributed)."""
        self.collective = collective
        for pre in self.preprocessors:
            pre.collective = collective

    # --- what a subclass provides -------------------------------------------------

    @abstractmethod
    def _build_model(self) -> nn.Module:
        """The trainable module (built on the CPU under the config's seed)."""

    @abstractmethod
    def _score(self, model: nn.Module, x: Tensor) -> Tensor:
        """Scores of stream rows x by ``model`` (called without gradient)."""

    @abstractmethod
    def _training_tensors(self, x: Tensor) -> tuple[Tensor, ...]:
        """Per-event training tensors (first dim n) for finite, kept rows x; may update running state."""

    @abstractmethod
    def _loss(self, model: nn.Module, *batch: Tensor) -> Tensor:
        """Scalar loss of ``model`` on one minibatch of the training tensors."""

    def _input_coordinates(self) -> str:
        """The coordinates the model sees its inputs in: the learner's own by default."""
        return self.config.coordinates

    def _learnable(self, x: Tensor) -> Tensor:
        """Rows this learner can learn from at all (beyond train_where); all by default."""
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)

    def _extra_state(self) -> dict[str, Any]:
        """Running state of the subclass for checkpoints (plain numbers and tensors)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` saved (nothing by default)."""
        del state

    # --- the protocol -------------------------------------------------------------

    def bind(self, names: Sequence[str]) -> None:
        """Resolve the columns this learner reads in a stream with columns ``names``."""
        names = tuple(names)
        try:
            for pre in self.preprocessors:
                pre.bind(names)
            aux = dict(zip(self.aux_features, column_indices(list(self.aux_features.values()), names)))
        except ConfigError as exc:
            raise ConfigError(f"learner {self.name!r}: {exc}") from None
        self._aux = aux
        self._width = len(names)
        aux_columns = torch.tensor(list(aux.values()), dtype=torch.long, device=self.device)
        self._used = torch.cat([pre.columns for pre in self.preprocessors] + [aux_columns]).unique()

    def aux(self, x: Tensor, role: str) -> Tensor:
        """The raw stream column of an auxiliary feature (e.g. the CWoLA region feature)."""
        return x[:, self._aux[role]]

    def score(self, x: Tensor) -> Tensor:
        """float32[n] anomaly scores (higher = more anomalous); no side effects.

        NaN for events with a non-finite value in a column the learner reads (a frame
        such as tanh would otherwise map inf to a finite, meaningless score).

        Runs :meth:`evaluate` under ``torch.no_grad``. ``python -m bench.scoring`` times the
        alternatives against it on the same frames: ``torch.inference_mode`` (bit-identical scores),
        ``torch.compile`` (within 3e-5 of these scores) and the menu's two flows in one vmapped
        call; none was faster beyond the run-to-run noise on the CPU (README, Performance)."""
        with torch.no_grad():
            return self.evaluate(x)

    def evaluate(self, x: Tensor) -> Tensor:
        """The body of :meth:`score`, under whatever autograd mode the caller holds (the
        benchmark times it under ``no_grad``, ``inference_mode`` and compiled); call it without gradient."""
        x = self._check(x)
        if x.shape[0] == 0:  # some flow libraries cannot evaluate an empty batch
            return torch.empty(0, device=self.device)
        scores = self._score(self.scoring_model, x).float()
        finite = torch.isfinite(x.index_select(1, self._used_columns())).all(dim=1)
        return torch.where(finite, scores, torch.full_like(scores, math.nan))

    def learn(self, x: Tensor) -> dict[str, float]:
        """Learn from frame x; returns loss and grad_norm (means over the applied steps),
        steps (applied), skipped (non-finite loss or gradient), dropped (non-finite rows),
        events (rows learnt from)."""
        x = self._check(x)
        finite = torch.isfinite(x.index_select(1, self._used_columns())).all(dim=1)
        wanted = self._learnable(x)
        if self.config.train_where is not None:
            wanted &= self.config.train_where.contains(self.aux(x, "train_where"))
        for pre in self.preprocessors:
            pre.prepare(x[finite & wanted])  # a bounded frame fits its range on the first events it learns
        for pre in self.preprocessors:
            finite &= torch.isfinite(pre.in_coordinates(x)).all(dim=1)
        keep = finite & wanted
        n_finite, n_kept = torch.stack([finite.sum(), keep.sum()]).tolist()
        tensors = self._training_tensors(x[keep])
        stats = self._steps(tensors, n_kept)
        # The model learnt from every rank's events: count them all.
        n_rows, n_finite, n_kept = (int(v) for v in self.collective.totals([x.shape[0], n_finite, n_kept]))
        stats.update(dropped=n_rows - n_finite, events=n_kept)
        self.totals.add(stats)
        return stats

    def _steps(self, tensors: tuple[Tensor, ...], n: int) -> dict[str, float]:
        losses: list[float] = []
        norms: list[float] = []
        skipped = 0
        params = [p for p in self.model.parameters() if p.requires_grad]
        batches = [index for _ in range(self.config.steps_per_frame if n else 0)
                   for index in torch.randperm(n, generator=self._generator, device=self.device)
                   .split(self.config.batch_size)]
        for step in range(self._step_count(len(batches))):
            self.optimizer.zero_grad(set_to_none=True)
            batch = tuple(t[batches[step]] for t in tensors) if step < len(batches) else None
            loss = self._loss(self.model, *batch) if batch is not None else None
            if loss is not None and loss.requires_grad:
                loss.backward()
            else:  # no events this step, or e.g. every input in a spline's identity tails
                loss = None
            loss = self.collective.mean_step(params, loss, self._step_weight, batch)  # the ranks' mean
            if loss is None:
                skipped += 1
                continue
            norm = nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            # One host sync per step: a non-finite loss or gradient never reaches Adam.
            loss_value, norm_value = torch.stack([loss.detach(), norm]).tolist()
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                skipped += 1
                continue
            self.optimizer.step()
            self._update_ema()
            losses.append(loss_value)
            norms.append(norm_value)
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": sum(losses) / len(losses) if losses else math.nan,
            "grad_norm": sum(norms) / len(norms) if norms else math.nan,
            "steps": len(losses),
            "skipped": skipped,
        }

    def _step_count(self, local: int) -> int:
        """Minibatch steps this frame: this rank's, or data-parallel the most any rank has."""
        return self.collective.largest(local)

    def _step_weight(self, *batch: Tensor) -> Tensor:
        """What ``_loss`` averages over, so ranks combine as one minibatch: its events by default."""
        return torch.tensor(float(batch[0].shape[0]), device=self.device)

    @property
    def warming_up(self) -> bool:
        """True until the input standardisation is frozen (``warmup_events`` seen): the scores still move with it."""
        return not self.inputs.frozen

    @property
    def scoring_model(self) -> nn.Module:
        """The module that scores: the weight average if there is one, else the trained model."""
        return self.model if self.ema_model is None else self.ema_model

    def _update_ema(self) -> None:
        if self.ema_model is None:
            return
        self._ema_updates += 1
        t = self._ema_updates
        weight = 1.0 - min(self.config.ema_decay, (1 + t) / (10 + t))
        with torch.no_grad():
            for avg, new in zip(self.ema_model.parameters(), self.model.parameters()):
                avg.lerp_(new, weight)

    def _check(self, x: Tensor) -> Tensor:
        if self._width is None:
            raise RuntimeError(f"learner {self.name!r} is not bound to a stream: call bind(names) first")
        if x.ndim != 2 or x.shape[1] != self._width:
            raise ConfigError(
                f"learner {self.name!r}: expected events of {self._width} columns, got shape {list(x.shape)}"
            )
        return x.to(self.device, torch.float32, non_blocking=True)

    def _used_columns(self) -> Tensor:
        """Indices of the stream columns the learner reads (set by :meth:`bind`)."""
        if self._used is None:
            raise RuntimeError(f"learner {self.name!r} is not bound to a stream: call bind(names) first")
        return self._used

    # --- checkpoints --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to go on learning: config, weights, optimizer, standardisation, counts."""
        return {
            "kind": self.kind,
            "config": to_dict(self.config),
            "model": self.model.state_dict(),
            "average": None if self.ema_model is None else self.ema_model.state_dict(),
            "average_updates": self._ema_updates,
            "optimizer": self.optimizer.state_dict(),
            "preprocessing": [pre.state_dict() for pre in self.preprocessors],
            "extra": self._extra_state(),
            "totals": to_dict(self.totals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint; ConfigError if it is not one of this learner's kind and config."""
        check_checkpoint(self, state, "model")
        self.model.load_state_dict(state["model"])
        if self.ema_model is not None:
            self.ema_model.load_state_dict(state["average"])
        self._ema_updates = int(state["average_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr
        for pre, pre_state in zip(self.preprocessors, state["preprocessing"], strict=True):
            pre.load_state_dict(pre_state)
        self._load_extra_state(state["extra"])
        self.totals = Totals(**state["totals"])


def check_checkpoint(learner: Any, state: Any, body: str) -> None:
    """ConfigError unless ``state`` is a checkpoint (holding ``body``) of ``learner``'s kind and config.

    Configs may differ only in their ``TRAINING_KEYS`` (how learning goes on, not what is learnt)."""
    if not isinstance(state, dict) or not {"kind", "config", body} <= set(state):
        raise ConfigError(f"learner {learner.name!r}: not a streamflow learner checkpoint")
    if state["kind"] != learner.kind:
        raise ConfigError(f"learner {learner.name!r}: checkpoint is a {state['kind']!r} learner, not {learner.kind!r}")
    ours = _plain(to_dict(learner.config))
    theirs = _plain(state["config"])
    for key in sorted(set(ours) | set(theirs)):
        if key not in type(learner.config).TRAINING_KEYS and ours.get(key) != theirs.get(key):
            raise ConfigError(
                f"learner {learner.name!r}: checkpoint has {key} = {theirs.get(key)!r}, this learner {ours.get(key)!r}"
            )


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so configs compare equal whatever container they came in."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Dense layers of the given widths, ReLU between them, linear output."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)
