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
streamflow pickles nothing between ranks: structured data (stream schemas,
sequence accounts) crosses as JSON in uint8 tensors. (torchrun's own rendezvous
store does unpickle what it stores: keep its port on a trusted network.)
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterable

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

    def _reduce(self, tensor: Tensor, op: dist.ReduceOp) -> Tensor:
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
        return [json.loads(bytes(p[: int(s.item())].cpu().numpy())) for p, s in zip(parts, sizes)]


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


def init_collective(device: torch.device) -> Collective | None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT); None if alone.

    gloo on the CPU; NCCL on CUDA, with this rank on GPU ``LOCAL_RANK``.
    """
    world_size = launched_ranks()
    if world_size == 1:
        return None
    missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start the ranks with torchrun")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Collective(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def close_collective(collective: Collective | None) -> None:
    """Leave the process group (after the last collective call)."""
    if collective is not None and dist.is_initialized():
        dist.destroy_process_group()


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
