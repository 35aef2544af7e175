"""The process group, for a plain single process as for `torchrun` or `deepspeed` launches."""

from __future__ import annotations

import importlib
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


class RankError(RuntimeError):
    """Another rank's failure, with its message, where its own exception class cannot be rebuilt here."""


def raise_if_any_rank_failed(error: Exception | None) -> None:
    """Returns if no rank failed; otherwise raises on every rank: `error` where it is set, elsewhere the failing
    rank's message (the lowest one's), as its own class where `cls(message)` rebuilds it, else as `RankError`.

    Every rank must call it after a step that may fail on some ranks only (a collective: it also waits for
    the others), so that none is left waiting in the next collective for a rank that has stopped.
    """
    failure = None if error is None else (type(error).__module__, type(error).__qualname__, str(error))
    failures = [failure]
    if dist.is_initialized() and dist.get_world_size() > 1:
        failures = [None] * dist.get_world_size()
        dist.all_gather_object(failures, failure)  # plain strings: any exception's description pickles
    if error is not None:
        raise error
    for failed_rank, failure in enumerate(failures):
        if failure is not None:
            raised = _rebuilt(*failure)
            raised.add_note(f"(the error of rank {failed_rank}, raised on every rank)")
            raise raised


def _rebuilt(module: str, name: str, message: str) -> Exception:
    """An exception of the class `module.name` with `message`, or a `RankError` where that class is not importable
    here or not built from its message alone."""
    try:
        cls = importlib.import_module(module)
        for part in name.split("."):
            cls = getattr(cls, part)
        rebuilt = cls(message)
    except Exception:  # a class local to a function, or one built from other arguments
        return RankError(message)
    # A class that formats its argument (KeyError quotes it) would show another message.
    return rebuilt if isinstance(rebuilt, Exception) and str(rebuilt) == message else RankError(message)


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
