"""The pure-PyTorch twin of the fused log-prob kernel (DESIGN.md, "Naive paths and CPU testing").

Same contract as `fused_logprobs`: logp[t] = log_softmax(h[t] W^T)[y[t]] in fp32, 0 for ignored rows.
Rows are processed in chunks of at most `max_chunk_logits` logits, so the [T, V] logits never exist;
the forward keeps only the inputs and the per-row log-sum-exp, the backward recomputes each chunk.
Everything is computed in fp32: a bf16 weight is upcast once per pass, O(V D) memory, never O(T V).
"""

from __future__ import annotations

import torch

# fp32 logits per chunk when the caller gives no bound: 1 GiB on a GPU (the products stay large enough to
# run near peak), 16 MiB elsewhere.
_DEFAULT_CHUNK_LOGITS = {"cuda": 2**28, "cpu": 2**22}


def default_chunk_logits(device: torch.device) -> int:
    """The logits of one chunk when no bound is configured, for tensors on `device`."""
    return _DEFAULT_CHUNK_LOGITS["cuda" if device.type == "cuda" else "cpu"]


def _row_chunks(num_rows: int, vocab_size: int, max_chunk_logits: int) -> list[slice]:
    chunk = max(1, max_chunk_logits // vocab_size)
    return [slice(start, start + chunk) for start in range(0, num_rows, chunk)]


def row_statistics(logits: torch.Tensor, safe_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-sum-exp and the target logit of every row of fp32 `logits` [c, V]."""
    return torch.logsumexp(logits, dim=1), logits.gather(1, safe_targets[:, None]).squeeze(1)


def logits_gradient_(logits: torch.Tensor, lse: torch.Tensor, safe_targets: torch.Tensor,
                     grad_logp: torch.Tensor) -> torch.Tensor:
    """dL/dz = g (onehot(y) - softmax(z)) for fp32 `logits` z [c, V], built in place in `logits`."""
    grad = logits.sub_(lse[:, None]).exp_().neg_()
    grad.scatter_add_(1, safe_targets[:, None], torch.ones_like(lse[:, None]))
    return grad.mul_(grad_logp[:, None])


class ChunkedLogProbsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                max_chunk_logits: int):
        ctx.max_chunk_logits = max_chunk_logits
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, 0)
        weight32 = weight.float()
        lse = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        target_logits = torch.empty_like(lse)
        for rows in _row_chunks(hidden.shape[0], weight.shape[0], max_chunk_logits):
            lse[rows], target_logits[rows] = row_statistics(hidden[rows].float() @ weight32.T, safe_targets[rows])
        ctx.save_for_backward(hidden, weight, safe_targets, valid, lse)
        return torch.where(valid, target_logits - lse, 0.0)

    @staticmethod
    def backward(ctx, grad_logp: torch.Tensor):
        hidden, weight, safe_targets, valid, lse = ctx.saved_tensors
        # A frozen LM head (LoRA) gets neither a dW buffer nor its products, as in the Triton backward
        # (DESIGN.md, "The fused log-prob kernel"); likewise dh for hidden rows that need none.
        compute_dh, compute_dw = ctx.needs_input_grad[:2]
        grad_logp = torch.where(valid, grad_logp, 0.0)
        weight32 = weight.float()
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if compute_dh else None
        grad_weight = torch.zeros_like(weight32) if compute_dw else None
        for rows in _row_chunks(hidden.shape[0], weight.shape[0], ctx.max_chunk_logits):
            hidden32 = hidden[rows].float()
            d_logits = logits_gradient_(hidden32 @ weight32.T, lse[rows], safe_targets[rows], grad_logp[rows])
            if compute_dh:
                grad_hidden[rows] = d_logits @ weight32
            if compute_dw:
                grad_weight.addmm_(d_logits.T, hidden32)
        return (
            grad_hidden.to(hidden.dtype) if compute_dh else None,
            grad_weight.to(weight.dtype) if compute_dw else None,
            None, None, None,
        )
