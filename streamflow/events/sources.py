"""``open_source``: one entry point for every event source.

    open_source("path/to/file.h5")   an LHCO features file or raw file (told apart by content)
    open_source("synthetic")         the LHCO-like generator (synthetic.py)
    open_source("gaussian")          the paper's Gaussian toy (gaussian.py)

Keyword options:

- ``signal_fraction``: for a labelled file, the signal fraction of the replayed stream
  (injection.py; None replays the file as it is); for "synthetic", the generator's
  signal fraction (default 1%). The Gaussian toy takes ``signal_ratio`` instead.
- ``seed``: the random seed of injection or generation (an integer >= 0).
- files: ``loop=True`` replays the file endlessly (pass p gives row r the id
  p * n_rows + r); ``features="lhco"`` or ``"raw"`` insists on a kind of content.
- generators: ``n_events`` (None: endless); "synthetic" also ``shapes`` (a table of
  :class:`SyntheticShapes` fields); "gaussian" ``dim``, ``signal_ratio``,
  ``reference_fraction``.

Errors are one line: SourceError for a file that cannot be used (missing, not
HDF5, truncated, neither LHCO layout), ConfigError for options that do not fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamflow.config import from_dict
from streamflow.errors import ConfigError, SourceError
from streamflow.events.batch import EventBatch, EventSource
from streamflow.events.chunking import check_chunk_size, check_seed, rebatch
from streamflow.events.gaussian import GaussianToy
from streamflow.events.h5table import H5Table, open_hdf5
from streamflow.events.injection import InjectedSource
from streamflow.events.lhco_features import LHCOFeaturesFile
from streamflow.events.lhco_raw import LHCORawFile, is_raw_layout
from streamflow.events.schema import LHCO_FILE_COLUMNS
from streamflow.events.synthetic import SyntheticLHCO, SyntheticShapes

GENERATOR_OPTIONS = {
    "synthetic": ("n_events", "shapes"),
    "gaussian": ("n_events", "dim", "signal_ratio", "reference_fraction"),
}
FILE_OPTIONS = ("loop", "features")
FEATURE_KINDS = ("lhco", "raw")


def _check_options(spec: str, options: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r} for source {spec!r} (known: {', '.join(known) or 'none'})"
        )


def open_source(
    spec: str, *, signal_fraction: float | None = None, seed: int = 0, **options: Any
) -> EventSource:
    """The event source named by ``spec`` (see the module docstring)."""
    check_seed(seed, f"source {spec!r}")
    if spec in GENERATOR_OPTIONS:
        _check_options(spec, options, GENERATOR_OPTIONS[spec])
        if spec == "synthetic":
            shapes = from_dict(SyntheticShapes, options.pop("shapes", {}), where="shapes")
            fraction = 0.01 if signal_fraction is None else signal_fraction
            return SyntheticLHCO(signal_fraction=fraction, seed=seed, shapes=shapes, **options)
        if signal_fraction is not None:
            raise ConfigError("the gaussian toy takes signal_ratio (signal / background in its data sample), "
                              "not signal_fraction")  # fmt: skip
        return GaussianToy(seed=seed, **options)
    _check_options(spec, options, FILE_OPTIONS)
    if not Path(spec).exists():
        raise SourceError(f"{spec}: no such file (a source is an HDF5 file path, 'synthetic' or 'gaussian')")
    source: Any = open_file(Path(spec), features=options.get("features"))
    if signal_fraction is not None:
        source = InjectedSource(source, signal_fraction, seed=seed)
    if options.get("loop", False):
        source = LoopedSource(source)
    return source


def open_file(path: Path, features: str | None = None) -> LHCOFeaturesFile | LHCORawFile:
    """An LHCO features or raw file, told apart by its columns; ``features`` insists on one kind."""
    if features not in (None, *FEATURE_KINDS):
        raise ConfigError(f"features must be one of {', '.join(FEATURE_KINDS)}, got {features!r}")
    table = H5Table.find(path, open_hdf5(path))
    if table.has(LHCO_FILE_COLUMNS):
        if features == "raw":
            raise SourceError(f"{path}: a features file holds jet features, not the particles asked for")
        return LHCOFeaturesFile(table)
    if is_raw_layout(table.columns):
        if features == "lhco":
            raise SourceError(
                f"{path}: a raw particle file; LHCO jet features need reconstruction: run it as a pipeline stage "
                "(streamflow run --reco-workers K) or use the matching features file"
            )
        return LHCORawFile(table)
    shown = ", ".join(table.columns[:6]) + (", ..." if len(table.columns) > 6 else "")
    raise SourceError(f"{path}: HDF5 table with neither LHCO layout (features or raw); its columns: {shown}")


class LoopedSource:
    """A finite file source replayed endlessly; pass p gives row r the id p * n_rows + r."""

    n_events: int | None = None

    def __init__(self, source: Any) -> None:
        if source.n_events == 0:
            raise SourceError(f"{getattr(source, 'path', 'source')}: no events to loop over")
        self._source = source
        self.names = source.names
        self.has_labels = source.has_labels
        self.n_rows = source.n_rows

    @property
    def n_nonfinite_dropped(self) -> int:
        return self._source.n_nonfinite_dropped

    def _passes(self) -> Iterator[EventBatch]:
        n_pass = 0
        while True:
            offset = n_pass * self.n_rows
            for batch in self._source.chunks(1 << 16):
                yield EventBatch(batch.ids + offset, batch.features, batch.names, batch.labels)
            n_pass += 1

    def chunks(self, chunk_size: int) -> Iterator[EventBatch]:
        check_chunk_size(chunk_size)
        return rebatch(self._passes(), chunk_size)
