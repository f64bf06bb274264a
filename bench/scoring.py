"""The learners' scoring path: which way of running it is fastest, measured against the current path in one process.

The scorer scores every event of every frame with every learner, so the score call is the part
of the work that must keep up with the input. Each variant below is timed against the current
path, ``learner.evaluate(x)`` under ``torch.no_grad()`` (what ``learner.score`` runs),
on the same frame, rounds interleaved (baseline, then variant); ratio = baseline time / variant
time (min over rounds each): above 1 the variant is faster.

=================  ==========================================================================
variant            what runs
=================  ==========================================================================
inference_mode     ``learner.evaluate(x)`` under ``torch.inference_mode()``: no autograd graph,
                   as no_grad, and no version counters or view tracking on the tensors it
                   makes (its outputs cannot be modified in place outside inference mode)
compile            ``torch.compile(learner.evaluate)`` (inductor; ``mode="reduce-overhead"``,
                   CUDA graphs, on CUDA), under inference_mode; the compile time (first call)
                   is its own column and not in the ratio. ``--no-compile`` leaves it out
batched flows      the menu's two flows (``flow_m``, ``flow_logm``: the same architecture in
                   two frames) in one call: their weights stacked
                   (``torch.func.stack_module_state``) and ``log_prob`` vmapped over the pair,
                   the same per-flow standardisation, log sigma and NaN mask around it;
                   baseline: the two flows' ``evaluate`` one after the other
=================  ==========================================================================

Scores: "max |diff|" is the largest difference of a variant's scores from the baseline's
(NaN where the baseline has NaN, else finite, checked); 0 means bit-identical. The zuko
backend against nflows on the same path is measured by ``python -m bench.pipeline --only
backends`` (and by ``python -m bench.gpu``).

CPU threads: 1 unless --threads (the tests' and hot-path benchmarks' setting).

    python -m bench.scoring [--quick] [--device auto|cpu|cuda] [--threads N] [--no-compile] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from bench import hotpaths, quantile
from streamflow.learners import FlowLearner, TorchLearner
from streamflow.scoring.frame_scorer import resolve_device

SIZES = (4096, 65536)
QUICK_SIZES = (4096,)
PAIR = ("flow_m", "flow_logm")
"""The menu's two flows, batched in one call by the ``batched flows`` variant."""


@dataclass(frozen=True)
class Variant:
    """One variant of the scoring path against the no_grad baseline, at one frame size."""

    learner: str
    variant: str
    device: str
    frame_size: int
    baseline_events_per_s: float
    events_per_s: float
    ratio: float  # baseline time / variant time: > 1 is faster
    max_diff: float  # largest |variant score - baseline score|, 0 = bit-identical
    compile_s: float  # first call (compilation) of the compile variant; 0 otherwise


Scores = Tensor | list[Tensor]
"""One learner's scores, or a list of them (the batched flows)."""


def no_grad(fn: Callable[[], Scores]) -> Callable[[], Scores]:
    def call() -> Scores:
        with torch.no_grad():
            return fn()
    return call


def inference(fn: Callable[[], Scores]) -> Callable[[], Scores]:
    def call() -> Scores:
        with torch.inference_mode():
            return fn()
    return call


def on_host(fn: Callable[[], Scores]) -> Callable[[], list[Tensor]]:
    """The call with its scores brought to the host (so a CUDA time is complete), as a list."""
    def call() -> list[Tensor]:
        out = fn()
        return [t.cpu() for t in (out if isinstance(out, list) else [out])]
    return call


def max_diff(ours: list[Tensor], base: list[Tensor]) -> float:
    """Largest |ours - base| over the events; inf if the NaN patterns differ."""
    worst = 0.0
    for a, b in zip(ours, base, strict=True):
        if not torch.equal(torch.isnan(a), torch.isnan(b)):
            return math.inf
        finite = ~torch.isnan(b)
        if finite.any():
            worst = max(worst, (a[finite].double() - b[finite].double()).abs().max().item())
    return worst


class _LogProb(nn.Module):
    """A flow's ``log_prob`` as a module's forward, for ``functional_call`` (parameter names "density.*")."""

    def __init__(self, density: nn.Module) -> None:
        super().__init__()
        self.density = density

    def forward(self, z: Tensor, c: Tensor | None) -> Tensor:
        return self.density.log_prob(z, c)  # type: ignore[operator]


