"""Online CATHODE and ANODE: the composite learners, their validation on background-only streams, their configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import stats

from streamflow.analysis.coordinate_study import auc_standard_error
from streamflow.config import from_dict
from streamflow.distributed import Collective, weights_digest
from streamflow.errors import ConfigError
from streamflow.events import EventBatch, open_source
from streamflow.learners import AnodeLearner, CathodeLearner, build_learner, learner_config, learner_from_state
from streamflow.learners.cathode import Gate
from streamflow.metrics import auc
from streamflow.scoring.frame_scorer import FrameScorer, ScorerConfig
from tests.helpers import free_port_block, streamflow

FRAME = 4096
SR = (3300.0, 3700.0)
FAKE_SR = {"signal_region": [3100.0, 3300.0], "sidebands": [[2900.0, 3100.0], [3300.0, 3500.0]]}
"""A signal region where the default CATHODE has its low sideband: an interpolation check on its own."""


def frames(n_events: int, signal_fraction: float = 0.0, seed: int = 3) -> list[EventBatch]:
    source = open_source("synthetic", signal_fraction=signal_fraction, seed=seed)
    return [batch for _, batch in zip(range(n_events // FRAME), source.chunks(FRAME), strict=False)]


def closure_auc(learner: CathodeLearner, held_out: torch.Tensor) -> tuple[float, float, int]:
    """The closure AUC (SR data vs as many fresh flow samples), its DeLong error, the SR events behind it."""
    data, samples = learner.closure_logits(held_out)
    labels = np.r_[np.ones(len(data)), np.zeros(len(samples))]
    values = np.r_[data.numpy(), samples.numpy()]
    return auc(labels, values), auc_standard_error(labels, values), len(data)


# --- closure, interpolation and no sculpting on a background-only stream -------------------------------------

@pytest.fixture(scope="module")
def background_run() -> dict:
    """300k background-only synthetic events through CATHODE (SR 3.3-3.7 TeV and a fake SR at 3.1-3.3 TeV),
    ANODE and their trigger lines (q = 5%, window 2,000), test-then-train; 40k later events held out."""
    stream = frames(340_000)
    held_out = torch.from_numpy(np.concatenate([b.features for b in stream[-10:]]))
    config = from_dict(ScorerConfig, {
        "learners": [{"kind": "cathode", "name": "cathode"}, {"kind": "cathode", "name": "fake", **FAKE_SR},
                     {"kind": "anode", "name": "anode"}],
        "lines": [{"name": name, "learner": name, "accept": 0.05, "window": 2000} for name in ("cathode", "anode")],
        "device": "cpu", "threads": 1})
    scorer = FrameScorer(config)
    aucs: dict[str, list[tuple[int, float, float, int]]] = {"cathode": [], "fake": []}
    mjj, accepted, scores = [], {"cathode": [], "anode": []}, {"cathode": [], "anode": []}
    for i, batch in enumerate(stream[:-10]):
        result = scorer.process(batch)
        mjj.append(batch.column("mjj"))
        for line in accepted:
            bit = np.uint64(1 << [c.name for c in config.lines].index(line))
            accepted[line].append((result.selection.bits & bit) > 0)
            scores[line].append(result.scores[line])
        if i % 5 == 4:
            for name in aucs:
                learner = scorer.learners[name]
                assert isinstance(learner, CathodeLearner)
                if learner.gate.open:
                    aucs[name].append((i, *closure_auc(learner, held_out)))
    return {"scorer": scorer, "aucs": aucs, "mjj": np.concatenate(mjj),
            "accepted": {k: np.concatenate(v) for k, v in accepted.items()},
            "scores": {k: np.concatenate(v) for k, v in scores.items()}}


@pytest.mark.parametrize("name", ["cathode", "fake"])
def test_cathode_closure_auc_stays_at_one_half_after_the_gate_opens(background_run: dict, name: str) -> None:
    """No signal: the classifier cannot tell SR data from the sideband flow's interpolated samples -- in the
    default SR and in a fake one placed where the default sidebands are. Each check's AUC (on 40k held-out
    events: ~4,000-6,000 SR events a side, DeLong error 0.005-0.006) lies within 0.5 +- (0.03 + 2 errors), and
    their mean, whose statistical error is smaller, within 0.5 +- 0.03: a model error of a few percent in AUC
    passes, a classifier that learnt the flow's artefacts (0.53-0.54 in identity coordinates) does not."""
    learner = background_run["scorer"].learners[name]
    assert learner.gate.open and 0 < learner.gate.opened_at < 100_000
    aucs = background_run["aucs"][name]
    assert len(aucs) >= 3, aucs
    for frame, value, error, n in aucs:
        assert n > 3000
        assert abs(value - 0.5) < 0.03 + 2 * error, f"frame {frame}: closure AUC {value:.3f} +- {error:.3f}"
    mean = float(np.mean([value for _, value, _, _ in aucs]))
    assert abs(mean - 0.5) < 0.03, f"mean closure AUC {mean:.3f} over {len(aucs)} checks"


