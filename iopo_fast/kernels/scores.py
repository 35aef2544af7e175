"""Sequence scores: per-token response log-probs summed per (example, role), `s_k` of DESIGN.md.

Shared by the LM-head kernels (`iopo_fast.kernels`), the preference model and the benchmarks.
"""

from __future__ import annotations

from typing import Callable

import torch

# example_losses(scores [b, num_roles] fp32, examples: the slice of the batch's examples they belong to)
# -> per-example losses [b], differentiable in the scores.
ExampleLosses = Callable[[torch.Tensor, slice], torch.Tensor]


def sequence_sums(logp: torch.Tensor, segment_ids: torch.Tensor, num_examples: int, num_roles: int) -> torch.Tensor:
    """The sums of `logp` [T] over segments `segment_ids` (example * num_roles + role), fp32
    [num_examples, num_roles], differentiable. Summed in float64: a sequence score adds hundreds of fp32
    terms, and the sum is cheap."""
    sums = logp.new_zeros(num_examples * num_roles, dtype=torch.float64).index_add_(0, segment_ids, logp.double())
    return sums.float().view(num_examples, num_roles)
