"""Triton kernels of iopo-fast, installed as `iopo_fast.kernels`."""

from .example_chunked_loss import example_chunked_loss
from .fused_logprobs import fused_logprobs, resolve_impl

__all__ = ["example_chunked_loss", "fused_logprobs", "resolve_impl"]
