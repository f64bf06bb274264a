"""Output locations, checked when a command starts, before it does any work.

Every command that writes calls these on the folders and files its options name,
so that a location it cannot write to is one line naming the option and the
problem, at once -- not a traceback, and not after minutes of streaming. What is
checked: an existing file where a folder is expected, an existing folder where a
file is expected, and a location that cannot be written (a path under a regular
file, a read-only or virtual file system, missing permissions). Writability is
proved by creating a temporary file there, since ``os.access`` says yes to root
even on a read-only mount.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from streamflow.errors import ConfigError


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def output_folder(path: str | Path, option: str) -> Path:
    """``path`` as a folder this process can write to or create; nothing is created here.

    The nearest part of the path that exists must be a folder in which a file can be
    made: a command that then fails on another input leaves nothing behind. ``option``
    names where the path came from (``--run-dir``) in the one-line ConfigError.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {path}: is a file, not a folder")
    existing = folder.absolute()
    while not existing.exists():  # a path under a regular file does not "exist" either
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write in {existing} ({_reason(exc)})") from None
    return folder


def output_file(path: str | Path, option: str) -> Path:
    """``path`` as a file this process can create or replace (its folder may still have to be made).

    An existing file is opened for writing without changing it, to prove it can be replaced.
    """
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"{option} {path}: is a folder, not a file")
    output_folder(file.parent, f"{option} {path}: folder")
    if file.exists():
        try:
            with open(file, "r+b"):
                pass
        except OSError as exc:
            raise ConfigError(f"{option} {path}: cannot write the file ({_reason(exc)})") from None
    return file

