"""The plain computation of response log-probs through the LM head: all the logits at once.

What `logprob_impl: full_logits` runs: the original implementation's computation, at its cost (a
`[T x vocabulary]` fp32 tensor).
"""

from __future__ import annotations

import torch


def full_logits_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """log_softmax(hidden @ weight^T)[targets] from the full logits, 0 where targets == ignore_index.

    Computed in at least fp32 (float64 inputs stay float64).
    """
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    logits = hidden.to(dtype) @ weight.to(dtype).T
    keep = targets != ignore_index
    picked = logits.log_softmax(-1).gather(-1, torch.where(keep, targets, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, picked, 0.0)
