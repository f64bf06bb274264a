"""The reco stage in a stream: workers between a raw-frame producer and a scorer, ledgers balanced."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
import zmq

from consumers.reco import RecoWorkerConfig, run_reco_worker
from producers.replay import ReplayConfig, run_replay
from streamflow.cli.main import main as streamflow_main
from streamflow.errors import SourceError
from streamflow.events.particles import ParticleBatch
from streamflow.stream.telemetry import read_jsonl
from streamflow.stream.transport import Curve, Receiver, Sender
from streamflow.stream.wire import Kind
from tests.helpers import free_port_block, streamflow


class Collector(threading.Thread):
    """Reads a worker's feature frames until END_OF_STREAM (stands in for the scorer)."""

    def __init__(self, endpoint: str, curve: Curve | None = None) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.curve, self.ids, self.ended = endpoint, curve, [], False

    def run(self) -> None:
        ctx = zmq.Context()
        with Receiver(ctx, self.endpoint, name="collector", curve=self.curve) as receiver:
            while (msg := receiver.recv(timeout_ms=60_000)) is not None:
                if msg.kind == Kind.END_OF_STREAM:
                    self.ended = True
                    break
                self.ids.extend(msg.batch.ids.tolist())
        ctx.destroy(linger=0)


def start_worker(tmp_path: Path, base: int, curves: tuple[Curve | None, Curve | None, Curve | None] = (None,) * 3,
                 ) -> tuple[threading.Thread, dict, Collector]:
    """A worker reading port ``base``, writing ``base + 2``; curves: (worker's client, its server, the collector's)."""
    config = RecoWorkerConfig(endpoint=f"tcp://127.0.0.1:{base}", output=f"tcp://127.0.0.1:{base + 2}",
                              run_dir=str(tmp_path), name="reco-t", idle_timeout=60, curve=curves[0],
                              output_curve=curves[1])
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(out=run_reco_worker(config)), daemon=True)
    worker.start()
    collector = Collector(config.output, curves[2])
    collector.start()
    return worker, result, collector


def test_bad_frames_and_events_are_counted_and_named_and_nothing_else_is_lost(tmp_path, raw_file):
    base = free_port_block(4)
    worker, result, collector = start_worker(tmp_path, base)
    rng = np.random.default_rng(3)
    ctx = zmq.Context()
    with h5py.File(raw_file, "r") as handle:
        rows = handle["df/block0_values"][:6]
    good = ParticleBatch.from_padded(np.arange(6, dtype=np.uint64), rows[:, :2100], rows[:, 2100].astype(np.int8))
    nan = ParticleBatch(good.ids + 10, good.counts, good.pt, good.eta.copy(), good.phi, good.labels)
    nan.eta[good.offsets[2] + 3] = np.nan  # event 12
    counts = np.array([0, 1, 701, 2], dtype=np.uint32)
    odd = ParticleBatch(np.arange(20, 24, dtype=np.uint64), counts, rng.uniform(1, 50, 704), rng.normal(size=704),
                        rng.uniform(-3, 3, 704))
    odd.phi[-1] = odd.phi[-2] + np.pi  # event 23: two back-to-back particles, two jets
    with Sender(ctx, f"tcp://127.0.0.1:{base}") as sender:
        assert sender.send_particles(good)
        sender.data.send_multipart([b"SFLW\x01\x00garbage"])  # a malformed frame
        assert sender.send_particles(nan)
        assert sender.send_particles(odd)
        sender.end_stream(30)
    ctx.destroy(linger=0)
    worker.join(60)
    collector.join(60)
    stats, ledger = result["out"]
    assert stats.malformed_frames == 1 and stats.frames_in == 3 and stats.events_in == 16
    assert {k: v for k, v in stats.rejected.items() if v} == {
        "no particles": 1, "fewer than two jets": 1, "too many particles": 1, "non-finite values": 1}
    assert collector.ended and sorted(collector.ids) == [0, 1, 2, 3, 4, 5, 10, 11, 13, 14, 15, 23]
    written = json.loads((tmp_path / "ledger-reco-t.json").read_text())
    assert [s["events"] for s in written["stages"]] == [16, 12]
    assert "1 malformed frames" in written["stages"][0]["note"]
    assert "too many particles 1" in written["stages"][1]["note"]
    assert "sent 16 events in 3 frames = processed 16" in written["notes"][0]


def _damaged_copy(raw_file: Path, path: Path, bad_chunk: int) -> None:
    """The tiny raw file rewritten in 100-row chunks, chunk ``bad_chunk`` overwritten with junk."""
    with h5py.File(raw_file, "r") as src, h5py.File(path, "w") as dst:
        group = dst.create_group("df")
        for name in ("axis0", "axis1"):
            group[name] = src[f"df/{name}"][()]
        group.create_dataset("block0_values", data=src["df/block0_values"][()], chunks=(100, 2101),
                             compression="gzip")
        offset = group["block0_values"].id.get_chunk_info(bad_chunk).byte_offset
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * 4096)


