"""The library's error types.

Every error a user can cause (a bad file, a bad option, a bad frame on the wire)
is a :class:`StreamflowError`: the command line prints its message as one line
and exits non-zero, never with a traceback.
"""


class StreamflowError(Exception):
    """A problem the user can fix; its message is one line that names it."""


class ConfigError(StreamflowError):
    """An option, a TOML config or a checkpoint that does not fit."""


class SourceError(StreamflowError):
    """An event source that cannot be opened or read."""


class WireError(StreamflowError):
    """A message on the wire that does not decode to a valid frame."""
