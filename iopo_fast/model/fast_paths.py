"""Which fast path runs: the packed attention backend, the log-prob implementation and Liger's model
kernels, as resolved for a device and dtype; a path that was asked for and cannot run is refused."""

from __future__ import annotations

import torch

from ..kernels import check_example_chunks_supported, resolve_impl
from .attention import resolve_backend


def liger_runs(liger_kernels: bool) -> bool:
    """Whether Liger's model kernels take effect when asked for (they run on CUDA only)."""
    return liger_kernels and torch.cuda.is_available()


def resolved_paths(device: torch.device, dtype: torch.dtype, attention_backend: str,
                   logprob_impl: str) -> tuple[str, str]:
    """The attention backend and the log-prob implementation that run on `device`."""
    attention = resolve_backend(device, dtype, attention_backend)
    if logprob_impl == "full_logits":
        return attention, "full_logits"
    return attention, resolve_impl(torch.empty(0, device=device), logprob_impl)


def describe_fast_paths(device: torch.device, dtype: torch.dtype, attention_backend: str, logprob_impl: str,
                        logprob_algorithm: str, liger_kernels: bool) -> str:
    """One line naming what runs; ValueError or RuntimeError where a forced path cannot run."""
    attention, logprobs = resolved_paths(device, dtype, attention_backend, logprob_impl)
    if logprob_algorithm == "example_chunks":
        check_example_chunks_supported(device, dtype)
    return (f"packed attention {attention}, log-probs {logprobs} ({logprob_algorithm}), "
            f"Liger model kernels {'on' if liger_runs(liger_kernels) else 'off'}")