def test_a_raw_file_damaged_mid_stream_ends_the_stream_cleanly(tmp_path, raw_file):
    damaged = tmp_path / "damaged.h5"
    _damaged_copy(raw_file, damaged, bad_chunk=5)
    base = free_port_block(4)
    worker, result, collector = start_worker(tmp_path, base)
    config = ReplayConfig(source=str(damaged), raw=True, frame_size=100, endpoint=f"tcp://127.0.0.1:{base}")
    with pytest.raises(SourceError, match=r"damaged.h5: cannot read rows 500-600.*stream ended after 500 events"):
        run_replay(config)
    worker.join(60)
    collector.join(60)
    stats, _ = result["out"]
    assert stats.events_in == stats.reconstructed == 500
    assert collector.ended and sorted(collector.ids) == list(range(500))


def test_a_truncated_raw_file_is_one_line_and_exit_2(tmp_path, raw_file):
    half = tmp_path / "half.h5"
    half.write_bytes(raw_file.read_bytes()[: raw_file.stat().st_size // 2])
    done = streamflow("replay", str(half), "--raw", "--endpoint", f"tcp://127.0.0.1:{free_port_block(2)}")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "half.h5: cannot be read as HDF5, truncated" in done.stderr


def test_raw_frames_need_a_raw_file(tmp_path, features_file):
    done = streamflow("replay", str(features_file), "--raw", "--endpoint", f"tcp://127.0.0.1:{free_port_block(2)}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "features file holds jet features, not the particles" in done.stderr


@pytest.mark.timeout(400)
@pytest.mark.parametrize("workers", [1, 2])
def test_streamflow_run_with_reco_workers_balances_the_ledger_end_to_end(tmp_path, raw_file, workers):
    run_dir = tmp_path / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    done = streamflow("run", "--source", str(raw_file), "--reco-workers", str(workers), "--loop", "--events", "1500",
                      "--frame-size", "250", "--learners", "cwola,ae", "--device", "cpu", "--threads", "1",
                      "--no-monitor", "--no-report", "--run-dir", str(run_dir),
                      "--base-port", str(free_port_block(7 + 2 * workers)), timeout=360)
    assert done.returncode == 0, done.stderr
    stages = {s["name"]: s["events"] for s in json.loads((run_dir / "ledger.json").read_text())["stages"]}
    assert stages["sent"] == stages["reco received"] == stages["reconstructed"] == 1500
    assert stages["received"] == stages["scored"] == 1500  # the scorer's
    per_worker = [json.loads((run_dir / f"ledger-reco-{k}.json").read_text()) for k in range(workers)]
    assert sum(w["stages"][0]["events"] for w in per_worker) == 1500
    assert all(w["stages"][0]["events"] > 0 for w in per_worker), "every worker took a share"
    scorer = json.loads((run_dir / "ledger-scorer.json").read_text())
    assert any("unaccounted frames 0" in note for note in scorer["notes"])
    for k in range(workers):  # a telemetry row per worker, its final message with its counts
        final = read_jsonl(run_dir / f"telemetry-reco-{k}.jsonl")[-1]
        assert final["role"] == f"reco-{k}" and final["events"] == per_worker[k]["stages"][0]["events"]
    assert f"by {workers} reco workers" in done.stdout


@pytest.mark.timeout(120)
def test_workers_on_other_hosts_use_curve_both_ways(tmp_path, raw_file):
    """producer (CURVE server) -> worker (client to it, server for its output) -> collector (client)."""
    keys = tmp_path / "keys"
    for name in ("producer", "worker", "collector"):
        assert streamflow_main(["keys", str(keys), "--name", name]) == 0
    admits = {}
    for server, client in (("producer", "worker"), ("worker", "collector")):
        admits[server] = tmp_path / f"{server}-admits"
        admits[server].mkdir()
        (admits[server] / f"{client}.key").write_bytes((keys / f"{client}.key").read_bytes())
    worker_client = Curve(str(keys / "worker.key_secret"), server_public_key_file=str(keys / "producer.key"))
    worker_server = Curve(str(keys / "worker.key_secret"), authorized_dir=str(admits["worker"]))
    collector = Curve(str(keys / "collector.key_secret"), server_public_key_file=str(keys / "worker.key"))
    base = free_port_block(4)
    worker, result, collected = start_worker(tmp_path, base, (worker_client, worker_server, collector))
    stats = run_replay(ReplayConfig(source=str(raw_file), raw=True, frame_size=200, events=600,
                                    endpoint=f"tcp://127.0.0.1:{base}",
                                    curve=Curve(str(keys / "producer.key_secret"),
                                                authorized_dir=str(admits["producer"]))))
    worker.join(60)
    collected.join(60)
    assert stats.events == 600 and result["out"][0].reconstructed == 600
    assert collected.ended and sorted(collected.ids) == list(range(600))
