"""The learner protocol: test-then-train, robustness to bad frames, checkpoints, configs."""

from __future__ import annotations

import io
import math
import tomllib

import numpy as np
import pytest
import torch

from streamflow.errors import ConfigError
from streamflow.events import GaussianToy
from streamflow.learners import (
    FlowLearner,
    TorchLearner,
    build_learner,
    learner_config,
    learner_from_state,
)

TOY = GaussianToy(dim=3, seed=7)
NAMES = TOY.names  # x0, x1, x2, sample
CWOLA_TOY = {"region_feature": "sample", "signal_region": [0.5, 1.5], "sideband": [-0.5, 1.5]}
SMALL = {"warmup_events": 500, "batch_size": 256}

CONFIGS = {
    "flow-affine": {"kind": "flow", "features": ["x0", "x1"], "hidden": 16},
    "flow-spline-conditional": {
        "kind": "flow", "features": ["x0", "x1"], "context": "x2", "transform": "spline", "hidden": 16,
    },
    "flow-zuko-spline": {"kind": "flow", "features": ["x0", "x1"], "backend": "zuko", "transform": "spline"},
    "flow-zuko-affine-conditional": {"kind": "flow", "features": ["x0", "x1"], "backend": "zuko", "context": "x2"},
    "cwola": {"kind": "cwola", "features": ["x0", "x1", "x2"], **CWOLA_TOY},
    "autoencoder": {"kind": "autoencoder", "features": ["x0", "x1", "x2"], "coordinates": "tanh_shift"},
}  # fmt: skip


def frame(n: int = 2000, seed: int = 0) -> torch.Tensor:
    """n toy events (x0, x1, x2, sample) as a float32 tensor."""
    return torch.from_numpy(next(GaussianToy(dim=3, seed=seed).chunks(n)).features)


def make(name: str, **overrides) -> TorchLearner:
    learner = build_learner(learner_config({**CONFIGS[name], **SMALL, **overrides}))
    learner.bind(NAMES)
    return learner


def weights(learner: TorchLearner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.model.parameters()]


@pytest.mark.parametrize("name", CONFIGS)
def test_score_then_learn(name: str) -> None:
    learner = make(name)
    x, later = frame(seed=1), frame(seed=2)
    before = learner.score(x)
    assert before.dtype == torch.float32 and before.shape == (len(x),) and not before.requires_grad
    kept = before.clone()
    later_before = learner.score(later)
    # Scoring has no side effects: the same frame scores the same, the state is untouched.
    state = {k: v.clone() for k, v in learner.model.state_dict().items()}
    assert torch.equal(learner.score(x), before)
    assert all(torch.equal(v, learner.model.state_dict()[k]) for k, v in state.items())

    stats = learner.learn(x)
    assert stats["steps"] > 0 and stats["skipped"] == 0 and stats["dropped"] == 0
    assert math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])
    after = learner.score(x)
    scored = ~torch.isnan(before)
    assert scored.any()
    assert not torch.allclose(after[scored], before[scored]), "learning did not change the scores"
    assert torch.equal(before, kept), "learn() modified scores returned before it"
    assert not torch.allclose(learner.score(later)[scored], later_before[scored])


@pytest.mark.parametrize("name", CONFIGS)
def test_non_finite_rows_are_dropped_and_weights_stay_finite(name: str) -> None:
    learner = make(name)
    learner.learn(frame(seed=1))  # warm-up: the standardisation freezes on clean events
    x = frame(seed=3)
    x[:10, 0] = float("nan")
    x[10:20, 1] = float("inf")
    x[20:25, 2] = -float("inf")
    stats = learner.learn(x)
    # Rows with a non-finite value in a column the learner reads are dropped (x2 is read by
    # the conditional flows as context, and by CWoLA and the autoencoder as an input).
    reads_x2 = "x2" in learner.config.features or getattr(learner.config, "context", None) == "x2"
    assert stats["dropped"] == 20 + 5 * reads_x2
    assert stats["steps"] > 0 and math.isfinite(stats["loss"])
    assert all(torch.isfinite(w).all() for w in weights(learner))
    scores = learner.score(x)
    assert torch.isnan(scores[:20]).all()  # a NaN or inf input is not scored as anything else


@pytest.mark.parametrize("name", CONFIGS)
def test_an_empty_frame_learns_nothing(name: str) -> None:
    learner = make(name)
    empty = frame()[:0]
    stats = learner.learn(empty)
    assert (stats["steps"], stats["events"], stats["skipped"]) == (0, 0, 0)
    assert learner.score(empty).shape == (0,)


@pytest.mark.parametrize("name", CONFIGS)
def test_a_step_with_non_finite_loss_is_skipped(name: str) -> None:
    learner = make(name, coordinates="identity")  # tanh would map the huge values to 1
    learner.learn(frame(seed=1))
    before = weights(learner)
    x = frame(n=300, seed=4)
    x[:, :3] = 3e38  # finite inputs whose loss or gradient overflows
    stats = learner.learn(x)
    after = weights(learner)
    assert all(torch.isfinite(w).all() for w in after)
    if stats["skipped"]:
        assert stats["steps"] == 0
        assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True)), "a skipped step touched the weights"
    else:  # a bounded loss (CWoLA's cross-entropy saturates): the clipped step is harmless
        assert learner.config.kind == "cwola"