def test_one_event_with_an_absurd_loss_does_not_hold_the_gate_shut() -> None:
    """On the real LHCO file a learning flow gave one tail event 6e18 nats: the block's mean loss jumped and
    kept the gate shut; the block median settles as the bulk does."""
    gate, generator = Gate(), torch.Generator().manual_seed(0)
    for frame in range(4):  # two blocks of two frames
        losses = 7.0 + 0.5 * torch.randn(2500, generator=generator, dtype=torch.float64)
        losses[0] = 3e18 * (1 + frame)
        gate.observe(losses, lambda values: values, 5000, 0.05, learnt=40_000 + frame, needed=30_000)
    assert gate.open and gate.opened_at == 40_003
    assert gate.last_block == pytest.approx(7.0, abs=0.05)
    resumed = Gate.from_state({"open": False, "block_sum": 1e19, "block_events": 1899, "last_block": 3e15,
                               "opened_at": -1})  # a checkpoint from before the median
    assert resumed.block_events == 0 and resumed.last_block == 3e15


def test_the_background_flow_never_learns_a_signal_region_event(background_run: dict) -> None:
    for name in ("cathode", "fake"):
        learner = background_run["scorer"].learners[name]
        assert learner.background.totals.events > 40_000
        assert learner.background.forbidden_events == 0
        assert learner.classifier.totals.events > 5_000  # the classifier learnt SR events once the gate opened
    anode = background_run["scorer"].learners["anode"]
    assert isinstance(anode, AnodeLearner)
    assert anode.background.forbidden_events == 0 and anode.signal_region.forbidden_events == 0
    assert anode.signal_region.totals.events > 30_000


@pytest.mark.parametrize("line", ["cathode", "anode"])
def test_lines_score_only_signal_region_events_and_do_not_sculpt_mjj(background_run: dict, line: str) -> None:
    mjj, scores, accepted = background_run["mjj"], background_run["scores"][line], background_run["accepted"][line]
    in_sr = (mjj >= SR[0]) & (mjj < SR[1])
    assert not np.isfinite(scores[~in_sr]).any()
    scored = np.isfinite(scores)
    assert scored.sum() > 10_000
    assert not (accepted & ~scored).any()
    # The accepted events' mjj has the shape of every scored SR event's (KS, 500-2,000 accepted): no bump.
    # Raw ANODE R failed this at KS D = 0.10 (p ~ 1e-13): its spread grows across the SR.
    assert accepted.sum() > 300
    ks = stats.ks_2samp(mjj[accepted], mjj[scored])
    assert ks.pvalue > 0.01, f"{line}: accepted mjj differs from the SR's (KS D = {ks.statistic:.3f})"


# --- a small stream: the lines judge early -----------------------------------------------------------------

