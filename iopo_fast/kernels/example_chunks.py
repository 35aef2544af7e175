"""The summed loss of whole examples and its gradient, in one pass through the LM head.

DESIGN.md, "The fused log-prob kernel". `fused_logprobs` costs 8 T D V FLOPs because its backward
recomputes the logits: a row's gradient coefficient g = dL/dlogp is known only after the loss. But each
example's loss depends only on its own sequence scores, so a chunk of whole examples has everything its
gradient needs as soon as its logits exist:

    z = h W^T  (the chunk's rows, [c, V] fp32)     lse, logp_t = z_t[y_t] - lse_t
    s_k = sum of logp over sequence k              loss_i = example_losses(s_i),  g_t = dloss_i/ds_k(t)
    dz = g (onehot(y) - softmax(z))                dh = dz W,  dW += dz^T h

2 T D V FLOPs for the logits and 4 T D V for the two gradient products: 6 T D V in all, for a
transient O(c V) (the chunk's fp32 logits and, for bf16 inputs, dz in bf16) instead of O(T) memory.
The gradients are formed in the forward and kept, in fp32, until the backward, which only scales them
by the upstream gradient of the summed loss. The products run on cuBLAS (bf16 operands, fp32 output on
CUDA); the two passes over the logits are the Triton kernels below, or their PyTorch twins. With bf16
operands cuBLAS cannot add into the fp32 dW, so every chunk's dz^T h lands in a [V, D] fp32 buffer
first: memory traffic of about 16 V D bytes per chunk, which larger chunks amortize.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .chunked_logprobs import default_chunk_logits, logits_gradient_, row_statistics
from .fused_logprobs import INTERPRETED, check_inputs, resolve_impl
from .scores import ExampleLosses, sequence_sums

_BLOCK_V = 64 if INTERPRETED else 1024


@triton.jit
def _row_statistics_kernel(logits_ptr, targets_ptr, lse_ptr, target_logit_ptr, V, BLOCK_V: tl.constexpr):
    """lse[r] = log sum_v exp(z[r, v]) and target_logit[r] = z[r, y[r]] for one row r of fp32 logits.

    Each lane keeps its own running maximum m and sum of exp(z - m), rescaled when m grows; a lane that
    has seen only masked columns (V < BLOCK_V) stays at m = -inf, sum 0, and adds 0 to the row's sum."""
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK_V)
    lane_max = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    lane_sum = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for v in range(0, V, BLOCK_V):
        z = tl.load(logits_ptr + row * V + v + offsets, mask=offsets < V - v, other=float("-inf"))
        new_max = tl.maximum(lane_max, z)
        # exp(-inf - (-inf)) would be NaN: a lane without a column yet shifts by 0 instead, and keeps sum 0.
        shift = tl.where(new_max > float("-inf"), new_max, 0.0)
        lane_sum = lane_sum * tl.exp(lane_max - shift) + tl.exp(z - shift)
        lane_max = new_max
    row_max = tl.max(lane_max, axis=0)
    row_sum = tl.sum(lane_sum * tl.exp(lane_max - row_max), axis=0)
    tl.store(lse_ptr + row, row_max + tl.log(row_sum))
    target = tl.load(targets_ptr + row)
    tl.store(target_logit_ptr + row, tl.load(logits_ptr + row * V + target))