def test_skipped_steps_are_counted_and_leave_weights_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    learner = make("autoencoder")
    learner.learn(frame(seed=1))
    before = weights(learner)
    monkeypatch.setattr(type(learner), "_loss", lambda self, model, z: model(z).sum() * float("nan"))
    stats = learner.learn(frame(seed=2))
    assert stats["steps"] == 0 and stats["skipped"] == math.ceil(2000 / SMALL["batch_size"])
    assert math.isnan(stats["loss"])
    assert all(torch.equal(a, b) for a, b in zip(weights(learner), before, strict=True))
    assert learner.totals.skipped == stats["skipped"]


@pytest.mark.parametrize("name", CONFIGS)
def test_checkpoint_round_trip_gives_identical_scores(name: str) -> None:
    learner = make(name)
    for seed in (1, 2):
        learner.learn(frame(seed=seed))
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = make(name)
    fresh.load_state_dict(state)
    x = frame(seed=5)
    assert torch.equal(fresh.score(x), learner.score(x))
    assert fresh.totals == learner.totals

    loaded = learner_from_state(state)  # rebuilt from the config inside the checkpoint (streamflow sample)
    loaded.bind(NAMES)
    assert torch.equal(loaded.score(x), learner.score(x))


def test_checkpoint_of_another_config_is_refused() -> None:
    state = make("flow-affine").state_dict()
    with pytest.raises(ConfigError, match="hidden"):
        make("flow-affine", hidden=32).load_state_dict(state)
    with pytest.raises(ConfigError, match="coordinates"):
        make("flow-affine", coordinates="normal_cdf").load_state_dict(state)
    with pytest.raises(ConfigError, match="'flow' learner"):
        make("autoencoder").load_state_dict(state)
    with pytest.raises(ConfigError, match="not a streamflow learner checkpoint"):
        make("flow-affine").load_state_dict({"weights": 1})
    # Training options may change when resuming; the new learning rate applies.
    resumed = make("flow-affine", lr=1e-4)
    resumed.load_state_dict(state)
    assert resumed.optimizer.param_groups[0]["lr"] == 1e-4


@pytest.mark.parametrize("state", [b"not a checkpoint", {"weights": 1}, {"config": {"kind": "gan"}}])
def test_a_state_that_is_no_learner_is_refused(state) -> None:
    with pytest.raises(ConfigError, match="not a learner checkpoint|kind must be one of"):
        learner_from_state(state, where="ckpt")


def test_bind_names_the_missing_feature() -> None:
    learner = build_learner(learner_config({"kind": "flow", "features": ["x0", "mjmin"]}))
    with pytest.raises(ConfigError, match="'mjmin'"):
        learner.bind(NAMES)
    cwola = build_learner(learner_config({"kind": "cwola", "features": ["x0"]}))  # region feature mjj
    with pytest.raises(ConfigError, match="'mjj'"):
        cwola.bind(NAMES)
    with pytest.raises(RuntimeError, match="bind"):
        learner.score(frame())
    bound = make("flow-affine")
    with pytest.raises(ConfigError, match="4 columns"):
        bound.score(torch.zeros(5, 3))


