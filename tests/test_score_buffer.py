"""The score sample keeps exactly the last N labelled events, in order."""

import numpy as np

from streamflow.scoring.score_buffer import ScoreBuffer


def test_keeps_last_events_in_stream_order(tmp_path):
    sample = ScoreBuffer(("a", "b"), capacity=10)
    for start in range(0, 27, 9):
        ids = np.arange(start, start + 9)
        sample.add((ids % 2).astype(np.int8), {"a": ids.astype(np.float32), "b": -ids.astype(np.float32)})
    sample.add(None, {"a": np.zeros(3), "b": np.zeros(3)})  # unlabelled frames are skipped
    got = sample.arrays()
    assert np.array_equal(got["a"], np.arange(17, 27))
    assert np.array_equal(got["b"], -np.arange(17, 27))
    assert np.array_equal(got["labels"], np.arange(17, 27) % 2)
    sample.save(tmp_path / "s.npz")
    assert np.array_equal(np.load(tmp_path / "s.npz")["a"], got["a"])


def test_frame_larger_than_capacity():
    sample = ScoreBuffer(("a",), capacity=4)
    sample.add(np.ones(7, np.int8), {"a": np.arange(7, dtype=np.float32)})
    assert np.array_equal(sample.arrays()["a"], [3, 4, 5, 6])
