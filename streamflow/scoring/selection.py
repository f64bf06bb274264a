"""What a scorer sends to the sink for one frame: its accepted events and every line's score of them.

One SELECTION message per frame, empty ones too (the sink counts frames by them):
the frame's events that at least one trigger line recorded, their trigger bits
(bit i of ``bits``: line i, in menu order, recorded the event; of ``passed``: the
event passed line i's threshold, recorded or not after its prescale -- an event
that only passed is not sent) and an L-column score matrix (line i's
learner's score of each accepted event, NaN = not scored or a zero-bias line), stamped with the
frame's stream id, sequence number and the producer's send time, so the sink's
latency and sequence account follow the original frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from streamflow.events.batch import EventBatch
from streamflow.scoring.frame_scorer import FrameResult
from streamflow.stream.wire import encode_selection
from streamflow.trigger import LineConfig


def selection_parts(batch: EventBatch, result: FrameResult, lines: Sequence[LineConfig], *,
                    seq: int, stream_id: int, send_ns: int) -> tuple[list[Any], int]:
    """(the SELECTION message's parts, accepted events) of one scored frame."""
    accepted = np.flatnonzero(result.selection.accept)
    if lines:
        line_scores = np.column_stack([result.scores[line.learner][accepted] if line.kind == "score"
                                       else np.full(len(accepted), np.nan) for line in lines]).astype(np.float32)
    else:
        line_scores = np.zeros((len(accepted), 0), np.float32)
    parts = encode_selection(batch.take(accepted), result.selection.bits[accepted], line_scores,
                             tuple(line.name for line in lines), seq=seq, stream_id=stream_id, send_ns=send_ns,
                             passed=result.selection.passed[accepted])
    return parts, len(accepted)