def test_configs_from_toml() -> None:
    text = """
    [flow]
    kind = "flow"
    features = ["mjmin", "delta_m", "tau21_jmin", "tau21_jmax"]
    context = "mjj"
    coordinates = "log_mass"
    transform = "spline"
    train_where = { feature = "mjj", low = 3300.0, high = 3700.0, outside = true }

    [cwola]
    kind = "cwola"
    signal_region = [3300, 3700]
    """
    tables = tomllib.loads(text)
    flow = learner_config(tables["flow"])
    assert flow.kind == "flow" and flow.context == "mjj" and flow.train_where.outside
    assert flow.features == ("mjmin", "delta_m", "tau21_jmin", "tau21_jmax")
    cwola = learner_config(tables["cwola"])
    assert cwola.signal_region == (3300.0, 3700.0) and cwola.sideband == (3100.0, 3900.0)
    assert build_learner(flow).name == "flow-log_mass"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"features": ["x0"]}, "kind must be one of"),
        ({"kind": "gan"}, "kind must be one of"),
        ({"kind": "flow", "hiden": 3}, "unknown key 'hiden'"),
        ({"kind": "flow", "coordinates": "polar"}, "unknown coordinates 'polar'"),
        ({"kind": "flow", "backend": "pyro"}, "'pyro' is not one of"),
        ({"kind": "flow", "lr": -1.0}, "lr must be > 0"),
        ({"kind": "flow", "features": ["a", "a"]}, "listed twice"),
        ({"kind": "flow", "context": "mjmin"}, "also an input"),
        ({"kind": "cwola", "features": ["mjj", "mjmin"]}, "must not be an input"),
        ({"kind": "cwola", "signal_region": [3000.0, 3700.0]}, "inside"),
        ({"kind": "autoencoder", "bottleneck": 0}, "widths must be >= 1"),
        ({"kind": "flow", "ema_decay": 1.0}, "ema_decay"),
        ({"kind": "flow", "train_where": {"feature": "mjj", "low": 2.0, "high": 1.0}}, "below high"),
    ],
)
def test_bad_configs_name_the_problem(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        learner_config(table)


def test_cwola_learns_only_from_its_sideband_and_scores_nan_outside() -> None:
    learner = make("cwola")
    x = frame(seed=1)
    x[:100, 3] = 5.0  # outside the sideband [-0.5, 1.5) of the region feature
    stats = learner.learn(x)
    assert stats["events"] == len(x) - 100
    in_sr = int(((x[:, 3] >= 0.5) & (x[:, 3] < 1.5)).sum())
    assert learner.class_counts == [len(x) - 100 - in_sr, in_sr]
    scores = learner.score(x)
    assert torch.isnan(scores[:100]).all() and torch.isfinite(scores[100:]).all()


def test_train_where_selects_the_events_learnt_from() -> None:
    learner = make("flow-affine", train_where={"feature": "sample", "low": -0.5, "high": 0.5})
    x = frame(seed=1)
    stats = learner.learn(x)
    assert stats["events"] == int((x[:, 3] == 0).sum())
    assert torch.isfinite(learner.score(x)).all()  # every event is scored
    outside = make("flow-affine", train_where={"feature": "sample", "low": -0.5, "high": 0.5, "outside": True})
    assert outside.learn(x)["events"] == int((x[:, 3] == 1).sum())


def test_standardisation_freezes_after_the_warm_up() -> None:
    learner = make("autoencoder", warmup_events=3000)
    learner.learn(frame(seed=1))
    assert not learner.inputs.frozen
    learner.learn(frame(seed=2))
    assert learner.inputs.frozen and learner.inputs.count == 4000
    frozen = learner.inputs.state_dict()
    learner.learn(frame(seed=3) * 10)
    assert torch.equal(learner.inputs.state_dict()["mean"], frozen["mean"])
    # The moments are those of the in_coordinates events seen (batched merge = one pass).
    y = torch.tanh(torch.cat([frame(seed=1), frame(seed=2)])[:, :3].double() + 2)
    assert torch.allclose(frozen["mean"], y.mean(0), atol=1e-5)
    assert torch.allclose((frozen["m2"] / 3999).sqrt(), y.std(0), atol=1e-5)


def test_flow_samples_come_back_in_physical_units() -> None:
    # Log-normal "masses": Gaussian in the log_mass frame, where the flow learns.
    names = ("mj1", "mj2")
    learner = build_learner(
        learner_config({"kind": "flow", "features": list(names), "coordinates": "log_mass", **SMALL})
    )
    learner.bind(names)
    masses = torch.exp(frame(n=20000, seed=1)[:, :2] * 0.3) * torch.tensor([100.0, 500.0])
    for chunk in masses.split(2000):
        learner.learn(chunk)
    samples = learner.sample(4000)
    assert samples.shape == (4000, 2) and samples.dtype == np.float32
    assert (samples > 0).all()
    assert np.allclose(np.median(samples, 0), masses.median(0).values.numpy(), rtol=0.1)
    with pytest.raises(ConfigError, match="not conditional"):
        learner.sample(3, np.ones(3))


def test_flow_samples_outside_a_bounded_frame_are_redrawn() -> None:
    learner = make("flow-affine", coordinates="tanh_shift")
    for seed in range(10):
        learner.learn(frame(seed=seed))
    samples = learner.sample(2000)
    assert np.isfinite(samples).all()  # atanh of a sample beyond (-1, 1) would be NaN
    assert (np.abs(samples) > 1).mean() > 0.1  # x, not y = tanh(x + 2)


def test_conditional_flow_sample_needs_one_context_per_sample() -> None:
    learner = make("flow-spline-conditional")
    learner.learn(frame(seed=1))
    assert learner.sample(5, np.linspace(-1, 1, 5)).shape == (5, 2)
    with pytest.raises(ConfigError, match="give context"):
        learner.sample(5)
    with pytest.raises(ConfigError, match="3 context values for 5"):
        learner.sample(5, np.ones(3))


def test_model_frame_reports_the_density_in_the_frame() -> None:
    """A flow learning in x and reporting in y = tanh(x + 2) scores -log p_Y(y) = -log p_X(x) + log|dy/dx|."""
    in_x = make("flow-affine")
    in_y = make("flow-affine", coordinates="tanh_shift", model_coordinates="identity")
    assert isinstance(in_y, FlowLearner) and in_y.coordinates == "tanh_shift"
    for seed in (1, 2):
        x = frame(seed=seed)
        in_x.learn(x)
        in_y.learn(x)
    x = frame(seed=3)
    jacobian = torch.log(1 - torch.tanh(x[:, :2].double() + 2) ** 2).sum(1)
    assert torch.allclose(in_y.score(x).double(), in_x.score(x).double() + jacobian, atol=1e-4, rtol=1e-5)
