"""Acknowledged delivery, without sockets: credit windows, acknowledgements, timeouts and redelivery.

The sender side of the acknowledged transport (:mod:`streamflow.stream.acked_transport`)
keeps one :class:`Dispatcher`; its socket code only moves bytes and tells the
dispatcher what happened. The protocol (the ZeroMQ guide's credit-based flow
control with the "Paranoid Pirate" heartbeat and retry):

- **Credit.** A receiver says HELLO with a window of ``W`` frames; it then holds at
  most ``W`` unacknowledged frames. Every acknowledgement returns one credit. A
  frame goes to the live receiver with the most credit (ties: the one that has
  waited longest), so a slow receiver gets fewer frames instead of a deep queue.
  The window replaces kernel-buffer tuning: at most ``W`` frames of a receiver
  are in any buffer, whatever the OS does.
- **Bounded buffer.** The sender keeps every frame it sent until some receiver
  acknowledges it (the encoded message: a resend costs no source re-read), at most
  :attr:`DeliveryConfig.max_unacked` frames. When the buffer is full the producer
  blocks (:attr:`Dispatcher.has_room` is False), it never drops: memory is bounded
  by ``max_unacked`` x frame bytes (256 x 295 kB for 4,096-event, 16-feature frames:
  75 MB).
- **Redelivery.** The frames a receiver holds are sent again, first in the queue,
  to whichever receiver has credit, when (a) the receiver's connection is gone
  (the socket layer finds out within one heartbeat interval: a probe to a peer
  whose connection closed fails at once), or (b) a frame it holds stays
  unacknowledged for ``ack_timeout_s``: that receiver is then evicted (it gets no
  more frames; it is a receiver that never acknowledges, or is wedged).
- **Acknowledgement.** A receiver acknowledges (stream id, seq) once the frame is
  fully handled (scored, its selections handed on, journalled). The dispatcher
  remembers the last :data:`SETTLED_MEMORY` x ``max_unacked`` acknowledged frames
  (memory bounded, whatever the stream's length), so it can tell a
  *duplicate* acknowledgement (a frame already settled), an *unknown* one (a frame
  never sent) and a *late* one (from an evicted receiver that did finish the frame:
  it settles the frame) apart, and count each. None of them raises.

Delivery is at-least-once: a frame redelivered after its receiver finished it but
died before its acknowledgement left is processed again unless the receiver side
recognises it by (stream id, seq) -- the scorer's checkpoint and journal do
(:meth:`streamflow.scoring.stream_scorer.StreamScorer.already_processed`), the sink's
committed sequence account does.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from streamflow.errors import ConfigError

DEFAULT_WINDOW = 128
MAX_WINDOW = 1024
DEFAULT_MAX_UNACKED = 256
DEFAULT_ACK_TIMEOUT_S = 120.0
DEFAULT_HEARTBEAT_S = 0.5
SELECTIONS_WINDOW = 128
"""The scorer -> sink hop's window: a sink acknowledges selections in batches, once a flush commits them."""
CONFIRM_EVERY = DEFAULT_WINDOW // 2
"""A sink commits and acknowledges at least every this many selections: a scorer at the default window, which
acknowledges a frame upstream once its selection is committed, then never waits for a commit."""
SETTLED_MEMORY = 4
"""Settled frames remembered, in units of the unacknowledged-frame buffer (duplicate acknowledgements)."""

P = TypeVar("P")
"""A peer's identity as the socket layer knows it (a ROUTER routing id)."""


