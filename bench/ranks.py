"""Scorer throughput with 1 and with K data-parallel ranks (torchrun), same stream, same machine.

For each rank count the bench starts ``torchrun --nproc-per-node K -m streamflow.cli.main
consume`` (with K = 1 torchrun still launches it, so both sides pay the same start-up and
the single rank runs the ordinary, collective-free loop) and one producer replaying the
synthetic LHCO stream at its maximum rate into it, then reads the scorer's ledger: the
merged one of rank 0 for K > 1. Throughput = events processed / (last frame done - first
frame arrived), over all ranks. Rank counts alternate over ``--rounds`` rounds; the table
shows the best round of each and the speed-up over 1 rank, measured in this session.

On CPU the ranks share the machine's cores: each rank gets ``--threads`` torch threads
(default: cores // K, so every configuration uses the same cores). What K ranks can gain
is the work they split (scoring, and the forward/backward of each step on 1/K of the
events); what they add is one all-reduce of every learner's gradient per minibatch step, a
few small sums per frame, and lock-step rounds. With ``--device cuda`` each rank takes GPU
LOCAL_RANK (NCCL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.helpers import REPO, STREAMFLOW, free_port_block


@dataclass(frozen=True)
class RankRun:
    """One run of the stream through K ranks."""

    ranks: int
    threads: int
    events: int
    seconds: float
    weights_identical: bool | None

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def run_ranks(ranks: int, threads: int, events: int, frame_size: int, preset: str, device: str,
              workdir: Path) -> RankRun:
    """Stream ``events`` through ``ranks`` scorer ranks; their combined processing rate."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"ranks{ranks}-", dir=workdir))
    port = free_port_block(4)
    endpoint = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    scorers = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port + 2}",
         "-m", "streamflow.cli.main", "consume", "--preset", preset, "--endpoint", endpoint, "--device", device,
         "--threads", str(threads), "--hwm", "8", "--checkpoint-every", "0", "--run-dir", str(run_dir)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    source = "gaussian" if preset == "gaussian" else "synthetic"
    producer = subprocess.run(
        [*STREAMFLOW, "replay", source, "--events", str(events), "--frame-size", str(frame_size), "--hwm", "8",
         "--eos-timeout", "600", "--endpoint", endpoint], cwd=REPO, env=env, capture_output=True, text=True)
    output, _ = scorers.communicate(timeout=1200)
    if producer.returncode or scorers.returncode:
        raise SystemExit(f"{ranks} ranks failed:\n{producer.stderr[-2000:]}\n{output[-3000:]}")
    ledger = json.loads((run_dir / "ledger-scorer.json").read_text())
    first, last = ledger["busy"]
    return RankRun(ranks=ranks, threads=threads, events=ledger["stages"][0]["events"], seconds=last - first,
                   weights_identical=ledger.get("weights_identical"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ranks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts to compare (default 1 2)")
    parser.add_argument("--events", type=int, default=400_000, help="events per run (default 400000)")
    parser.add_argument("--frame-size", type=int, default=4096, help="events per frame (default 4096)")
    parser.add_argument("--preset", default="lhco", help="scorer preset (default lhco)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank (default cores // K)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per rank count (default 2)")
    parser.add_argument("--json", metavar="PATH", help="also write the runs as JSON")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    runs: list[RankRun] = []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.rounds):
            for ranks in args.ranks:
                threads = args.threads or max(1, cores // ranks)
                runs.append(run_ranks(ranks, threads, args.events, args.frame_size, args.preset, args.device,
                                      Path(workdir)))
                print(f"  {ranks} rank(s) x {threads} thread(s): {runs[-1].rate:,.0f} events/s", flush=True)
    best = {k: max((r for r in runs if r.ranks == k), key=lambda r: r.rate) for k in args.ranks}
    base = best[min(args.ranks)].rate
    print(f"\n{args.events:,d} events of {args.preset}, frames of {args.frame_size}, device {args.device}, "
          f"{cores} cores, best of {args.rounds} rounds ({time.strftime('%Y-%m-%d')})")
    print(f"{'ranks':>6}{'threads/rank':>14}{'events/s':>12}{'vs ' + str(min(args.ranks)):>8}  weights identical")
    for k, run in best.items():
        same = "-" if run.weights_identical is None else ("yes" if run.weights_identical else "NO")
        print(f"{k:>6}{run.threads:>14}{run.rate:>12,.0f}{run.rate / base:>8.2f}  {same}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) | {"rate": r.rate} for r in runs], indent=2))


if __name__ == "__main__":
    main()
