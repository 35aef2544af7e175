"""Per-token log-probs through the LM head without materializing the [T, V] logits.

DESIGN.md, "The fused log-prob kernel". With logits z = h W^T (h [T, D], W [V, D], targets y [T]):

    logp_t    = z_t[y_t] - lse_t,             lse_t = log sum_v exp(z_t[v])
    dlogp_t   = onehot(y_t) - softmax(z_t)    (derivative with respect to z_t)
    dh        = (g * dlogp) W,                dW = (g * dlogp)^T h,   g = dL/dlogp [T]

Forward: `_lse_forward_kernel` tiles (rows x vocab), computes each logits tile blockwise over D with
`tl.dot` and keeps an online max / sum-exp per row; every program covers one row block and a fixed span
of the vocabulary (a split), and the few per-split partial lse are combined afterwards.
`_logp_kernel` takes the target logit as an indexed dot product h_t . W[y_t]. Only lse [T] (fp32) is kept
for the backward.
Backward, one vocabulary chunk [v0, v1) at a time (whole vocab blocks, at most `max_chunk_logits` entries
of dz unless one block of every row holds more):
`_logits_gradient_chunk_kernel` recomputes the chunk's logits tiles and writes
dz = g * (onehot(y) - softmax(z)) [T, v1 - v0] in the input dtype; then dW[v0:v1] = dz^T h is one matrix
product written straight into the weight's gradient, in its dtype (fp32 accumulation inside the product,
with PyTorch's reduced-precision matmul options off for it, so no fp32 [V, D] buffer), and
`_add_hidden_gradient_kernel` adds dz W[v0:v1] into the fp32 dh [T, D]. Every element is written by one
program, or by the product: no atomics.

Cost: 2 T D V FLOPs forward + 6 T D V backward = 8 T D V (plus O(T D) for the target logits).
Memory: O(T) in the forward; the backward adds dz for one chunk, the fp32 dh [T, D] (and its copy in the
input dtype) and dW [V, D] in the weight's dtype.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .chunked_logprobs import ChunkedLogProbsFunction, default_chunk_logits

# `triton.jit` reads TRITON_INTERPRET when it decorates a function: Triton's own helpers (tl.zeros, tl.sum,
# ...) at `import triton`, the kernels below when this module is imported. They run on CPU tensors only
# if the variable was set before triton was first imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

IMPLS = ("auto", "triton", "chunked")


@triton.jit
def _dot(a, b, acc, INTERPRETED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc + a @ b, accumulated in fp32. The CPU interpreter multiplies the raw bit patterns of bf16
    operands, so there they are upcast first (exact: a bf16 product is exact in fp32)."""
    if INTERPRETED:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, T, V, D, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
                 BLOCK_D: tl.constexpr, INTERPRETED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """z[rows, cols] = h[rows] W[cols]^T in fp32, blockwise over D; rows >= T and cols >= V read zeros."""
    offs_d = tl.arange(0, BLOCK_D)
    h_ptrs = h_ptr + rows[:, None] * D + offs_d[None, :]
    w_ptrs = w_ptr + cols[None, :] * D + offs_d[:, None]  # the transposed tile W[cols]^T, [BLOCK_D, BLOCK_V]
    z = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
    for d in range(0, D, BLOCK_D):
        d_mask = offs_d < D - d
        h = tl.load(h_ptrs, mask=(rows[:, None] < T) & d_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=(cols[None, :] < V) & d_mask[:, None], other=0.0)
        z = _dot(h, w, z, INTERPRETED, DOT_PRECISION)
        h_ptrs += BLOCK_D
        w_ptrs += BLOCK_D
    return z