class BatchedFlows:
    """Flows of one architecture scored in one call: weights stacked, ``log_prob`` vmapped over them.

    score_i = -(log p_i(z_i | c_i) - sum_j log sigma_ij), NaN where a column the flow reads is
    not finite: the same as each flow's ``evaluate`` (conditional flows without
    ``model_coordinates``, which is what the menu's two flows are). The stacked weights are a
    copy: taken once here, as a scorer would refresh them after each learning step."""

    def __init__(self, flows: list[FlowLearner]) -> None:
        if any(f.context is None or f.config.model_coordinates is not None for f in flows):
            raise ValueError("batched flows: conditional flows without model_coordinates only")
        self.flows = flows
        wrapped = [_LogProb(f.scoring_model) for f in flows]
        self.params, self.buffers = stack_module_state(wrapped)
        self.template = wrapped[0]

    def _log_prob(self, params: dict[str, Tensor], buffers: dict[str, Tensor], z: Tensor, c: Tensor) -> Tensor:
        return functional_call(self.template, {**params, **buffers}, (z, c))

    def __call__(self, x: Tensor) -> list[Tensor]:
        z = torch.stack([f.inputs(x) for f in self.flows])
        c = torch.stack([f.context(x) for f in self.flows if f.context is not None])
        log_p = torch.vmap(self._log_prob)(self.params, self.buffers, z, c)
        out = []
        for flow, lp in zip(self.flows, log_p, strict=True):
            scores = (flow.inputs.log_scale - lp).float()
            finite = torch.isfinite(x.index_select(1, flow._used_columns())).all(dim=1)
            out.append(torch.where(finite, scores, torch.full_like(scores, math.nan)))
        return out


def timed(learner: str, variant: str, device: torch.device, n: int, baseline: Callable[[], list[Tensor]],
          target: Callable[[], list[Tensor]], rounds: int, compile_s: float = 0.0) -> Variant:
    """Interleaved rounds of baseline and target (both already called once), and their scores' difference."""
    timing = hotpaths.measure(hotpaths.Case(f"{variant}_{learner}", target, baseline, device.type), rounds, warmup=1)
    base, ours = min(timing.baseline_s), min(timing.target_s)
    return Variant(learner, variant, device.type, n, n / base, n / ours, base / ours,
                   max_diff(target(), baseline()), compile_s)


def variants(n: int, device: torch.device, rounds: int, compile_too: bool) -> list[Variant]:
    """Every variant of the module docstring at frames of n events, for the lhco preset's network learners."""
    x = torch.from_numpy(hotpaths.lhco_frames(n, 1, seed=2)[0].features).to(device)
    learners: dict[str, TorchLearner] = {}
    rows = []
    for config in hotpaths.network_learners():
        learner = learners[config.name] = hotpaths.warm_learner(config, n, device)
        evaluate = partial(learner.evaluate, x)
        baseline = on_host(no_grad(evaluate))
        rows.append(timed(config.name, "inference_mode", device, n, baseline, on_host(inference(evaluate)), rounds))
        if compile_too:
            compiled = torch.compile(learner.evaluate, dynamic=False,
                                     mode="reduce-overhead" if device.type == "cuda" else None)
            target = on_host(inference(partial(compiled, x)))
            t0 = time.perf_counter()
            target()
            rows.append(timed(config.name, "compile", device, n, baseline, target, rounds, time.perf_counter() - t0))
    pair = [learners[name] for name in PAIR]
    flows = [learner for learner in pair if isinstance(learner, FlowLearner)]
    batched = BatchedFlows(flows)
    baseline = on_host(no_grad(lambda: [flow.evaluate(x) for flow in flows]))
    rows.append(timed("+".join(PAIR), "batched flows", device, n, baseline, on_host(no_grad(lambda: batched(x))),
                      rounds))
    return rows


def print_variants(rows: list[Variant]) -> None:
    print(quantile._table("\nscoring path variants vs no_grad (events/s of the best round; ratio = baseline time / "
                          "variant time, > 1 faster)", rows, [
        ("learner", "learner", ""), ("variant", "variant", ""), ("device", "device", ""),
        ("frame", "frame_size", ","), ("no_grad ev/s", "baseline_events_per_s", ",.0f"),
        ("variant ev/s", "events_per_s", ",.0f"), ("ratio", "ratio", ".3f"), ("max |diff|", "max_diff", ".1e"),
        ("compile s", "compile_s", ".1f")]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"frames of {QUICK_SIZES[0]:,} only, fewer rounds")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it compiles for minutes)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"streamflow scoring-path benchmark, {hotpaths.machine()}, torch threads {torch.get_num_threads()}, "
          f"device {device}")
    rows = [row for n in (QUICK_SIZES if args.quick else SIZES)
            for row in variants(n, device, 5 if args.quick else 20, not args.no_compile)]
    print_variants(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
