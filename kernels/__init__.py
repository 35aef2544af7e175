"""Triton kernels of iopo-fast, installed as `iopo_fast.kernels`."""

from .fused_logprobs import fused_logprobs, resolve_impl

__all__ = ["fused_logprobs", "resolve_impl"]
