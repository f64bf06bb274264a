"""The frame journal: which frames a process handled since its last checkpoint.

A process that checkpoints every N frames loses, when it is killed, the work of
the frames it handled after its last checkpoint. To say *which* frames those
were, it appends one line per handled frame -- ``stream_id seq events sent`` (sent:
the frame's selected events pushed downstream) -- to a journal, and empties the
journal after each checkpoint. Each line is one
``write`` system call on an ``O_APPEND`` file: it is in the kernel's page cache
when the call returns, so it survives ``kill -9`` of the process (not a power
cut, which needs an fsync per frame). A torn last line is ignored when read.
"""

from __future__ import annotations

import os
from pathlib import Path


class FrameJournal:
    """Append-only record of handled frames, emptied at each checkpoint."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def read(self) -> dict[int, dict[int, int]]:
        """stream id -> {seq: events} of every complete line in the journal."""
        return self.read_file(self.path)

    @staticmethod
    def read_file(path: Path, column: int = 2) -> dict[int, dict[int, int]]:
        """stream id -> {seq: events} of every complete line in the journal at ``path``.

        ``column`` 3 gives the events sent downstream instead (0 on a line of an older
        journal, which had three columns)."""
        frames: dict[int, dict[int, int]] = {}
        for line in path.read_bytes().split(b"\n")[:-1]:  # the part after the last newline is torn
            fields = line.split()
            if len(fields) in (3, 4) and all(f.isdigit() for f in fields):
                values = [*map(int, fields), 0]
                frames.setdefault(values[0], {})[values[1]] = values[column]
        return frames

    def record(self, stream_id: int, seq: int, events: int, sent: int = 0) -> None:
        os.write(self._fd, f"{stream_id} {seq} {events} {sent}\n".encode())

    def clear(self) -> None:
        os.ftruncate(self._fd, 0)

    def close(self) -> None:
        os.close(self._fd)