@triton.jit
def _logits_gradient_kernel(logits_ptr, targets_ptr, lse_ptr, grad_logp_ptr, out_ptr, V, BLOCK_V: tl.constexpr):
    """out[r, v] = g[r] (onehot(y[r])[v] - exp(z[r, v] - lse[r])) in out's dtype, for one block of one row.
    `out` may be the logits themselves: each element is read before it is written, by the same program."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = cols < V
    z = tl.load(logits_ptr + row * V + cols, mask=mask, other=0.0)
    onehot = tl.where(cols == tl.load(targets_ptr + row), 1.0, 0.0)
    grad = tl.load(grad_logp_ptr + row) * (onehot - tl.exp(z - tl.load(lse_ptr + row)))
    tl.store(out_ptr + row * V + cols, grad.to(out_ptr.dtype.element_ty), mask=mask)


def _row_stats(logits: torch.Tensor, safe_targets: torch.Tensor, use_triton: bool):
    if not use_triton:
        return row_statistics(logits, safe_targets)
    lse, target_logits = torch.empty(2, logits.shape[0], dtype=torch.float32, device=logits.device)
    if logits.shape[0]:
        _row_statistics_kernel[(logits.shape[0],)](logits, safe_targets, lse, target_logits, logits.shape[1],
                                                   BLOCK_V=_BLOCK_V)
    return lse, target_logits


def _logits_gradient(logits, lse, safe_targets, grad_logp, dtype: torch.dtype, use_triton: bool) -> torch.Tensor:
    """dz = g (onehot(y) - softmax(z)) in `dtype`; fp32 logits are overwritten."""
    if not use_triton:
        return logits_gradient_(logits, lse, safe_targets, grad_logp).to(dtype)
    grad = logits if dtype == torch.float32 else torch.empty_like(logits, dtype=dtype)
    num_rows, vocab_size = logits.shape
    if num_rows:
        _logits_gradient_kernel[(num_rows, triton.cdiv(vocab_size, _BLOCK_V))](
            logits, safe_targets, lse, grad_logp, grad, vocab_size, BLOCK_V=_BLOCK_V)
    return grad


def _matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in fp32. bf16 operands exist only on CUDA here, where cuBLAS gives the fp32 output directly."""
    return a @ b if a.dtype == torch.float32 else torch.mm(a, b, out_dtype=torch.float32)


def _add_matmul_(accumulator: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """accumulator (fp32) += a @ b."""
    if a.dtype == accumulator.dtype:
        accumulator.addmm_(a, b)
    else:
        accumulator += _matmul_fp32(a, b)


def _example_chunks(example_of_row: torch.Tensor, num_examples: int, max_rows: int) -> list[tuple[slice, slice]]:
    """Consecutive (rows, examples) spans of whole examples, each of at most `max_rows` rows unless a single
    example has more. Rows must be grouped by example, in example order (`example_of_row` non-decreasing):
    example e's rows are the span after those of examples 0 .. e-1."""
    rows_per_example = torch.bincount(example_of_row, minlength=num_examples).tolist()
    chunks, first_row, first_example, num_rows = [], 0, 0, 0
    for example, rows in enumerate(rows_per_example):
        if num_rows and num_rows + rows > max_rows:
            chunks.append((slice(first_row, first_row + num_rows), slice(first_example, example)))
            first_row, first_example, num_rows = first_row + num_rows, example, 0
        num_rows += rows
    chunks.append((slice(first_row, first_row + num_rows), slice(first_example, num_examples)))
    return chunks


class ExampleChunksLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, segment_ids, num_examples: int, num_roles: int,
                example_losses: ExampleLosses, ignore_index: int, use_triton: bool, max_chunk_logits: int,
                compute_dh: bool, compute_dw: bool):
        (T, D), V = hidden.shape, weight.shape[0]
        # bf16 products run on the tensor cores where cuBLAS has an fp32 output (CUDA); elsewhere in fp32.
        operand_dtype = hidden.dtype if hidden.is_cuda else torch.float32
        weight_operand = weight.to(operand_dtype)
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, 0)
        scores = hidden.new_zeros(num_examples, num_roles, dtype=torch.float32)
        loss = hidden.new_zeros((), dtype=torch.float64)
        grad_hidden = hidden.new_zeros(T, D, dtype=torch.float32) if compute_dh else None
        grad_weight = weight.new_zeros(V, D, dtype=torch.float32) if compute_dw else None
        for rows, examples in _example_chunks(segment_ids // num_roles, num_examples, max(1, max_chunk_logits // V)):
            hidden_operand = hidden[rows].to(operand_dtype)
            logits = _matmul_fp32(hidden_operand, weight_operand.T)
            lse, target_logits = _row_stats(logits, safe_targets[rows], use_triton)
            logp = torch.where(valid[rows], target_logits - lse, 0.0)
            local_segments = segment_ids[rows] - examples.start * num_roles  # indexed within the chunk
            chunk_scores = sequence_sums(logp, local_segments, len(scores[examples]), num_roles).requires_grad_()
            with torch.enable_grad():
                chunk_loss = example_losses(chunk_scores, examples).sum()
            scores[examples] = chunk_scores.detach()
            loss += chunk_loss.detach().double()
            if not (compute_dh or compute_dw):
                continue
            (grad_scores,) = torch.autograd.grad(chunk_loss, chunk_scores, allow_unused=True, materialize_grads=True)
            grad_logp = torch.where(valid[rows], grad_scores.flatten()[local_segments], 0.0)
            grad_logits = _logits_gradient(logits, lse, safe_targets[rows], grad_logp, operand_dtype, use_triton)
            del logits
            if compute_dh:
                grad_hidden[rows] = _matmul_fp32(grad_logits, weight_operand)
            if compute_dw:
                _add_matmul_(grad_weight, grad_logits.T, hidden_operand)
        ctx.grads = grad_hidden, grad_weight
        ctx.dtypes = hidden.dtype, weight.dtype
        ctx.mark_non_differentiable(scores)
        return loss.float(), scores

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor, _grad_scores):
        if ctx.grads is None:
            raise RuntimeError("example_chunks_loss: its gradients were formed for one backward, which has run")
        grads = [None if grad is None else grad.mul_(grad_loss).to(dtype) for grad, dtype in zip(ctx.grads, ctx.dtypes)]
        ctx.grads = None
        return *grads, *[None] * 10


