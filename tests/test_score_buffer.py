"""The score sample keeps exactly the last N labelled events, in order, with their ids and mjj."""

import numpy as np

from streamflow.events.batch import EventBatch
from streamflow.scoring.score_buffer import ScoreBuffer


def _batch(ids: np.ndarray, labelled: bool = True, names: tuple[str, ...] = ("mjj", "mjmin")) -> EventBatch:
    features = np.column_stack([3000.0 + ids, ids * 0.5]).astype(np.float32)
    return EventBatch(ids.astype(np.uint64), features, names, (ids % 2).astype(np.int8) if labelled else None)


def test_keeps_last_events_in_stream_order_with_ids_and_mjj(tmp_path):
    sample = ScoreBuffer(("a", "b"), capacity=10)
    for start in range(0, 27, 9):
        ids = np.arange(start, start + 9)
        sample.add(_batch(ids), {"a": ids.astype(np.float32), "b": -ids.astype(np.float32)})
    sample.add(_batch(np.arange(100, 103), labelled=False), {"a": np.zeros(3), "b": np.zeros(3)})  # skipped
    got = sample.arrays()
    assert np.array_equal(got["a"], np.arange(17, 27))
    assert np.array_equal(got["b"], -np.arange(17, 27))
    assert np.array_equal(got["labels"], np.arange(17, 27) % 2)
    assert np.array_equal(got["ids"], np.arange(17, 27))
    assert np.array_equal(got["mjj"], 3000.0 + np.arange(17, 27))
    sample.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as saved:
        assert np.array_equal(saved["a"], got["a"]) and np.array_equal(saved["ids"], got["ids"])


def test_frame_larger_than_capacity_and_a_stream_without_mjj():
    sample = ScoreBuffer(("a",), capacity=4)
    sample.add(_batch(np.arange(7), names=("x0", "x1")), {"a": np.arange(7, dtype=np.float32)})
    assert np.array_equal(sample.arrays()["a"], [3, 4, 5, 6])
    assert np.isnan(sample.arrays()["mjj"]).all()
