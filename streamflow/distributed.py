"""Data-parallel scorers: K ranks that keep one model by summing across ranks.

``torchrun --nproc-per-node K ... consume`` starts K scorer processes; each pulls
its own frames (ZeroMQ fair-queues them), scores them with its copy of the
learners, and learns from them. The copies stay one model because every rank
takes the same optimizer steps from the same gradient:

    g = (sum_r w_r g_r) / (sum_r w_r)

where g_r is rank r's mean gradient over its minibatch of the step and w_r that
minibatch's weight (its events, or for CWoLA the sum of the class weights that
normalise its loss; a rank without events that step adds zeros). Everything else
that shapes a step is agreed too -- the warm-up moments of the standardisation
and the CWoLA class counts are summed, the number of minibatches is the largest
any rank has -- so after every step the weights are bit-identical on all ranks
(checked at the end of a run from their digest). A parameter no rank has a
gradient for gets a zero gradient (Adam's momentum still moves it, as it would
not alone; no learner here has such parameters).

This module holds the collective operations only; :class:`Collective` wraps an
initialised ``torch.distributed`` process group (gloo on the CPU, NCCL on CUDA).
A scorer on its own holds a :class:`SoloCollective` (rank 0 of 1), whose every
operation is the identity and touches no tensor: callers never ask "am I
data-parallel?" to sum, gather or wait, and one process pays nothing for it.
streamflow pickles nothing between ranks: structured data (stream schemas,
sequence accounts) crosses as JSON in uint8 tensors. (torchrun's own rendezvous
store does unpickle what it stores: keep its port on a trusted network.)
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from streamflow.errors import ConfigError


@dataclass(frozen=True)
class Collective:
    """This process's place among the ranks, and the sums and gathers they do together.

    Every method is collective: all ranks must call it, in the same order, with
    tensors of the same shape.
    """

    rank: int
    world_size: int
    device: torch.device

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it."""
        return self._reduce(tensor, dist.ReduceOp.SUM)

    def max_(self, tensor: Tensor) -> Tensor:
        """Element-wise maximum over the ranks, in place; returns it."""
        return self._reduce(tensor, dist.ReduceOp.MAX)

    def _reduce(self, tensor: Tensor, op: dist.ReduceOp.RedOpType) -> Tensor:
        if tensor.device == self.device:
            dist.all_reduce(tensor, op=op)
            return tensor
        staged = tensor.to(self.device)
        dist.all_reduce(staged, op=op)
        return tensor.copy_(staged)

    def sum_counts(self, counts: np.ndarray) -> np.ndarray:
        """Sum an int64 array over the ranks (the trigger's histogram windows); a new array."""
        return self.sum_(torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int64)).clone()).cpu().numpy()

    def barrier(self) -> None:
        """Wait until every rank has arrived here."""
        dist.barrier()

    def totals(self, values: Iterable[float]) -> list[float]:
        """Sums over the ranks of a few numbers (counts), as floats."""
        return self.sum_(torch.tensor(list(values), dtype=torch.float64)).tolist()

    def gather_json(self, value: Any) -> list[Any]:
        """Every rank's JSON-able ``value``, in rank order (sent as UTF-8 bytes, never pickled)."""
        raw = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([raw.numel()], dtype=torch.int64, device=self.device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        padded[: raw.numel()] = raw.to(self.device)
        parts = [torch.empty(longest, dtype=torch.uint8, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return [json.loads(bytes(p[: int(s.item())].cpu().numpy())) for p, s in zip(parts, sizes, strict=True)]

    def largest(self, local: int) -> int:
        """The largest of the ranks' ``local`` counts (e.g. minibatches in a step)."""
        return int(self.max_(torch.tensor([local], dtype=torch.int64)).item())

    def pooled_moments(self, y: Tensor, center: Tensor) -> tuple[int, Tensor, Tensor]:
        """(n, mean, sum of squared deviations from the mean) of the rows of ``y`` on all ranks.

        Each rank sends its count and its sums of (y - c) and (y - c)^2 about a
        ``center`` c that is the same on every rank (so the sums are exact to add):
        mean = c + S1 / n and M2 = S2 - n (S1 / n)^2, per column (float64).
        """
        shifted = y - center
        sums = self.sum_(torch.cat([torch.tensor([float(y.shape[0])], dtype=torch.float64, device=y.device),
                                    shifted.sum(dim=0), (shifted**2).sum(dim=0)]))
        n = int(round(float(sums[0])))
        k = y.shape[1]
        shift_mean = sums[1: 1 + k] / max(n, 1)
        return n, center + shift_mean, (sums[1 + k:] - n * shift_mean**2).clamp_min(0.0)

    def mean_step(self, params: list[nn.Parameter], loss: Tensor | None,
                  weight_of: Callable[..., Tensor], batch: tuple[Tensor, ...] | None) -> Tensor | None:
        """One optimizer step's gradients and loss as weighted means over the ranks' minibatches.

        ``loss`` is this rank's minibatch loss (its gradients already in ``params``), or
        None if it had no events this step; ``weight_of(*batch)`` the minibatch's weight.
        Returns the mean loss over all ranks' minibatches, or None when no rank had an
        event (every rank then skips the step alike). One all-reduce of one flat buffer.
        """
        device = params[0].device
        if loss is None or batch is None:
            weight, local_loss = torch.zeros((), device=device), torch.zeros(1, device=device)
        else:
            weight = weight_of(*batch)
            local_loss = loss.detach().reshape(1) * weight
        total, loss_sum = average_gradients(self, params, weight, extra=local_loss)
        return loss_sum[0] / total if total > 0 else None

    def close(self) -> None:
        """Leave the process group (after the last collective call)."""
        if dist.is_initialized():
            dist.destroy_process_group()


@dataclass(frozen=True)
class SoloCollective(Collective):
    """The collective of a process on its own: rank 0 of 1, every operation the identity.

    No call reaches ``torch.distributed`` and none does tensor work: a sum or a
    maximum over one rank is the value itself, a gather is the one value (through
    JSON, as the ranks' gathers are), a barrier returns at once, and a step's
    gradients and loss are already the means over "all" minibatches.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def sum_(self, tensor: Tensor) -> Tensor:
        return tensor

    def max_(self, tensor: Tensor) -> Tensor:
        return tensor

    def sum_counts(self, counts: np.ndarray) -> np.ndarray:
        return np.array(counts, dtype=np.int64)

    def barrier(self) -> None:
        return None

    def totals(self, values: Iterable[float]) -> list[float]:
        return [float(v) for v in values]

    def gather_json(self, value: Any) -> list[Any]:
        return [json.loads(json.dumps(value))]

    def largest(self, local: int) -> int:
        return local

    def pooled_moments(self, y: Tensor, center: Tensor) -> tuple[int, Tensor, Tensor]:
        n = y.shape[0]
        if n == 0:
            return 0, center, torch.zeros_like(center)
        mean = y.mean(dim=0)
        return n, mean, ((y - mean) ** 2).sum(dim=0)

    def mean_step(self, params: list[nn.Parameter], loss: Tensor | None,
                  weight_of: Callable[..., Tensor], batch: tuple[Tensor, ...] | None) -> Tensor | None:
        return loss

    def close(self) -> None:
        return None


def average_gradients(collective: Collective, params: list[nn.Parameter], weight: Tensor,
                      extra: Tensor) -> tuple[float, Tensor]:
    """Replace each gradient by the weighted mean over the ranks; (total weight, summed ``extra``).

    The caller's gradients are means over its minibatch of total ``weight`` (its
    events, or the sum of their loss weights; zero: no gradient, counted as zeros);
    ``extra`` (e.g. the loss times the weight) is summed alongside, so a step costs
    one all-reduce of one flat buffer.
    """
    device, dtype = params[0].device, params[0].dtype
    weight = weight.to(device, dtype).reshape(1)
    flat = [p.grad.reshape(-1) * weight if p.grad is not None else torch.zeros(p.numel(), device=device, dtype=dtype)
            for p in params]
    buffer = collective.sum_(torch.cat(flat + [extra.to(device, dtype).reshape(-1), weight]))
    total = float(buffer[-1])
    offset = 0
    for p in params:
        chunk = buffer[offset: offset + p.numel()].view_as(p)
        p.grad = chunk / total if total > 0 else torch.zeros_like(p)
        offset += p.numel()
    return total, buffer[offset:-1]


def weights_digest(modules: Iterable[nn.Module]) -> str:
    """SHA-256 of every parameter and buffer's bytes: equal digests mean bit-identical models."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def launched_ranks() -> int:
    """How many ranks the launcher (torchrun) started: its WORLD_SIZE, 1 without a launcher."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"WORLD_SIZE={value!r} is not a positive number of ranks")
    return int(value)


def init_collective(device: torch.device) -> Collective:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT), or a
    :class:`SoloCollective` on ``device`` without a launcher (WORLD_SIZE 1).

    gloo on the CPU; NCCL on CUDA, with this rank on GPU ``LOCAL_RANK``.
    """
    world_size = launched_ranks()
    if world_size == 1:
        return SoloCollective(device=device)
    missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start the ranks with torchrun")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Collective(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def rank_endpoint(endpoint: str, rank: int) -> str:
    """Where rank ``rank`` binds a per-rank socket given one endpoint: tcp port + 2 rank (each
    sender also takes the next port for its control socket), ipc/inproc name + "-rank<r>"."""
    if rank == 0:
        return endpoint
    if endpoint.startswith("tcp://"):
        base, _, port = endpoint.rpartition(":")
        if int(port) + 2 * rank + 1 > 65535:
            raise ConfigError(f"endpoint {endpoint!r}: rank {rank} would need port {int(port) + 2 * rank} + 1")
        return f"{base}:{int(port) + 2 * rank}"
    return f"{endpoint}-rank{rank}"


def local_group_env(ranks: int) -> list[dict[str, str]]:
    """The torchrun-style environment of each of ``ranks`` processes on this machine (a free port on
    127.0.0.1 for the rendezvous), for starting them without torchrun."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [{"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(ranks), "LOCAL_WORLD_SIZE": str(ranks),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)} for r in range(ranks)]