def check_example_chunks_supported(device: torch.device, dtype: torch.dtype) -> None:
    """Raise RuntimeError where `example_chunks_loss` cannot run: in bf16 or fp16 on CUDA it needs matrix
    products with an fp32 output (`torch.mm(..., out_dtype=)`, torch >= 2.8)."""
    if device.type == "cuda" and dtype != torch.float32 and not hasattr(torch.ops.aten.mm, "dtype"):
        raise RuntimeError(f"the example_chunks algorithm in {dtype} on CUDA needs torch >= 2.8 (matrix products "
                           f"with an fp32 output); this is torch {torch.__version__}")


def example_chunks_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, segment_ids: torch.Tensor,
                         num_examples: int, num_roles: int, example_losses: ExampleLosses, ignore_index: int = -100,
                         impl: str = "auto", max_chunk_logits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of `example_losses` over the examples, fp32 scalar; the sequence scores [num_examples, num_roles]).

    Row t of hidden [T, D] predicts targets[t] (ignored where equal to `ignore_index`) and adds its log-prob
    log_softmax(hidden[t] @ weight.T)[targets[t]] to score segment_ids[t] = example * num_roles + role;
    rows come grouped by example, in example order, their roles in any order (as `iopo_fast.pack_examples` lays
    them out). The loss is differentiable in hidden and weight (gradients formed chunk by chunk in the forward,
    see the module docstring); the scores are not. `impl` picks the Triton passes over the logits or their
    PyTorch twins (see `resolve_impl`); `max_chunk_logits` bounds the logits of a chunk (default:
    `default_chunk_logits`), which holds at least one whole example, so one long example may exceed it.
    """
    check_inputs(hidden, weight, targets, segment_ids)
    # `_example_chunks` slices each example's rows as one span, in example order; the roles inside it may come
    # in any order (packing groups the roles that share a prompt, DESIGN.md "Packing layout").
    example_of_row = segment_ids // num_roles
    if len(segment_ids) and not (example_of_row[1:] >= example_of_row[:-1]).all():
        raise ValueError("rows must come grouped by example, in example order (segment_ids // num_roles "
                         "non-decreasing)")
    check_example_chunks_supported(hidden.device, hidden.dtype)
    grad_enabled = torch.is_grad_enabled()
    return ExampleChunksLossFunction.apply(
        hidden.contiguous(), weight.contiguous(), targets.contiguous(), segment_ids, num_examples, num_roles,
        example_losses, ignore_index, resolve_impl(hidden, impl) == "triton",
        max_chunk_logits or default_chunk_logits(hidden.device),
        grad_enabled and hidden.requires_grad, grad_enabled and weight.requires_grad,
    )