@dataclass(frozen=True)
class DeliveryConfig:
    """Acknowledged delivery's bounds.

    window: frames one receiver may hold unacknowledged (its HELLO may ask for fewer);
    max_unacked: frames the sender keeps for redelivery, all receivers together (full: the sender blocks);
    ack_timeout_s: a frame unacknowledged this long is sent again and its receiver evicted
    (far above a frame's processing time: a learner's step on a large frame can take seconds);
    heartbeat_s: how often the sender checks that each receiver's connection is still there.
    """

    window: int = DEFAULT_WINDOW
    max_unacked: int = DEFAULT_MAX_UNACKED
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S
    heartbeat_s: float = DEFAULT_HEARTBEAT_S

    def __post_init__(self) -> None:
        if not 1 <= self.window <= MAX_WINDOW:
            raise ConfigError(f"delivery window must be 1 to {MAX_WINDOW} frames, got {self.window}")
        if not self.window <= self.max_unacked <= 100_000:
            raise ConfigError(f"unacknowledged-frame buffer must be {self.window} (the window) to 100,000 frames, "
                              f"got {self.max_unacked}")
        for name, value in (("ack timeout", self.ack_timeout_s), ("heartbeat interval", self.heartbeat_s)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be positive seconds, got {value}")
        if self.heartbeat_s >= self.ack_timeout_s:
            raise ConfigError(f"heartbeat interval ({self.heartbeat_s:g} s) must be below the ack timeout "
                              f"({self.ack_timeout_s:g} s)")


Key = tuple[int, int]
"""A frame's identity: (stream id, sequence number)."""


class RecentKeys:
    """The last ``capacity`` settled keys, for telling a repeated acknowledgement from an unknown one.

    Bounded, so that a long stream costs no memory: an acknowledgement repeated after
    ``capacity`` more frames settled is counted unknown rather than duplicate."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[Key] = deque()
        self._keys: set[Key] = set()
        self.total = 0

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: Key) -> None:
        self._order.append(key)
        self._keys.add(key)
        self.total += 1
        if len(self._order) > self.capacity:
            self._keys.discard(self._order.popleft())

    def __len__(self) -> int:
        return len(self._keys)


@dataclass
class _Peer:
    window: int
    credit: int
    in_flight: dict[Key, float] = field(default_factory=dict)  # frame -> when it was (last) sent
    acked: int = 0
    since: float = 0.0  # when it last got credit back (ties go to the longest waiting)


@dataclass
class DeliveryCounts:
    """What the dispatcher saw, for the ledger and the bad-peer checks."""

    sent: int = 0  # frames accepted from the source
    dispatched: int = 0  # sends to receivers, redeliveries included
    acked: int = 0  # frames settled by an acknowledgement
    redelivered: int = 0  # sends of a frame that had gone to a receiver before
    duplicate_acks: int = 0  # acknowledgements of a frame already settled
    unknown_acks: int = 0  # acknowledgements of a frame never sent
    late_acks: int = 0  # acknowledgements from a receiver that no longer held the frame (settle it)
    receivers_lost: int = 0  # connections found gone with frames or credit outstanding
    receivers_timed_out: int = 0  # evicted: held a frame past the ack timeout

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Dispatcher(Generic[P]):
    """The sender's record of every unacknowledged frame and which receiver holds it.

    The socket layer calls :meth:`hello`, :meth:`ack`, :meth:`gone` as messages and
    probes come in, :meth:`offer` for each new frame (when :attr:`has_room`), and
    :meth:`next_send` to learn what to send to whom; :meth:`expire` applies the ack
    timeout. Times are the caller's (``time.monotonic()``), so tests drive it directly.
    """

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self.peers: dict[P, _Peer] = {}
        self.frames: dict[Key, tuple[Any, int]] = {}  # frame -> (payload, events), until acknowledged
        self.queue: deque[Key] = deque()  # frames waiting for a receiver, redeliveries first
        self._queued: set[Key] = set()
        self.settled = RecentKeys(SETTLED_MEMORY * config.max_unacked)
        self.ever_sent: set[Key] = set()  # frames that went to a receiver at least once, while unsettled
        self.evicted: set[P] = set()
        self.served: set[P] = set()  # receivers that acknowledged at least one frame
        self.counts = DeliveryCounts()

    @property
    def has_room(self) -> bool:
        """Whether another frame fits the unacknowledged-frame buffer."""
        return len(self.frames) < self.config.max_unacked

    @property
    def unacked(self) -> int:
        return len(self.frames)

    def hello(self, peer: P, window: int, now: float) -> None:
        """A receiver joined asking for ``window`` frames (capped at the configured window); a repeated
        HELLO from a known receiver changes nothing."""
        if peer in self.peers or peer in self.evicted:
            return
        window = max(1, min(int(window), self.config.window))
        self.peers[peer] = _Peer(window, window, since=now)

    def offer(self, key: Key, payload: Any, events: int) -> None:
        """Take a new frame (``key``: its stream id and sequence number) to deliver; call only with room."""
        if not self.has_room:
            raise RuntimeError("the unacknowledged-frame buffer is full: wait for acknowledgements")
        if key in self.frames or key in self.settled:
            raise ValueError(f"frame {key} was offered before")
        self.frames[key] = (payload, events)
        self.queue.append(key)
        self._queued.add(key)
        self.counts.sent += 1

    def next_send(self, now: float) -> tuple[P, Key, Any] | None:
        """(receiver, key, payload) of the next frame to send, or None (nothing queued, or no credit).

        The receiver's credit is taken and the frame recorded as held by it."""
        while self.queue and self.queue[0] not in self.frames:  # settled while queued (a late ack)
            self._queued.discard(self.queue.popleft())
        if not self.queue:
            return None
        ready = [(p, s) for p, s in self.peers.items() if s.credit > 0]
        if not ready:
            return None
        peer, state = max(ready, key=lambda ps: (ps[1].credit, -ps[1].since))
        key = self.queue.popleft()
        self._queued.discard(key)
        state.credit -= 1
        state.in_flight[key] = now
        if key in self.ever_sent:
            self.counts.redelivered += 1
        self.ever_sent.add(key)
        self.counts.dispatched += 1
        return peer, key, self.frames[key][0]

    def ack(self, peer: P, key: Key, now: float) -> str:
        """One acknowledgement; "ok", "duplicate", "unknown" or "late" (each counted, none raises)."""
        state = self.peers.get(peer)
        if key in self.settled:
            self.counts.duplicate_acks += 1
            return "duplicate"
        if key not in self.frames:
            self.counts.unknown_acks += 1
            return "unknown"
        if state is not None and key in state.in_flight:
            del state.in_flight[key]
            state.credit += 1
            state.since = now
            outcome = "ok"
        else:  # an evicted or forgotten receiver finished it after all: settled, whoever else holds it
            self.counts.late_acks += 1
            outcome = "late"
            for other in self.peers.values():
                if other.in_flight.pop(key, None) is not None:
                    other.credit += 1
        self._settle(key)
        if state is not None:
            state.acked += 1
        self.served.add(peer)
        return outcome

    def _settle(self, key: Key) -> None:
        del self.frames[key]
        self.ever_sent.discard(key)
        self.settled.add(key)
        self.counts.acked += 1

    def gone(self, peer: P) -> int:
        """A receiver's connection is gone: its frames go back to the front of the queue; how many."""
        state = self.peers.pop(peer, None)
        if state is None:
            return 0
        self.counts.receivers_lost += 1
        return self._requeue(state)

    def expire(self, now: float) -> list[P]:
        """Evict every receiver holding a frame longer than the ack timeout; its frames are queued again."""
        limit = now - self.config.ack_timeout_s
        stale = [p for p, s in self.peers.items() if s.in_flight and min(s.in_flight.values()) < limit]
        for peer in stale:
            state = self.peers.pop(peer)
            self.evicted.add(peer)
            self.counts.receivers_timed_out += 1
            self._requeue(state)
        return stale

    def _requeue(self, state: _Peer) -> int:
        keys = sorted(s for s in state.in_flight if s in self.frames and s not in self._queued)
        self.queue.extendleft(reversed(keys))
        self._queued.update(keys)
        return len(keys)

    def held_by(self, peer: P) -> int:
        """Frames ``peer`` holds unacknowledged (0 for an unknown or departed receiver)."""
        state = self.peers.get(peer)
        return len(state.in_flight) if state is not None else 0

    @property
    def done(self) -> bool:
        """Every frame offered has been acknowledged."""
        return not self.frames
