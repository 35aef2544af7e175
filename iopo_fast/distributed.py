"""The process group, for a plain single process as for `torchrun` or `deepspeed` launches."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def init_distributed() -> torch.device:
    """Join (or, for a plain process, create) the process group; returns this rank's device.

    NCCL on CUDA, gloo elsewhere. The launchers set RANK, WORLD_SIZE and the rendezvous address; a
    process started without them is a world of one on a free local port.
    """
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(free_port()))
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`values` reduced over all ranks (a new tensor; `op` is "sum" or "max")."""
    values = values.clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        reduced = values.to(device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        values = reduced.to(values.device)
    return values


def rank_batches(num_items: int, batch_size: int):
    """This rank's share of `range(num_items)` (strided), in batches: yields (indices, own), where the
    first `own` indices of the batch are this rank's and the rest repeat one of them.

    Every rank gets the same number of batches of the same sizes, ceil(num_items / world size) items:
    collectives such as ZeRO-3's parameter gathering need the same forwards on all ranks, so a short
    share repeats an item, whose result the caller drops.
    """
    shard = list(range(rank(), num_items, world_size()))
    per_rank = -(-num_items // world_size())
    own = len(shard)
    shard += (shard or [0])[-1:] * (per_rank - own)
    for start in range(0, len(shard), batch_size):
        indices = shard[start : start + batch_size]
        yield indices, min(len(indices), max(own - start, 0))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
