"""Reading pandas "fixed" HDF5 tables with h5py only (no pandas, no PyTables at run time).

The LHC Olympics files are pandas ``DataFrame.to_hdf(..., format="fixed")`` stores:
a group (key ``df`` in the official files, but any name is accepted) holding

    axis0             the column names (bytes, or integers for the raw file)
    axis1             the row index
    block{k}_items    the columns stored in block k
    block{k}_values   float[n_rows, len(items)], the values of those columns

This module finds such a group, maps column names to (block, position), and reads
row ranges of chosen columns, so that a source never holds a whole big file in
memory. Every failure is a one-line :class:`SourceError` naming the file, and so
is a file that changes size while it is read (HDF5 would hand back fill values for
rows past a truncation instead of failing).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc filter 32001 that the raw LHCO file uses)
import numpy as np

from streamflow.errors import SourceError


def open_hdf5(path: Path) -> h5py.File:
    """``path`` opened read-only; SourceError for a missing, non-HDF5 or damaged file."""
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if path.is_dir():
        raise SourceError(f"{path}: is a folder, not an HDF5 file")
    try:
        if not h5py.is_hdf5(path):
            raise SourceError(f"{path}: not an HDF5 file")
        return h5py.File(path, "r")
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read as HDF5, truncated or damaged ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _file_size(file: h5py.File) -> int:
    """Bytes of the open file now (fstat of its descriptor: a truncation shows, a rename does not)."""
    return os.fstat(file.id.get_vfd_handle()).st_size


def _decode(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class H5Table:
    """A pandas "fixed" table inside an open HDF5 file."""

    path: Path
    file: h5py.File
    group: str
    columns: tuple[str, ...]
    n_rows: int
    _where: dict[str, tuple[str, int]]  # column -> (values dataset, position in it)
    size: int  # bytes of the open file when the table was found

    @staticmethod
    def find(path: Path, file: h5py.File) -> H5Table:
        """The first group with ``axis0`` and ``block0_values``; SourceError if there is none."""
        groups: list[str] = []
        file.visititems(
            lambda name, obj: groups.append(name)
            if isinstance(obj, h5py.Group) and "axis0" in obj and "block0_values" in obj
            else None
        )
        if "axis0" in file and "block0_values" in file:
            groups.insert(0, "/")
        if not groups:
            raise SourceError(
                f"{path}: HDF5 file without a pandas table (no group with axis0 and block0_values): not an LHCO file"
            )
        group = file[groups[0]]
        try:
            columns = tuple(_decode(v) for v in group["axis0"][()])
            where: dict[str, tuple[str, int]] = {}
            n_rows = None
            k = 0
            while f"block{k}_values" in group:
                values = group[f"block{k}_values"]
                items = [_decode(v) for v in group[f"block{k}_items"][()]] if f"block{k}_items" in group else columns
                if values.ndim != 2 or values.shape[1] != len(items):
                    raise SourceError(
                        f"{path}: table block {k} has shape {list(values.shape)} for {len(items)} columns")
                if n_rows is not None and values.shape[0] != n_rows:
                    raise SourceError(f"{path}: table blocks have different row counts")
                n_rows = values.shape[0]
                for i, name in enumerate(items):
                    where[name] = (values.name, i)
                k += 1
        except (OSError, KeyError, ValueError) as exc:
            raise SourceError(f"{path}: damaged table in group {groups[0]!r} ({_short(exc)})") from None
        return H5Table(path, file, groups[0], columns, int(n_rows or 0), where, _file_size(file))

    def has(self, names: Sequence[str]) -> bool:
        return all(n in self._where for n in names)

    def read(self, start: int, stop: int, names: Sequence[str]) -> np.ndarray:
        """Rows [start, stop) of the columns ``names``, as float64[rows, len(names)]."""
        out = np.empty((stop - start, len(names)), dtype=np.float64)
        by_block: dict[str, list[tuple[int, int]]] = {}
        for j, name in enumerate(names):
            dataset, i = self._where[name]
            by_block.setdefault(dataset, []).append((j, i))
        try:
            size = _file_size(self.file)
            if size != self.size:
                raise SourceError(f"{self.path}: the file changed while being read (size {self.size} -> {size} "
                                  f"bytes at rows {start}-{stop})")
            for dataset, pairs in by_block.items():
                values = self.file[dataset][start:stop]
                if len(values) != stop - start:
                    raise SourceError(f"{self.path}: rows {start}-{stop} missing, the file is truncated")
                if len(pairs) == values.shape[1] == len(names) and all(j == i for j, i in pairs):
                    return values.astype(np.float64, copy=False)  # every column, in file order
                out[:, [j for j, _ in pairs]] = values[:, [i for _, i in pairs]]
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"{self.path}: cannot read rows {start}-{stop}, truncated or damaged ({_short(exc)})"
            ) from None
        return out
