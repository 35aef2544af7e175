"""The pure-PyTorch twin of the fused log-prob kernel (DESIGN.md, "Reference paths and CPU testing").

Same contract as `fused_logprobs`: logp[t] = log_softmax(h[t] W^T)[y[t]] in fp32, 0 for ignored rows.
Rows are processed in chunks of at most `_MAX_CHUNK_LOGITS` logits, so the [T, V] logits never exist;
the forward keeps only the inputs and the per-row log-sum-exp, the backward recomputes each chunk.
Everything is computed in fp32: a bf16 weight is upcast once per pass, O(V D) memory, never O(T V).
"""

from __future__ import annotations

import torch

_MAX_CHUNK_LOGITS = 2**22  # fp32 elements: a 16 MiB logits chunk


def _row_chunks(num_rows: int, vocab_size: int) -> list[slice]:
    chunk = max(1, _MAX_CHUNK_LOGITS // vocab_size)
    return [slice(start, start + chunk) for start in range(0, num_rows, chunk)]


class ChunkedLogProbsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int):
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, 0)
        weight32 = weight.float()
        lse = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        target_logits = torch.empty_like(lse)
        for rows in _row_chunks(hidden.shape[0], weight.shape[0]):
            logits = hidden[rows].float() @ weight32.T
            lse[rows] = torch.logsumexp(logits, dim=1)
            target_logits[rows] = logits.gather(1, safe_targets[rows, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, safe_targets, valid, lse)
        return torch.where(valid, target_logits - lse, 0.0)

    @staticmethod
    def backward(ctx, grad_logp: torch.Tensor):
        hidden, weight, safe_targets, valid, lse = ctx.saved_tensors
        grad_logp = torch.where(valid, grad_logp, 0.0)
        weight32 = weight.float()
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_weight = torch.zeros_like(weight32)
        for rows in _row_chunks(hidden.shape[0], weight.shape[0]):
            hidden32 = hidden[rows].float()
            # d logp / d logits = onehot(y) - softmax(logits), times g; built in place in one buffer.
            d_logits = (hidden32 @ weight32.T).sub_(lse[rows, None]).exp_().neg_()
            d_logits.scatter_add_(1, safe_targets[rows, None], torch.ones_like(lse[rows, None]))
            d_logits.mul_(grad_logp[rows, None])
            grad_hidden[rows] = d_logits @ weight32
            grad_weight.addmm_(d_logits.T, hidden32)
        return grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype), None, None
