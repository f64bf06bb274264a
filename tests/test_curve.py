"""CURVE-secured streams: `streamflow keys`, an authorised receiver served, a wrong key refused."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from producers.replay import ReplayConfig, run_replay
from streamflow.cli.main import main as streamflow_main
from streamflow.errors import ConfigError
from streamflow.events.batch import EventBatch
from streamflow.stream.acked_transport import AckedReceiver
from streamflow.stream.delivery import DeliveryConfig
from streamflow.stream.transport import Curve, Receiver, Sender
from streamflow.stream.wire import Kind
from tests.helpers import free_port_block

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """server, scorer and intruder keypairs; only scorer.key is authorised by the server."""
    for name in ("server", "scorer", "intruder"):
        assert streamflow_main(["keys", str(tmp_path / "keys"), "--name", name]) == 0
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "scorer.key").write_bytes((tmp_path / "keys" / "scorer.key").read_bytes())
    return tmp_path


def client(keys: Path, name: str) -> Curve:
    return Curve(str(keys / "keys" / f"{name}.key_secret"),
                 server_public_key_file=str(keys / "keys" / "server.key"))


def test_keys_command_writes_a_keypair_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "k"
    assert streamflow_main(["keys", str(folder), "--name", "node1"]) == 0
    public, secret = zmq.auth.load_certificate(folder / "node1.key_secret")
    assert zmq.auth.load_certificate(folder / "node1.key") == (public, None)
    assert len(public) == len(secret) == 40
    assert (folder / "node1.key_secret").stat().st_mode & 0o077 == 0
    before = (folder / "node1.key_secret").read_bytes()
    capsys.readouterr()
    assert streamflow_main(["keys", str(folder), "--name", "node1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to overwrite" in err
    assert (folder / "node1.key_secret").read_bytes() == before


def test_curve_producer_serves_an_authorised_receiver_and_refuses_a_wrong_key(ctx, keys: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    server = Curve(str(keys / "keys" / "server.key_secret"), authorized_dir=str(keys / "authorized"))
    with Sender(ctx, endpoint, curve=server) as sender, \
            Receiver(ctx, endpoint, name="intruder", curve=client(keys, "intruder")) as intruder:
        # Only a refused receiver is there: PUSH has no peer, so a frame cannot leave.
        stop = threading.Event()
        timer = threading.Timer(1.5, stop.set)
        timer.start()
        first = EventBatch(ids=np.arange(3, dtype=np.uint64), features=np.ones((3, 2), np.float32),
                           names=("a", "b"))
        assert not sender.send_batch(first, stop)
        timer.cancel()
        with Receiver(ctx, endpoint, name="scorer", curve=client(keys, "scorer")) as scorer:
            rng = np.random.default_rng(1)
            sent = [EventBatch(ids=np.arange(i * 5, i * 5 + 5, dtype=np.uint64),
                               features=rng.normal(size=(5, 2)).astype(np.float32), names=("a", "b"))
                    for i in range(4)]
            for batch in sent:
                assert sender.send_batch(batch, stop_event=None)
            for batch in sent:
                msg = scorer.recv(timeout_ms=5000)
                assert msg is not None and msg.batch is not None
                assert msg.batch.ids.tobytes() == batch.ids.tobytes()
                assert msg.batch.features.tobytes() == batch.features.tobytes()
            done = threading.Thread(target=lambda: scorer.recv(timeout_ms=5000))
            done.start()
            eos = sender.end_stream(timeout_s=5)
            done.join(timeout=6)
            assert list(eos.acks) == [f"scorer (pid {os.getpid()})"]
            assert eos.acked_events == 20
        with pytest.raises(ConfigError, match="refused this receiver's CURVE key"):
            intruder.recv(timeout_ms=1000)
        assert intruder.frames == 0


def test_replay_streams_to_a_curve_receiver(ctx, keys: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    config = ReplayConfig(source="gaussian", events=3000, frame_size=1000, endpoint=endpoint, eos_timeout=10,
                          curve=Curve(str(keys / "keys" / "server.key_secret"),
                                      authorized_dir=str(keys / "authorized")))
    result = []
    producer = threading.Thread(target=lambda: result.append(run_replay(config)))
    producer.start()
    with Receiver(ctx, endpoint, name="scorer", curve=client(keys, "scorer")) as scorer:
        kinds = []
        while not kinds or kinds[-1] != Kind.END_OF_STREAM:
            msg = scorer.recv(timeout_ms=10_000)
            assert msg is not None, "no frame within 10 s"
            kinds.append(msg.kind)
        producer.join(timeout=15)
    assert scorer.events == 3000 and kinds.count(Kind.DATA) == 3
    assert result and result[0].eos.acked_events == 3000


def test_acked_replay_serves_an_authorised_curve_receiver_and_refuses_a_wrong_key(ctx, keys: Path) -> None:
    """Acknowledged delivery under CURVE: the authorised receiver gets and acknowledges every frame, a receiver
    with a wrong key gets none and says so as the plain receiver does."""
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    config = ReplayConfig(source="gaussian", events=3000, frame_size=500, endpoint=endpoint, eos_timeout=10,
                          receivers=1, delivery=DeliveryConfig(window=2, max_unacked=2),
                          curve=Curve(str(keys / "keys" / "server.key_secret"),
                                      authorized_dir=str(keys / "authorized")))
    result = []
    producer = threading.Thread(target=lambda: result.append(run_replay(config)))
    producer.start()
    with AckedReceiver(ctx, endpoint, name="intruder", curve=client(keys, "intruder")) as intruder, \
            AckedReceiver(ctx, endpoint, name="scorer", window=2, curve=client(keys, "scorer")) as scorer:
        with pytest.raises(ConfigError, match="refused this receiver's CURVE key"):
            intruder.recv(timeout_ms=2000)
        while (msg := scorer.recv(timeout_ms=10_000)) is not None and msg.kind != Kind.END_OF_STREAM:
            scorer.acknowledge(msg.stream_id, msg.seq)
        assert msg is not None, "no frame within 10 s"
        producer.join(timeout=15)
    assert scorer.events == 3000 and scorer.frames == 6 and intruder.frames == 0
    delivery = result[0].delivery
    assert result[0].eos.acked_events == 3000 and delivery is not None
    assert delivery.acked == 6 and delivery.redelivered == 0


def test_bad_curve_configs_are_one_line_errors(keys: Path) -> None:
    secret = str(keys / "keys" / "server.key_secret")
    with pytest.raises(ConfigError, match="cannot read CURVE key file"):
        Curve(str(keys / "missing.key_secret"), authorized_dir=str(keys / "authorized"))
    with pytest.raises(ConfigError, match="holds no secret key"):
        Curve(str(keys / "keys" / "server.key"), authorized_dir=str(keys / "authorized"))
    with pytest.raises(ConfigError, match="holds no public key"):
        Curve(secret, authorized_dir=str(keys))
    with pytest.raises(ConfigError, match="not both or neither"):
        Curve(secret)
    with pytest.raises(ConfigError, match="authorised-keys folder"):
        ReplayConfig(curve=client(keys, "scorer"))


def test_replay_consume_and_sink_options_build_the_curve_configs(keys: Path, capsys) -> None:
    from streamflow.cli.common import curves_from_args
    from streamflow.cli.main import build_parser
    from streamflow.cli.replay import config_from_args

    secret, authorized = str(keys / "keys" / "server.key_secret"), str(keys / "authorized")
    args = build_parser("replay").parse_args(["replay", "--curve-secret", secret, "--curve-authorized", authorized])
    assert config_from_args(args).curve == Curve(secret, authorized_dir=authorized)
    scorer_secret = str(keys / "keys" / "scorer.key_secret")
    args = build_parser("consume").parse_args(
        ["consume", "--curve-secret", scorer_secret, "--curve-server-key", str(keys / "keys" / "server.key"),
         "--curve-authorized", authorized])
    assert curves_from_args(args) == (client(keys, "scorer"), Curve(scorer_secret, authorized_dir=authorized))
    args = build_parser("sink").parse_args(
        ["sink", "--curve-secret", scorer_secret, "--curve-server-key", str(keys / "keys" / "server.key")])
    assert curves_from_args(args) == (client(keys, "scorer"), None)
    assert streamflow_main(["consume", "--curve-secret", scorer_secret]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--curve-secret needs --curve-server-key FILE and/or --curve-authorized DIR")
    assert streamflow_main(["consume", "--curve-authorized", authorized, "--idle-timeout", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith("need --curve-secret FILE (this process's key)")


def test_a_secured_selections_socket_serves_an_authorised_sink_only(ctx, keys: Path, tmp_path: Path) -> None:
    """The scorer -> sink hop under CURVE: the authorised sink writes every selection, a wrong key gets none."""
    from consumers.scorer import ConsumeConfig
    from consumers.sink import SinkConfig, run_sink
    from streamflow.scoring.presets import preset
    from streamflow.stream.wire import encode_selection

    with pytest.raises(ConfigError, match="needs a selections endpoint"):
        ConsumeConfig(scorer=preset("gaussian"), selections_curve=Curve(
            str(keys / "keys" / "server.key_secret"), authorized_dir=str(keys / "authorized")))
    endpoint = f"tcp://127.0.0.1:{free_port_block(2)}"
    server = Curve(str(keys / "keys" / "server.key_secret"), authorized_dir=str(keys / "authorized"))
    done: list = []
    sink = threading.Thread(target=lambda: done.append(run_sink(SinkConfig(
        endpoint=endpoint, run_dir=str(tmp_path / "sink"), idle_timeout=20, curve=client(keys, "scorer")))))
    with Sender(ctx, endpoint, curve=server) as scorer, \
            Receiver(ctx, endpoint, name="intruder", curve=client(keys, "intruder")) as intruder:
        sink.start()
        batch = EventBatch(np.arange(5, dtype=np.uint64), np.ones((5, 2), np.float32), ("x0", "x1"))
        for seq in range(3):
            assert scorer.send(encode_selection(batch, np.ones(5, np.uint64), np.zeros((5, 1), np.float32),
                                                ["ae"], seq=seq, stream_id=0, send_ns=0), 5)
        scorer.end_stream(15, streams={0: (3, 15)})
        with pytest.raises(ConfigError, match="refused this receiver's CURVE key"):
            intruder.recv(timeout_ms=2000)
    sink.join(30)
    stats, ledger = done[0]
    assert stats.written == 15
    assert ledger.details["stream"]["unaccounted_frames"] == 0
