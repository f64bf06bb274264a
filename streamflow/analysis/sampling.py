"""Sampling a scorer checkpoint's conditional flow: the stream, after it is gone.

A flow trained online on a stream models p(x | m) (x: its features, m: its
context, mjj for LHCO); with a model of the stream's marginal p(m) it is a
compressed copy of the whole stream. :func:`sample_ranges` draws events in given
ranges of m as

    m ~ p(m | lo <= m < hi),   x ~ p_flow(x | m)   (physical units),

splitting the N events over the ranges in proportion to the stream's events in
each (P(lo <= m < hi) under p(m)), so the samples have the stream's composition.

p(m) comes from the checkpoint's :class:`ContextHistogram` of the streamed mjj
(``streamflow consume``/``run`` and ``streamflow ephemeral`` keep one): piecewise
uniform in 10 GeV bins. A checkpoint without one (a stream without mjj, an older
checkpoint) falls back on the flow's own context standardisation: a Gaussian in
the context frame (log mjj for LHCO: a log-normal mjj) with the mean and width
of the warm-up events, which follows the falling mjj spectrum only roughly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from streamflow.errors import ConfigError
from streamflow.learners import FlowLearner, learner_from_state
from streamflow.scoring.checkpoint import load_checkpoint
from streamflow.scoring.context_histogram import HISTOGRAM_KEY, ContextHistogram, MassRange
from streamflow.stream.selections import SelectedEvents, SelectionWriter

SAMPLE_CHUNK = 1 << 16
"""Flow samples drawn per call (bounds the flow's working memory for large N)."""
MAX_SAMPLE_EVENTS = 10_000_000
"""The most events one sampling draws: they are held in memory and written as one file (about 60 bytes an
event with their selections-file columns, 600 MB at the bound)."""


DEFAULT_RANGES = (MassRange(3300.0, 3700.0), MassRange(3100.0, 3300.0), MassRange(3700.0, 3900.0))
"""The LHCO signal region (3.3-3.7 TeV) and its sidebands (3.1-3.3, 3.7-3.9 TeV), in GeV."""


def check_ranges(ranges: Sequence[MassRange]) -> tuple[MassRange, ...]:
    """The ranges, refused if there are none or two of them overlap."""
    ranges = tuple(ranges)
    if not ranges:
        raise ConfigError("no mjj range to sample in")
    ordered = sorted(ranges, key=lambda r: r.low)
    for a, b in zip(ordered[:-1], ordered[1:], strict=True):
        if b.low < a.high:
            raise ConfigError(f"mjj ranges {a.label} and {b.label} overlap")
    return ranges


class ContextDistribution(Protocol):
    """The stream's distribution of the context feature, restricted to ranges."""

    description: str

    def mass(self, r: MassRange) -> float:
        """P(r.low <= m < r.high)."""
        ...

    def draw(self, rng: np.random.Generator, n: int, r: MassRange) -> np.ndarray:
        """n values of m from the distribution restricted to ``r``, float64[n]."""
        ...



class WarmupGaussian:
    """The context's warm-up moments in the flow's context frame: z = (T(m) - mu) / sigma ~ N(0, 1).

    Truncated to a range [a, b) of z (T is monotone): z = Phi^-1(U(Phi(a), Phi(b))),
    m = T^-1(mu + sigma z).
    """

    def __init__(self, flow: FlowLearner) -> None:
        assert flow.context is not None
        if flow.context.count < 2:
            raise ConfigError(f"learner {flow.name!r} has seen no events: nothing to sample")
        self.context = flow.context
        self.description = (f"Gaussian in {flow.config.context_coordinates}({flow.config.context}) with the moments of "
                            f"the flow's first {flow.context.count} events (no histogram in the checkpoint)")

    def _bounds(self, r: MassRange) -> tuple[float, float]:
        """(Phi(a), Phi(b)) for the range's bounds a, b in z."""
        z = self.context.encode(torch.tensor([[r.low], [r.high]], dtype=torch.float32, device=self.context.device))
        a, b = torch.special.ndtr(z.double().squeeze(1)).tolist()
        return a, b

    def mass(self, r: MassRange) -> float:
        a, b = self._bounds(r)
        return b - a

    def draw(self, rng: np.random.Generator, n: int, r: MassRange) -> np.ndarray:
        a, b = self._bounds(r)
        z = torch.special.ndtri(torch.from_numpy(rng.uniform(a, b, size=n))).float()
        return self.context.decode(z.reshape(-1, 1).to(self.context.device)).squeeze(1).double().cpu().numpy()


def load_flow(state: Mapping[str, Any], name: str | None = None, device: str | torch.device = "cpu") -> FlowLearner:
    """The conditional flow ``name`` of a scorer checkpoint (default: the first flow with a context in
    the bounded frame, whose samples stay inside the physical range, else the first flow with a context)."""
    scorer = state.get("scorer")
    learners = scorer.get("learners") if isinstance(scorer, dict) else None
    if not isinstance(learners, dict) or not learners:
        raise ConfigError("checkpoint holds no scorer learners (is it a checkpoint of streamflow consume or run?)")
    conditional = [n for n, s in learners.items() if s.get("kind") == "flow" and s["config"].get("context")]
    if name is None:
        if not conditional:
            raise ConfigError(f"checkpoint has no conditional flow among its learners {sorted(learners)}")
        bounded = [n for n in conditional if learners[n]["config"].get("coordinates") == "bounded"]
        name = (bounded or conditional)[0]
    elif name not in learners:
        raise ConfigError(f"checkpoint has no learner {name!r} (it has {', '.join(learners)})")
    elif name not in conditional:
        raise ConfigError(f"learner {name!r} is not a flow with a context: sampling needs one conditional on mjj")
    learner = learner_from_state(learners[name], device, where=f"checkpoint learner {name!r}")
    assert isinstance(learner, FlowLearner)
    return learner


def context_distribution(state: Mapping[str, Any], flow: FlowLearner) -> ContextDistribution:
    """The checkpoint's histogram of the flow's context if it has a filled one, else the warm-up Gaussian."""
    saved = state.get(HISTOGRAM_KEY)
    if isinstance(saved, dict) and saved.get("feature") == flow.config.context:
        histogram = ContextHistogram.from_state(saved)
        if histogram.counts.any():
            return histogram
    return WarmupGaussian(flow)


def split_events(n: int, masses: Sequence[float]) -> list[int]:
    """n split in proportion to ``masses`` (largest remainders), summing to n exactly."""
    weights = np.asarray(masses, np.float64)
    if not weights.sum() > 0:
        raise ConfigError("the stream has no events in any of the mjj ranges")
    share = n * weights / weights.sum()
    counts = np.floor(share).astype(int)
    counts[np.argsort(counts - share)[: n - counts.sum()]] += 1
    return counts.tolist()


@dataclass(frozen=True)
class Samples:
    """Sampled events: columns ``names`` (context first), the index of the range each was drawn in,
    and how they were drawn (``meta``: learner, context distribution, ranges, seed)."""

    features: np.ndarray
    names: tuple[str, ...]
    range_index: np.ndarray
    ranges: tuple[MassRange, ...]
    meta: dict[str, Any]

    def counts(self) -> list[int]:
        """Events drawn in each range."""
        return np.bincount(self.range_index, minlength=len(self.ranges)).tolist()

    def __len__(self) -> int:
        return len(self.range_index)


def check_sample_events(n: int) -> None:
    """ConfigError unless ``n`` is 1 to MAX_SAMPLE_EVENTS."""
    if not 1 <= n <= MAX_SAMPLE_EVENTS:
        raise ConfigError(f"number of events to sample must be 1 to {MAX_SAMPLE_EVENTS:,d}, got {n:,d}")


def sample_ranges(flow: FlowLearner, distribution: ContextDistribution, n: int,
                  ranges: Sequence[MassRange], seed: int = 0) -> Samples:
    """n events from ``flow`` with the context drawn from ``distribution`` in ``ranges`` (see module doc)."""
    check_sample_events(n)
    ranges = check_ranges(ranges)
    counts = split_events(n, [distribution.mass(r) for r in ranges])
    rng = np.random.default_rng(seed)
    rows, index = [], []
    devices = [flow.device] if flow.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i, (r, count) in enumerate(zip(ranges, counts, strict=True)):
            for start in range(0, count, SAMPLE_CHUNK):
                m = distribution.draw(rng, min(SAMPLE_CHUNK, count - start), r)
                x = flow.sample(len(m), m)
                rows.append(np.column_stack([m.astype(np.float32), x]))
                index.append(np.full(len(m), i, np.int64))
    names = (str(flow.config.context), *flow.features)
    meta = {"learner": flow.name, "context_distribution": distribution.description,
            "ranges": [[r.low, r.high] for r in ranges], "seed": seed}
    return Samples(np.concatenate(rows), names, np.concatenate(index), ranges, meta)


def sample_checkpoint(path: str | Path, n: int, ranges: Sequence[MassRange] = DEFAULT_RANGES, *,
                      learner: str | None = None, seed: int = 0) -> tuple[FlowLearner, Samples]:
    """The conditional flow of the scorer checkpoint at ``path`` and n events drawn from it in ``ranges``."""
    check_sample_events(n)
    ranges = check_ranges(ranges)
    state = load_checkpoint(path)
    flow = load_flow(state, learner)
    samples = sample_ranges(flow, context_distribution(state, flow), n, ranges, seed)
    samples.meta["checkpoint"] = str(path)
    return flow, samples


def write_samples(path: str | Path, samples: Samples) -> None:
    """Write ``samples`` in the selections-file layout (streamflow.stream.selections), replacing ``path``.

    One "line" per range: bit i set = drawn in range i; scores are NaN (not scored);
    ids count the samples; seq is 0; labels -1 (no truth); ``samples.meta`` is the config attribute.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    n, n_ranges = len(samples), len(samples.ranges)
    writer = SelectionWriter(tmp, samples.names, tuple(f"{samples.names[0]} {r.label}" for r in samples.ranges),
                             config=samples.meta)
    bits = np.uint64(1) << samples.range_index.astype(np.uint64)
    try:
        writer.append(SelectedEvents(
            ids=np.arange(n, dtype=np.uint64), seq=np.zeros(n, np.uint64), bits=bits, passed=bits,
            scores=np.full((n, n_ranges), np.nan, np.float32), features=samples.features.astype(np.float32),
            labels=np.full(n, -1, np.int8),
        ))
    finally:
        writer.close()
    os.replace(tmp, path)
