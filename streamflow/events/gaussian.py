"""The Gaussian toy of the source paper, as an endless event stream.

Background x ~ N(0, I_d), signal x ~ N(1, I_d) (mean 1 in every coordinate). The
stream interleaves two samples, flagged by the last column ``sample``:

- the reference sample (sample = 0): background only;
- the data sample (sample = 1): background plus signal, signal_ratio x as much
  signal as background (signal fraction signal_ratio / (1 + signal_ratio) of it).

Each event is in the reference sample with probability ``reference_fraction``.
A CWoLA classifier trained "data vs reference" then learns a monotonic function of
the likelihood ratio p_S/p_B (Metodiev, Nachman, Thaler 2017); with exact models in
d = 2 and signal = 10% of background the paper's AUCs are 0.841 for the likelihood
ratio in every frame and 0.696 / 0.500 / 0.175 for the density score in the
identity / normal_cdf / tanh_shift frames.

Labels: 1 = signal. Event i depends only on (seed, i) (see chunking.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from streamflow.errors import ConfigError
from streamflow.events.batch import EventBatch
from streamflow.events.chunking import check_seed, generate_chunks


class GaussianToy:
    """EventSource of the Gaussian toy; endless unless ``n_events`` is given."""

    has_labels = True

    def __init__(
        self,
        dim: int = 2,
        signal_ratio: float = 0.1,
        reference_fraction: float = 0.5,
        seed: int = 0,
        n_events: int | None = None,
    ) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"gaussian toy: dim must be a positive integer, got {dim!r}")
        if not signal_ratio >= 0:
            raise ConfigError(f"gaussian toy: signal_ratio must be >= 0, got {signal_ratio!r}")
        if not 0 <= reference_fraction < 1:
            raise ConfigError(f"gaussian toy: reference_fraction must be in [0, 1), got {reference_fraction!r}")
        if n_events is not None and n_events < 0:
            raise ConfigError(f"gaussian toy: n_events must be >= 0, got {n_events!r}")
        self.dim = dim
        self.signal_ratio = float(signal_ratio)
        self.reference_fraction = float(reference_fraction)
        check_seed(seed, "gaussian toy")
        self.seed = seed
        self.n_events = n_events
        self.names: tuple[str, ...] = tuple(f"x{i}" for i in range(dim)) + ("sample",)

    @property
    def signal_fraction(self) -> float:
        """Expected fraction of signal in the whole stream (both samples)."""
        return (1.0 - self.reference_fraction) * self.signal_ratio / (1.0 + self.signal_ratio)

    def _block(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        in_data = rng.random(n) >= self.reference_fraction
        is_signal = in_data & (rng.random(n) < self.signal_ratio / (1.0 + self.signal_ratio))
        features = np.empty((n, self.dim + 1), dtype=np.float32)
        features[:, : self.dim] = rng.standard_normal((n, self.dim), dtype=np.float32)
        features[:, : self.dim] += is_signal[:, None]
        features[:, self.dim] = in_data
        return features, is_signal.astype(np.int8)

    def chunks(self, chunk_size: int) -> Iterator[EventBatch]:
        return generate_chunks(self._block, self.names, self.seed, self.n_events, chunk_size)
