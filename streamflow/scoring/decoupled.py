"""Learning decoupled from scoring: a learner thread, scoring copies, and the learning budget.

With ``learn = "all"`` (:class:`~streamflow.scoring.frame_scorer.ScorerConfig`) the
scorer learns from every frame before it takes the next, so its rate is the
learning rate. Any other policy hands learning to a :class:`LearnerThread`:

Threads. The scoring thread (the process's loop) scores every event of every frame
with the *scoring copies* and runs the trigger; it then offers the frame's
features to the learner thread and goes on. The learner thread owns the
*learning models* (the learners proper: optimizer, standardisation, running
state) and learns from what it is offered. Torch releases the GIL inside its
kernels, so on a CPU the two threads run on two cores; each sets torch's
intra-op threads to ``threads`` (one each on a 2-core machine: more would make
the two pools spin against each other).

Cadence. After every ``refresh_frames`` frames it has learnt from, the learner
thread copies each learning model's state into its scoring copy
(``load_state_dict(state_dict())``: weights, weight average, standardisation,
running state), under the lock the scoring thread holds while it scores; a
frame is therefore scored by one consistent model version. At the end of a
stream (:meth:`LearnerThread.drain`) the thread finishes what it was offered and
refreshes. A checkpoint does not wait for the queue (a starved learner thread
would stall scoring): it pauses the thread between two frames
(:meth:`LearnerThread.paused`) and saves the models as they are; frames still
queued are learnt from after it, so a crash loses their learning only, as the
synchronous scorer loses the learning of the frames after its checkpoint.

Why test-then-train still holds. The learner thread is only ever offered frames
that have already been scored, so at any moment the learning models have learnt
from scored events only; a scoring copy is a copy of such a model, and every
frame scored after a refresh is new to it. No event is scored by a model that
has learnt from it. (The price: an event is scored by a model up to the
refresh cadence plus the queue -- a few frames -- staler than the synchronous
scorer's.)

Budget. Each learner learns from a uniform random subset of every offered frame:
event i is kept if u_i < f, u_i from the learner's own generator (seeded by the
learner's seed and name; its state is checkpointed), so the subset is
reproducible and independent of the other learners'. The fraction f is

- fixed (``learn = f``, 0 < f <= 1): offers block while the queue is full, so
  learning never drops an offered frame and the learnt events (and the final
  weights) do not depend on timing -- only which model version scored which
  frame does; the scorer then runs at the learning rate of f of the stream;
- adaptive (``learn = "budget"``): the learner thread runs at the lowest CPU
  priority (``nice`` LEARNER_NICE, Linux threads), so the scoring thread, the
  producer and the sink always come first and learning takes what CPU is left
  (measured on the 2-core VM: at nice 0 a learner thread took the scoring rate
  from 50k to 20-35k events/s while other jobs loaded the machine, at nice 19 it
  stayed at 50-63k). Of what it gets, it may spend a share
  ``UTILISATION`` of its core. With R the input rate (scored events per second,
  averaged over recent frames) and c_k learner k's measured cost (learner-thread
  seconds per event it learnt, averaged), learning fractions f_k cost
  R * sum_k f_k c_k seconds per second. The budget is split into equal time
  shares, a learner that needs less than its share (f_k = 1) handing the rest to
  the others (water-filling in order of cost): cheap learners learn everything,
  expensive ones a subset. Offers never block: a frame that finds the queue full
  (a burst beyond the estimate) is not learnt from at all and is counted so, as are
  the frames still queued when the scorer is stopped (a signal: it does not wait for them).

The trade-off: adaptive learning gives up reproducibility of the learnt subset
(f follows the machine's speed) for a scorer that never falls behind its input.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamflow.learners import AnyLearner, is_level_stat

LEARNER_NICE = 19
"""The adaptive budget's learner thread's nice value: the lowest priority, so learning never takes CPU from scoring."""
QUEUE_FRAMES = 2
"""Frames offered to the learner thread and not yet learnt from, at most (bounds the scoring copies' staleness)."""
UTILISATION = 0.9
"""Share of the learner thread's core the adaptive budget plans to use (the rest absorbs jitter)."""
MIN_FRACTION = 0.02
"""The adaptive budget's smallest fraction: a learner whose every call costs more than its share (fixed
overheads) still learns, and a full queue then limits it (its frames skipped whole)."""
RATE_SMOOTHING = 0.1
"""Weight of the newest frame in the running input rate and learning costs (about 10 frames' memory)."""


def subset_generator(seed: int, name: str) -> np.random.Generator:
    """A learner's own generator for its learning subsets: seeded by its seed and its name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def water_fill(costs: Mapping[str, float], budget: float) -> dict[str, float]:
    """Fractions f_k in [0, 1] with sum_k f_k costs_k <= budget, from equal shares of the budget.

    Learners in order of cost each take an equal share of what is left; one that
    needs less than its share (f = 1) leaves the rest to the more expensive ones.
    A learner of unknown (zero) cost learns everything; none learns less than MIN_FRACTION."""
    fractions: dict[str, float] = {}
    left = max(budget, 0.0)
    ordered = sorted(costs.items(), key=lambda item: item[1])
    for i, (name, cost) in enumerate(ordered):
        share = left / (len(ordered) - i)
        fraction = 1.0 if cost <= 0 else min(1.0, max(MIN_FRACTION, share / cost))
        fractions[name] = fraction
        left -= fraction * cost
    return fractions


def lowest_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: a thread's nice value is its own);
    where the OS refuses or has no per-thread priority, the thread keeps its priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LEARNER_NICE)
    except (AttributeError, OSError):
        pass


@dataclass
class LearnCounts:
    """One learner's account: events of the frames the learner thread took up, learnt from (its subsets), and the
    events of frames never learnt from: the learner thread's queue was full, or the scorer
    was stopped with them queued."""

    offered: int = 0
    learned: int = 0
    skipped: int = 0


class LearnerThread:
    """The learning models, a thread that learns from offered frames, and the scoring copies.

    ``learners`` learn (only this object's thread calls their ``learn`` once started);
    ``scoring`` are copies of the same configs that the scoring thread scores with,
    refreshed every ``refresh_frames`` learnt frames. ``fraction`` is the fixed
    learning fraction, or None for the adaptive budget. ``learn_events`` > 0 makes
    each learner learn once that many of its subset's events have accumulated."""

    def __init__(self, learners: Mapping[str, AnyLearner], scoring: Mapping[str, AnyLearner],
                 fraction: float | None, refresh_frames: int, threads: int, learn_events: int = 0) -> None:
        self.learners = dict(learners)
        self.scoring = dict(scoring)
        self.fraction = fraction
        self.refresh_frames = refresh_frames
        self.threads = threads
        self.learn_events = learn_events
        self.lock = threading.Lock()
        """Held by the scoring thread while it scores, by the learner thread while it refreshes the copies."""
        self._learning = threading.Lock()
        """Held by the learner thread while it learns from a frame: :meth:`paused` waits for it."""
        self.counts = {name: LearnCounts() for name in self.learners}
        self.generators = {name: subset_generator(learner.config.seed, name) for name, learner in self.learners.items()}
        self.costs = dict.fromkeys(self.learners, 0.0)
        """Learner-thread seconds per event learnt, per learner (running average; 0 until measured)."""
        self.rate = 0.0
        """Input events per second at the scoring thread (running average)."""
        self.planned = dict.fromkeys(self.learners, 1.0)
        """The fraction each learner learns from the next offered frame."""
        self.learnt_frames = 0
        self.refreshes = 0
        self._last_offer: float | None = None
        self._queue: queue.Queue[tuple[torch.Tensor, dict[str, float]] | None] = queue.Queue(QUEUE_FRAMES)
        self._pending: dict[str, list[torch.Tensor]] = {name: [] for name in self.learners}
        self._stats: list[dict[str, dict[str, float]]] = []
        self._stats_lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.refresh()

    # --- the scoring thread's side ----------------------------------------------------

    def offer(self, x: torch.Tensor) -> None:
        """Offer a scored frame's features for learning (see the module doc: fixed fractions wait for room,
        the adaptive budget never waits)."""
        self._raise_error()
        self._start()
        now = time.perf_counter()
        if self._last_offer is not None and now > self._last_offer:
            rate = x.shape[0] / (now - self._last_offer)
            self.rate = rate if self.rate == 0 else self.rate + RATE_SMOOTHING * (rate - self.rate)
        self._last_offer = now
        if self.fraction is not None:
            fractions = dict.fromkeys(self.learners, self.fraction)
            self._put(x, fractions, block=True)
            return
        if self.rate > 0:
            self.planned = water_fill(self.costs, UTILISATION / self.rate)
        if not self._put(x, dict(self.planned), block=False):
            self._skip(x.shape[0])

    def _skip(self, events: int) -> None:
        for counts in self.counts.values():
            counts.skipped += events

    def _put(self, x: torch.Tensor, fractions: dict[str, float], block: bool) -> bool:
        while True:
            try:
                self._queue.put((x, fractions), timeout=0.5 if block else None, block=block)
                return True
            except queue.Full:
                if not block:
                    return False
                self._raise_error()  # a learner thread that died never makes room

    def take_stats(self) -> dict[str, dict[str, float]]:
        """The learn calls' stats since the last call, merged per learner in order (counts summed by the caller)."""
        with self._stats_lock:
            stats, self._stats = self._stats, []
        merged: dict[str, dict[str, float]] = {}
        for one in stats:
            for name, values in one.items():
                into = merged.setdefault(name, {})
                for key, value in values.items():
                    into[key] = value if is_level_stat(key) else into.get(key, 0.0) + value
        return merged

    def drain(self, flush: bool = False, discard: bool = False) -> None:
        """Wait until every offered frame is learnt from (``flush``: and every held-back event of
        ``learn_events``), then refresh the scoring copies. ``discard``: a stopped scorer does not
        wait for the queue -- its frames are counted as skipped; only the frame being learnt finishes."""
        self._raise_error()
        while discard:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._skip(item[0].shape[0])
            self._queue.task_done()
        if self._thread is not None:
            self._queue.join()
            self._raise_error()
        if flush:
            self._learn_pending(force=True)
        self.refresh()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No learning inside: the learner thread waits between two frames (for a consistent checkpoint)."""
        self._raise_error()
        with self._learning:
            yield

    def close(self) -> None:
        """Stop the thread (after what it holds); idempotent."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._thread = None

    def refresh(self) -> None:
        """Copy every learning model's state into its scoring copy (under the scoring lock)."""
        states = {name: learner.state_dict() for name, learner in self.learners.items()}
        with self.lock:
            for name, copy in self.scoring.items():
                copy.load_state_dict(states[name])
        self.refreshes += 1

    # --- the learner thread's side ----------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="learner", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        if self.fraction is None:
            lowest_priority()
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    with self._learning:
                        self._learn_frame(*item)
            except BaseException as exc:  # handed to the scoring thread at its next offer
                self._error = exc
            finally:
                self._queue.task_done()

    def _learn_frame(self, x: torch.Tensor, fractions: dict[str, float]) -> None:
        n = x.shape[0]
        for name in self.learners:
            fraction = fractions[name]
            if fraction >= 1.0:
                subset = x
            else:
                keep = self.generators[name].random(n) < fraction
                subset = x[torch.from_numpy(keep).to(x.device)]
            self.counts[name].offered += n
            self._pending[name].append(subset)
        self._learn_pending(force=False)
        self.learnt_frames += 1
        if self.learnt_frames % self.refresh_frames == 0:
            self.refresh()

    def _learn_pending(self, force: bool) -> None:
        stats: dict[str, dict[str, float]] = {}
        for name, learner in self.learners.items():
            pending = self._pending[name]
            events = sum(t.shape[0] for t in pending)
            if events == 0 or (not force and events < self.learn_events):
                continue
            x = torch.cat(pending) if len(pending) > 1 else pending[0]
            self._pending[name] = []
            started = time.perf_counter()
            stats[name] = learner.learn(x)
            if events:
                cost = (time.perf_counter() - started) / events
                old = self.costs[name]
                self.costs[name] = cost if old == 0 else old + RATE_SMOOTHING * (cost - old)
            self.counts[name].learned += events
        if stats:
            with self._stats_lock:
                self._stats.append(stats)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # --- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The subsets' generators and the learning account (call while :meth:`paused`, or after :meth:`drain`)."""
        return {"generators": {name: g.bit_generator.state for name, g in self.generators.items()},
                "counts": {name: vars(c).copy() for name, c in self.counts.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, generator in self.generators.items():
            if name in state.get("generators", {}):
                generator.bit_generator.state = state["generators"][name]
            if name in state.get("counts", {}):
                self.counts[name] = LearnCounts(**state["counts"][name])
        self.refresh()