def test_cathode_and_anode_score_signal_region_events_early_in_a_small_stream() -> None:
    """Default options on 10 frames (41k events, ~5k sideband events: CATHODE's gate, needing 30,000, stays
    shut): both score every SR event, as per-mass-slice quantiles (z ~ N(0, 1) in every slice), and nothing
    outside the SR -- CATHODE by its classifier learning SR data against the sidebands from the second frame
    (its first calibrated one), ANODE from the frame after its 1,000-event warm-up (the second or third)."""
    stream = frames(10 * FRAME, signal_fraction=0.01)
    learners = [build_learner(learner_config({"kind": kind, "name": kind})) for kind in ("cathode", "anode")]
    slices = np.linspace(*SR, 9)
    for learner in learners:
        learner.bind(stream[0].names)
    first_scored = {}
    for i, batch in enumerate(stream):
        x, mjj = torch.from_numpy(batch.features), batch.column("mjj")
        in_sr = (mjj >= SR[0]) & (mjj < SR[1])
        for learner in learners:
            scores = learner.score(x).numpy()
            assert not np.isfinite(scores[~in_sr]).any()
            if np.isfinite(scores).any():
                first_scored.setdefault(learner.name, i)
                assert np.isfinite(scores[in_sr]).all()
                if i == len(stream) - 1:  # calibrated: every slice's median near 0, spread near 1
                    index = np.digitize(mjj[in_sr], slices) - 1
                    medians = [np.median(scores[in_sr][index == b]) for b in range(8)]
                    assert np.abs(medians).max() < 0.5, medians
                    assert 0.8 < np.std(scores[in_sr]) < 1.25
            learner.learn(x)
    cathode = learners[0]
    assert isinstance(cathode, CathodeLearner) and not cathode.gate.open
    assert first_scored["cathode"] == 1 and first_scored["anode"] <= 2, first_scored


def test_before_its_gate_cathode_finds_signal_by_the_sidebands_not_by_its_density() -> None:
    """A small stream at 5% signal (12 frames: the gate stays shut). With ``before_gate = "sidebands"`` (the
    default) the classifier learns SR data against sideband events -- CWoLA's background -- and finds the
    resonance on held-out SR events; with "density" the line scores by -log p_bkg and the classifier idles.
    The flow learns sideband events only either way."""
    stream = frames(14 * FRAME, signal_fraction=0.05, seed=5)
    train, test = stream[:12], stream[12:]
    learners = {mode: build_learner(learner_config({"kind": "cathode", "name": mode, "before_gate": mode}))
                for mode in ("sidebands", "density")}
    for learner in learners.values():
        learner.bind(stream[0].names)
        for batch in train:
            learner.learn(torch.from_numpy(batch.features))
    x = torch.from_numpy(np.concatenate([b.features for b in test]))
    labels = np.concatenate([b.labels for b in test])
    aucs = {}
    for mode, learner in learners.items():
        assert isinstance(learner, CathodeLearner) and not learner.gate.open
        assert learner.background.forbidden_events == 0
        scores = learner.score(x).numpy()
        scored = np.isfinite(scores)
        aucs[mode] = auc(labels[scored], scores[scored])
    assert learners["sidebands"].classifier.class_counts[0] > 5_000  # sideband events learnt against
    assert learners["density"].classifier.totals.events == 0
    assert aucs["sidebands"] > 0.65 and aucs["sidebands"] > aucs["density"] + 0.1, aucs


# --- checkpoint, resume, ranks ------------------------------------------------------------------------------

SMALL = {"warmup_events": 500, "gate_events": 500, "gate_block": 500, "gate_tolerance": 100.0, "batch_size": 512}