@triton.jit
def _lse_forward_kernel(h_ptr, w_ptr, partial_lse_ptr, T, V, D, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
                        BLOCK_D: tl.constexpr, SPLIT_BLOCKS: tl.constexpr, INTERPRETED: tl.constexpr,
                        DOT_PRECISION: tl.constexpr):
    """partial_lse[s, t] = log sum_{v in split s} exp(z[t, v]) with an online max: the running sum is
    rescaled by exp(m_old - m_new) whenever the row maximum grows, so exp never overflows."""
    split = tl.program_id(0)
    rows = (tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    row_max = tl.full((BLOCK_T,), float("-inf"), dtype=tl.float32)
    sum_exp = tl.zeros((BLOCK_T,), dtype=tl.float32)
    v_start = split * SPLIT_BLOCKS * BLOCK_V
    v_stop = tl.minimum(v_start + SPLIT_BLOCKS * BLOCK_V, V)
    for v in range(v_start, v_stop, BLOCK_V):
        cols = (v + tl.arange(0, BLOCK_V)).to(tl.int64)
        z = _logits_tile(h_ptr, w_ptr, rows, cols, T, V, D, BLOCK_T, BLOCK_V, BLOCK_D, INTERPRETED, DOT_PRECISION)
        z = tl.where(cols[None, :] < V, z, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(z, axis=1))
        sum_exp = sum_exp * tl.exp(row_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        row_max = new_max
    tl.store(partial_lse_ptr + split * T + rows, row_max + tl.log(sum_exp), mask=rows < T)


@triton.jit
def _logp_kernel(h_ptr, w_ptr, y_ptr, lse_ptr, logp_ptr, T, D, ignore_index, BLOCK_T: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """logp[t] = h[t] . W[y[t]] - lse[t], the target logit as an indexed dot product; 0 for ignored rows."""
    rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    targets = tl.load(y_ptr + rows, mask=rows < T, other=ignore_index)
    valid = (rows < T) & (targets != ignore_index)
    offs_d = tl.arange(0, BLOCK_D)
    target_logit = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for d in range(0, D, BLOCK_D):
        mask = valid[:, None] & (offs_d[None, :] < D - d)
        h = tl.load(h_ptr + rows[:, None] * D + d + offs_d[None, :], mask=mask, other=0.0)
        w = tl.load(w_ptr + targets[:, None] * D + d + offs_d[None, :], mask=mask, other=0.0)
        target_logit += tl.sum(h.to(tl.float32) * w.to(tl.float32), axis=1)
    lse = tl.load(lse_ptr + rows, mask=rows < T, other=0.0)
    tl.store(logp_ptr + rows, tl.where(valid, target_logit - lse, 0.0), mask=rows < T)


@triton.jit
def _logits_gradient_chunk_kernel(h_ptr, w_ptr, y_ptr, lse_ptr, g_ptr, dz_ptr, T, V, D, v_start, num_cols, CHUNK,
                                  BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                                  GROUP_T: tl.constexpr, INTERPRETED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One (row block, vocab block) tile of the chunk of `num_cols` columns from v_start:
    dz[t, c] = g_t * (onehot(y_t) - softmax(z_t))[v_start + c], written in dz's dtype (dz is [T, CHUNK],
    CHUNK >= num_cols rounded up to BLOCK_V); columns past V get 0. g is 0 on ignored rows."""
    # Consecutive programs sweep the chunk for GROUP_T row blocks, so the h rows of a group and the W rows
    # of a vocab block are reused from L2.
    pid = tl.program_id(0)
    num_v_blocks = tl.cdiv(num_cols, BLOCK_V)
    first_t = (pid // (GROUP_T * num_v_blocks)) * GROUP_T
    group_size = tl.minimum(tl.cdiv(T, BLOCK_T) - first_t, GROUP_T)
    pid_t = first_t + (pid % (GROUP_T * num_v_blocks)) % group_size
    pid_v = (pid % (GROUP_T * num_v_blocks)) // group_size
    rows = (pid_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    chunk_cols = (pid_v * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    cols = v_start + chunk_cols
    row_mask = rows < T

    z = _logits_tile(h_ptr, w_ptr, rows, cols, T, V, D, BLOCK_T, BLOCK_V, BLOCK_D, INTERPRETED, DOT_PRECISION)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_mask, other=0.0)
    targets = tl.load(y_ptr + rows, mask=row_mask, other=-1)
    softmax = tl.where(cols[None, :] < V, tl.exp(z - lse[:, None]), 0.0)
    onehot = tl.where(cols[None, :] == targets[:, None], 1.0, 0.0)
    dz = g[:, None] * (onehot - softmax)
    tl.store(dz_ptr + rows[:, None] * CHUNK + chunk_cols[None, :], dz.to(dz_ptr.dtype.element_ty),
             mask=row_mask[:, None])


@triton.jit
def _add_hidden_gradient_kernel(dz_ptr, w_ptr, dh_ptr, T, D, v_start, num_cols, CHUNK, BLOCK_T: tl.constexpr,
                                BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRETED: tl.constexpr,
                                DOT_PRECISION: tl.constexpr):
    """dh[rows, ds] += dz[rows, :num_cols] W[v_start : v_start + num_cols, ds] for one (row block, D block)
    tile, accumulated in fp32 in registers and added to the fp32 dh once: the tile is this program's alone."""
    rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    row_mask, d_mask = rows < T, ds < D
    dz_ptrs = dz_ptr + rows[:, None] * CHUNK + offs_k[None, :]
    w_ptrs = w_ptr + (v_start + offs_k[:, None]).to(tl.int64) * D + ds[None, :]
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for k in range(0, num_cols, BLOCK_K):
        k_mask = offs_k < num_cols - k
        dz = tl.load(dz_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None] & d_mask[None, :], other=0.0)
        acc = _dot(dz, w, acc, INTERPRETED, DOT_PRECISION)
        dz_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * D
    dh_ptrs = dh_ptr + rows[:, None] * D + ds[None, :]
    mask = row_mask[:, None] & d_mask[None, :]
    tl.store(dh_ptrs, tl.load(dh_ptrs, mask=mask, other=0.0) + acc, mask=mask)


@dataclass(frozen=True)
class _LaunchConfig:
    """Tile sizes, launch options and grids of the four kernels, for one dtype."""

    block_t: int
    block_v: int
    block_d: int  # step along D of the forward kernels
    backward_block_d: int  # step along D of the backward's logits recompute
    split_blocks: int  # vocab blocks per forward program
    group_t: int  # row blocks per backward group
    hidden_block_d: int  # columns of dh per program of `_add_hidden_gradient_kernel`
    hidden_block_k: int  # its step along the chunk's vocabulary
    num_warps: int
    forward_stages: int
    backward_stages: int
    hidden_stages: int
    dot_precision: str

    def forward_grid(self, num_rows: int, vocab_size: int) -> tuple[int, int]:
        return triton.cdiv(vocab_size, self.split_blocks * self.block_v), triton.cdiv(num_rows, self.block_t)

    def row_grid(self, num_rows: int) -> tuple[int]:
        return (triton.cdiv(num_rows, self.block_t),)

    def vocab_chunk(self, num_rows: int, vocab_size: int, max_chunk_entries: int) -> int:
        """Columns of dz per backward chunk: whole vocab blocks, at most `max_chunk_entries` / `num_rows`
        (one block at least), and no more blocks than the vocabulary has."""
        blocks = max(1, max_chunk_entries // (max(num_rows, 1) * self.block_v))
        return min(blocks, triton.cdiv(vocab_size, self.block_v)) * self.block_v

    def backward_grid(self, num_rows: int, num_cols: int) -> tuple[int]:
        return (triton.cdiv(num_rows, self.block_t) * triton.cdiv(num_cols, self.block_v),)

    def hidden_grid(self, num_rows: int, hidden_size: int) -> tuple[int, int]:
        return triton.cdiv(num_rows, self.block_t), triton.cdiv(hidden_size, self.hidden_block_d)


def cuda_launch_config(dtype: torch.dtype) -> _LaunchConfig:
    """The tiles and launch options of the kernels on CUDA for `dtype`. `benchmarks/kernels_static.py`
    compiles them for sm_80 and sm_90 and reads registers, spills, shared memory and the tensor-core
    instructions from the output (benchmarks/results/kernels-static.md); tests/kernels/test_kernels_static.py
    keeps them compiling, within shared memory and, in bf16, free of spills."""
    if dtype == torch.float32:
        # fp32 products must not round to tf32, or the fp32 tolerance (DESIGN.md, "Tolerances") is lost:
        # the exact path, not the fast one (no tensor cores). 8 warps keep its 64 x 64 tiles in registers.
        return _LaunchConfig(block_t=64, block_v=64, block_d=32, backward_block_d=32, split_blocks=128, group_t=8,
                             hidden_block_d=64, hidden_block_k=32, num_warps=8, forward_stages=2,
                             backward_stages=2, hidden_stages=2, dot_precision="ieee")
    # H100, bf16: 128 x 128 logits tiles. A split of 64 vocab blocks gives 16-19 splits at V = 128k-152k,
    # so concurrent forward programs share few row blocks and their W tiles stay in L2. The backward's
    # recompute is the forward's tile loop with the dz epilogue, at the forward's step along D; the dh
    # product is a plain 128 x 128 x 64 matrix-product tiling. (input_precision only applies to fp32
    # operands: "tf32" is Triton's default.)
    return _LaunchConfig(block_t=128, block_v=128, block_d=64, backward_block_d=64, split_blocks=64, group_t=8,
                         hidden_block_d=128, hidden_block_k=64, num_warps=8, forward_stages=3, backward_stages=3,
                         hidden_stages=3, dot_precision="tf32")


# Small tiles keep the interpreter fast; at test sizes they give ragged edges in every dimension, several
# vocab blocks per split and several splits. tests/kernels/test_kernels_static.py runs the interpreter at
# `cuda_launch_config` too, by handing it to `FusedLogProbsFunction`.
INTERPRETER_LAUNCH_CONFIG = _LaunchConfig(block_t=32, block_v=64, block_d=32, backward_block_d=32, split_blocks=4,
                                          group_t=2, hidden_block_d=32, hidden_block_k=32, num_warps=1,
                                          forward_stages=1, backward_stages=1, hidden_stages=1, dot_precision="ieee")

# Entries of dz per backward chunk when the caller gives no bound: 64 MiB in bf16, 8192 columns at 4096 rows.
DEFAULT_GRADIENT_CHUNK = 2**25


def _launch_config(dtype: torch.dtype) -> _LaunchConfig:
    """The launch configuration `fused_logprobs` uses: the interpreter's small tiles, or CUDA's."""
    return INTERPRETER_LAUNCH_CONFIG if INTERPRETED else cuda_launch_config(dtype)


def _forward(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
             config: _LaunchConfig):
    (T, D), V = hidden.shape, weight.shape[0]
    logp = hidden.new_empty(T, dtype=torch.float32)
    if T == 0:
        return logp, torch.empty_like(logp)
    grid = config.forward_grid(T, V)
    partial_lse = hidden.new_empty(grid[0], T, dtype=torch.float32)
    _lse_forward_kernel[grid](
        hidden, weight, partial_lse, T, V, D, BLOCK_T=config.block_t, BLOCK_V=config.block_v,
        BLOCK_D=config.block_d, SPLIT_BLOCKS=config.split_blocks, INTERPRETED=INTERPRETED,
        DOT_PRECISION=config.dot_precision, num_warps=config.num_warps, num_stages=config.forward_stages,
    )
    lse = torch.logsumexp(partial_lse, dim=0)
    _logp_kernel[config.row_grid(T)](
        hidden, weight, targets, lse, logp, T, D, ignore_index, BLOCK_T=config.block_t, BLOCK_D=config.block_d,
    )
    return logp, lse


@contextlib.contextmanager
def _full_precision_products():
    """cuBLAS products with fp32 accumulation whatever the process set: no TF32 for fp32 operands (the fp32
    tolerance, DESIGN.md "Tolerances"), no reduced-precision split-K reductions for bf16 ones."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32, matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_tf32 = matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_tf32, matmul.allow_bf16_reduced_precision_reduction = saved


def _backward(hidden, weight, targets, lse, grad_logp, ignore_index, config: _LaunchConfig, compute_dh: bool,
              compute_dw: bool, max_chunk_entries: int = DEFAULT_GRADIENT_CHUNK):
    (T, D), V = hidden.shape, weight.shape[0]
    if T == 0:
        return torch.zeros_like(hidden) if compute_dh else None, torch.zeros_like(weight) if compute_dw else None
    grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if compute_dh else None
    # Every row of dW is written once, by its chunk's product: no fp32 [V, D] accumulator.
    grad_weight = torch.empty_like(weight) if compute_dw else None
    grad_logp = torch.where(targets == ignore_index, 0.0, grad_logp).contiguous()
    chunk = config.vocab_chunk(T, V, max_chunk_entries)
    grad_logits = hidden.new_empty(T, chunk)
    for v_start in range(0, V, chunk):
        num_cols = min(chunk, V - v_start)
        _logits_gradient_chunk_kernel[config.backward_grid(T, num_cols)](
            hidden, weight, targets, lse, grad_logp, grad_logits, T, V, D, v_start, num_cols, chunk,
            BLOCK_T=config.block_t,
            BLOCK_V=config.block_v, BLOCK_D=config.backward_block_d, GROUP_T=config.group_t, INTERPRETED=INTERPRETED,
            DOT_PRECISION=config.dot_precision, num_warps=config.num_warps, num_stages=config.backward_stages,
        )
        if compute_dw:
            with _full_precision_products():
                torch.mm(grad_logits[:, :num_cols].T, hidden, out=grad_weight[v_start:v_start + num_cols])
        if compute_dh:
            _add_hidden_gradient_kernel[config.hidden_grid(T, D)](
                grad_logits, weight, grad_hidden, T, D, v_start, num_cols, chunk, BLOCK_T=config.block_t,
                BLOCK_D=config.hidden_block_d, BLOCK_K=config.hidden_block_k, INTERPRETED=INTERPRETED,
                DOT_PRECISION=config.dot_precision, num_warps=config.num_warps, num_stages=config.hidden_stages,
            )
    return grad_hidden.to(hidden.dtype) if compute_dh else None, grad_weight


class FusedLogProbsFunction(torch.autograd.Function):
    """The Triton kernels at launch configuration `config` (see `_launch_config`) for forward and backward,
    the backward's dz chunks holding at most `max_chunk_entries` entries."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                config: _LaunchConfig, max_chunk_entries: int):
        logp, lse = _forward(hidden, weight, targets, ignore_index, config)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.ignore_index, ctx.config, ctx.max_chunk_entries = ignore_index, config, max_chunk_entries
        return logp

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        compute_dh, compute_dw = ctx.needs_input_grad[:2]
        grad_hidden, grad_weight = _backward(hidden, weight, targets, lse, grad_logp, ctx.ignore_index, ctx.config,
                                             compute_dh, compute_dw, ctx.max_chunk_entries)
        return grad_hidden, grad_weight, None, None, None, None


def resolve_impl(hidden: torch.Tensor, impl: str = "auto") -> str:
    """The implementation `fused_logprobs` runs for `hidden`: "triton" (CUDA tensors, or any tensor when
    TRITON_INTERPRET=1 was set before triton was imported) or "chunked" (the PyTorch twin)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    triton_runs = hidden.is_cuda or INTERPRETED
    if impl == "auto":
        return "triton" if triton_runs else "chunked"
    if impl == "triton" and not triton_runs:
        raise RuntimeError("the Triton log-prob kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "triton is imported")
    return impl


def check_inputs(hidden: torch.Tensor, weight: torch.Tensor, *per_row: torch.Tensor) -> None:
    """hidden [T, D] and weight [V, D] of one dtype, and `per_row` tensors (targets, segment ids) of shape [T]."""
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [T, D] and weight [V, D], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight must share a dtype, got {hidden.dtype} and {weight.dtype}")
    for tensor in per_row:
        if tensor.shape != hidden.shape[:1]:
            raise ValueError(f"expected per-row tensors of shape [{hidden.shape[0]}], got {tuple(tensor.shape)}")


def fused_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                   impl: str = "auto", max_chunk_logits: int | None = None) -> torch.Tensor:
    """logp[t] = log_softmax(hidden[t] @ weight.T)[targets[t]] as fp32 [T], 0 where targets == ignore_index.

    hidden [T, D] and weight [V, D] share a dtype (bf16 or fp32); targets [T] int64. Differentiable in
    hidden and weight (fp32 accumulation, gradients in the input dtype). `impl` picks the Triton kernels
    or their chunked PyTorch twin (see `resolve_impl`). `max_chunk_logits` bounds the logits of one chunk:
    the Triton backward's dz (default: `DEFAULT_GRADIENT_CHUNK`), the twin's fp32 logits (default:
    `default_chunk_logits`).
    """
    check_inputs(hidden, weight, targets)
    if resolve_impl(hidden, impl) == "triton":
        return FusedLogProbsFunction.apply(hidden.contiguous(), weight.contiguous(), targets.contiguous(), ignore_index,
                                           _launch_config(hidden.dtype), max_chunk_logits or DEFAULT_GRADIENT_CHUNK)
    return ChunkedLogProbsFunction.apply(hidden.contiguous(), weight.contiguous(), targets.contiguous(), ignore_index,
                                         max_chunk_logits or default_chunk_logits(hidden.device))