@pytest.mark.parametrize("kind", ["cathode", "anode"])
def test_a_checkpoint_resumes_the_composite_exactly(kind: str, tmp_path: Path) -> None:
    stream = frames(10 * FRAME, signal_fraction=0.01)
    options = SMALL if kind == "cathode" else {"warmup_events": 500, "batch_size": 512}
    learner = build_learner(learner_config({"kind": kind, "name": kind, **options}))
    learner.bind(stream[0].names)
    for batch in stream[:6]:
        learner.learn(torch.from_numpy(batch.features))
    torch.save(learner.state_dict(), tmp_path / "learner.pt")
    resumed = learner_from_state(torch.load(tmp_path / "learner.pt", weights_only=True))
    resumed.bind(stream[0].names)
    torch.manual_seed(7)  # both draw the same flow samples from here on
    x = torch.from_numpy(stream[6].features)
    before = learner.score(x)
    assert torch.isfinite(before).sum() > 300
    torch.testing.assert_close(resumed.score(x), before, equal_nan=True)
    assert resumed.totals == learner.totals
    if isinstance(learner, CathodeLearner):
        assert isinstance(resumed, CathodeLearner)
        assert resumed.gate == learner.gate and learner.gate.open
        assert torch.equal(resumed.masses.counts, learner.masses.counts)


def test_a_checkpoint_of_other_bands_is_refused() -> None:
    learner = build_learner(learner_config({"kind": "cathode", "name": "c"}))
    other = build_learner(learner_config({"kind": "cathode", "name": "c", **FAKE_SR}))
    with pytest.raises(ConfigError, match="checkpoint has sidebands"):
        other.load_state_dict(learner.state_dict())


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(rank)  # the ranks draw different flow samples: the steps must still agree
        collective = Collective(rank, 2, torch.device("cpu"))
        learners = [build_learner(learner_config({"kind": "cathode", "name": "c", **SMALL})),
                    build_learner(learner_config({"kind": "anode", "name": "a", "warmup_events": 500}))]
        stream = frames(8 * FRAME, signal_fraction=0.01)
        for learner in learners:
            learner.bind(stream[0].names)
            learner.distribute(collective)
        for batch in stream:
            x = torch.from_numpy(batch.features).chunk(2)[rank]
            for learner in learners:
                learner.learn(x)
        cathode = learners[0]
        assert isinstance(cathode, CathodeLearner)
        torch.save({"digest": weights_digest(learner.model for learner in learners), "gate": cathode.gate.open,
                    "classifier_steps": cathode.classifier.totals.steps, "events": cathode.background.totals.events},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_one_cathode_and_one_anode(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(free_port_block(1), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["gate"] and ranks[0]["classifier_steps"] > 0
    sideband = sum(((b.column("mjj") >= 3100) & (b.column("mjj") < 3300)).sum()
                   + ((b.column("mjj") >= 3700) & (b.column("mjj") < 3900)).sum()
                   for b in frames(8 * FRAME, signal_fraction=0.01))
    assert ranks[0]["events"] == sideband  # the background flow learnt every rank's sideband events


# --- configuration errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"sidebands": [[3100.0, 3400.0], [3700.0, 3900.0]]}, "overlap the signal_region"),
    ({"signal_region": [-200.0, 100.0], "sidebands": [[-300.0, -200.0], [100.0, 200.0]]}, "outside the data"),
    ({"oversample": 0}, "oversample"),
    ({"before_gate": "flow"}, "before_gate: 'flow' is not one of 'sidebands', 'density'"),
    ({"features": ["mjj", "mjmin"]}, "must not be an input feature"),
])
def test_bad_cathode_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        learner_config({"kind": "cathode", **options})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("toml, message", [
    ('[[scorer.learners]]\nkind = "cathode"\nname = "cathode"\noversample = 0\n\n'
     '[[scorer.lines]]\nname = "cathode"\nlearner = "cathode"\naccept = 0.01\n', "oversample"),
    ('[[scorer.learners]]\nkind = "cathode"\nname = "cathode"\nsidebands = [[3100.0, 3400.0], [3700.0, 3900.0]]\n',
     "overlap the signal_region"),
    ('[scorer.scan]\nkinds = ["cwola", "cathode"]\nlow = -100.0\n', "outside the data"),
])
def test_a_toml_with_a_bad_cathode_or_scan_option_fails_in_one_line(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "run.toml"
    config.write_text(toml)
    result = streamflow("run", "--config", str(config), "--no-monitor", "--events", "4096", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
