"""Causal attention over a packed, padding-free stream, with separate query and key segments.

DESIGN.md ("Packing layout") expresses every unpacked sequence as one varlen segment: its queries
are rows of the physical stream (`cu_seqlens_q`), its keys and values a gathered copy that may be
longer (`cu_seqlens_k`), the prompt rows coming first. Segment i attends with BOTTOM-RIGHT causal
alignment: query row r of a segment with lq queries and lk >= lq keys sees key columns
c <= r + (lk - lq). The queries are then the last lq positions of the lk-long sequence, and each
segment computes exactly the last lq rows of that sequence's plain causal attention.

One function, `varlen_attention`, runs one of three backends that all compute this:

- "flash_attn": `flash_attn.flash_attn_varlen_func` (flash-attn >= 2.1, whose causal flag is
  aligned bottom-right when lq != lk); CUDA, fp16/bf16, native GQA.
- "torch_varlen": PyTorch's `torch.nn.attention.varlen.varlen_attn`, when flash-attn is missing;
  CUDA, fp16/bf16, native GQA. See `_run_torch_varlen` for what its source does.
- "per_segment_sdpa": per-segment `scaled_dot_product_attention` with an explicit [lq, lk]
  bottom-right mask; any device and dtype, slow, obviously correct (its earlier name, "reference",
  is still accepted, with a warning).

`resolve_backend` says which one runs; the caller logs it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings

import torch
import torch.nn.functional as F
from packaging.version import Version

BACKENDS = ("auto", "flash_attn", "torch_varlen", "per_segment_sdpa")
# Earlier names of backends, still accepted.
RENAMED_BACKENDS = {"reference": "per_segment_sdpa"}
HALF_DTYPES = (torch.float16, torch.bfloat16)
# flash-attn 2.1 changed its causal flag to bottom-right alignment when lq != lk; 1.x and 2.0 align top-left.
MIN_FLASH_ATTN_VERSION = Version("2.1")


def resolve_backend(device: torch.device, dtype: torch.dtype, backend: str = "auto") -> str:
    """The backend `varlen_attention` runs for tensors on `device` of `dtype`.

    "auto" picks flash_attn if it imports and the tensors are CUDA fp16/bf16, else torch_varlen if it
    can run there, else per_segment_sdpa. A forced backend that cannot run raises ValueError saying why.
    """
    backend = current_backend_name(backend)
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend != "auto":
        reason = _unavailable_reason(backend, device, dtype)
        if reason is not None:
            raise ValueError(f"attention backend {backend!r} cannot run: {reason}")
        return backend
    for candidate in ("flash_attn", "torch_varlen"):
        if _unavailable_reason(candidate, device, dtype) is None:
            return candidate
    return "per_segment_sdpa"


def current_backend_name(backend: str) -> str:
    """`backend`, or, for an earlier name, the backend's name now (with a warning)."""
    if backend in RENAMED_BACKENDS:
        warnings.warn(f"attention backend {backend!r} is now called {RENAMED_BACKENDS[backend]!r}", FutureWarning,
                      stacklevel=3)
        return RENAMED_BACKENDS[backend]
    return backend


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Bottom-right causal attention of each segment, `[Tq, H, Dh]`, differentiable in q, k and v.

    query [Tq, H, Dh]; key and value [Tk, Hkv, Dh] with H % Hkv == 0 (GQA: query head h reads
    key/value head h // (H / Hkv)). Segment i holds queries cu_seqlens_q[i]:cu_seqlens_q[i + 1] and
    keys cu_seqlens_k[i]:cu_seqlens_k[i + 1], at least as many keys as queries; max_seqlen_q/k bound
    the segment lengths. `scale` defaults to 1/sqrt(Dh). The fast backends check only what needs no
    device sync (shapes, dtypes, devices); per_segment_sdpa checks the segments too.
    """
    _check_shapes(query, key, value, cu_seqlens_q, cu_seqlens_k)
    name = resolve_backend(query.device, query.dtype, backend)
    return _RUNNERS[name](query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)


def _unavailable_reason(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why `backend` cannot run on `device` with `dtype`, or None if it can.

    Both fast backends run flash-attn 2 kernels: CUDA, compute capability >= 8.0, fp16/bf16.
    """
    if backend == "per_segment_sdpa":
        return None
    if device.type != "cuda":
        return f"it needs a CUDA device, got {device.type}"
    package_reason = _flash_attn_reason() if backend == "flash_attn" else _torch_varlen_reason()
    if package_reason is not None:
        return package_reason
    if dtype not in HALF_DTYPES:
        return f"it needs float16 or bfloat16 tensors, got {dtype}"
    # torch/testing/_internal/common_cuda.py gates flash attention on SM80OrLater, as flash-attn 2 does.
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 0):
        return f"it needs compute capability >= 8.0, got {capability}"
    return None


@functools.cache
def _flash_attn_reason() -> str | None:
    try:
        flash_attn = importlib.import_module("flash_attn")
    except ImportError as error:
        return f"flash_attn does not import ({error})"
    if Version(flash_attn.__version__) < MIN_FLASH_ATTN_VERSION:
        return (f"flash_attn {flash_attn.__version__} aligns causal masks top-left when lq != lk; "
                f"it needs >= {MIN_FLASH_ATTN_VERSION}")
    return None


@functools.cache
def _torch_varlen_reason() -> str | None:
    try:
        varlen = importlib.import_module("torch.nn.attention.varlen")
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    parameters = inspect.signature(varlen.varlen_attn).parameters
    if "window_size" not in parameters or "enable_gqa" not in parameters:
        return f"torch {torch.__version__}'s varlen_attn has no window_size/enable_gqa arguments"
    if not torch.backends.cuda.is_flash_attention_available():
        return "this torch build has no flash attention kernels"
    return None


def _check_shapes(query, key, value, cu_seqlens_q, cu_seqlens_k) -> None:
    """Checks that need no device sync: ranks, head counts, dtypes, devices."""
    if query.ndim != 3 or key.ndim != 3 or value.shape != key.shape or query.shape[2] != key.shape[2]:
        raise ValueError(f"expected query [Tq, H, Dh] and key, value [Tk, Hkv, Dh], got {tuple(query.shape)}, "
                         f"{tuple(key.shape)}, {tuple(value.shape)}")
    if query.shape[1] % key.shape[1] != 0:
        raise ValueError(f"query heads ({query.shape[1]}) must be a multiple of key/value heads ({key.shape[1]})")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    for cu_seqlens in (cu_seqlens_q, cu_seqlens_k):
        if cu_seqlens.ndim != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"cu_seqlens must be 1-D int32 or int64, got {tuple(cu_seqlens.shape)} {cu_seqlens.dtype}")
    if cu_seqlens_q.shape != cu_seqlens_k.shape or len(cu_seqlens_q) < 2:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must both hold n + 1 >= 2 offsets, got "
                         f"{len(cu_seqlens_q)} and {len(cu_seqlens_k)}")
    devices = {t.device for t in (query, key, value, cu_seqlens_q, cu_seqlens_k)}
    if len(devices) != 1:
        raise ValueError(f"query, key, value and cu_seqlens must be on one device, got {sorted(map(str, devices))}")


def _check_segments(cu_q: list[int], cu_k: list[int], num_queries: int, num_keys: int,
                    max_seqlen_q: int, max_seqlen_k: int) -> None:
    """Offsets that start at 0, end at the stream lengths, never decrease, and segments with lk >= lq."""
    if cu_q[0] != 0 or cu_k[0] != 0 or cu_q[-1] != num_queries or cu_k[-1] != num_keys:
        raise ValueError(f"cu_seqlens must run from 0 to the stream lengths (Tq={num_queries}, Tk={num_keys}), "
                         f"got q {cu_q[0]}..{cu_q[-1]} and k {cu_k[0]}..{cu_k[-1]}")
    query_lengths = [end - start for start, end in zip(cu_q, cu_q[1:])]
    key_lengths = [end - start for start, end in zip(cu_k, cu_k[1:])]
    if min(query_lengths) < 0 or min(key_lengths) < 0:
        raise ValueError("cu_seqlens must not decrease")
    short = [i for i, (lq, lk) in enumerate(zip(query_lengths, key_lengths)) if lk < lq]
    if short:
        i = short[0]
        raise ValueError(f"segment {i} has fewer keys ({key_lengths[i]}) than queries ({query_lengths[i]}): "
                         "bottom-right causal attention needs lk >= lq")
    if max(query_lengths) > max_seqlen_q or max(key_lengths) > max_seqlen_k:
        raise ValueError(f"max_seqlen_q/k ({max_seqlen_q}, {max_seqlen_k}) are below the longest segments "
                         f"({max(query_lengths)}, {max(key_lengths)})")


def _run_per_segment_sdpa(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale):
    """Each segment through scaled_dot_product_attention with its own [lq, lk] mask: no [S, S] mask."""
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    _check_segments(cu_q, cu_k, query.shape[0], key.shape[0], max_seqlen_q, max_seqlen_k)
    enable_gqa = query.shape[1] != key.shape[1]
    outputs = []
    for q_start, q_end, k_start, k_end in zip(cu_q, cu_q[1:], cu_k, cu_k[1:]):
        num_queries, num_keys = q_end - q_start, k_end - k_start
        # Bottom-right alignment (DESIGN.md "Packing layout"): query r sees keys c <= r + (lk - lq).
        mask = torch.ones(num_queries, num_keys, dtype=torch.bool, device=query.device).tril(num_keys - num_queries)
        output = F.scaled_dot_product_attention(
            query[q_start:q_end].transpose(0, 1), key[k_start:k_end].transpose(0, 1),
            value[k_start:k_end].transpose(0, 1), attn_mask=mask, scale=scale, enable_gqa=enable_gqa,
        )
        outputs.append(output.transpose(0, 1))
    return torch.cat(outputs)


def _run_flash_attn(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale):
    """flash-attn >= 2.1: causal=True is bottom-right aligned when lq != lk; K/V with Hkv heads natively."""
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(
        query.contiguous(), key.contiguous(), value.contiguous(),
        cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32), max_seqlen_q, max_seqlen_k,
        softmax_scale=scale, causal=True,
    )


def _run_torch_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale):
    """PyTorch's varlen_attn, as read in torch 2.13's torch/nn/attention/varlen.py.

    - Signature: varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None,
      scale=None, window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None,
      num_splits=None). There is no is_causal argument: it is `window_size == (-1, 0)`, compared as
      a tuple, so the window must be passed as the tuple (-1, 0).
    - Kernel: the cuDNN branch is off (`_should_use_cudnn` returns False), so forward and backward
      are aten._flash_attention_forward/_backward, PyTorch's bundled flash-attn 2 (`mha_varlen_fwd`
      in ATen/native/transformers/cuda/flash_attn/flash_api.h), called with is_causal and
      window_size_right=0. That kernel's causal mask is bottom-right aligned when lq != lk (the
      LOWER_RIGHT branch of torch/nn/attention/bias.py calls the flash op with is_causal=True
      because "for this particular op it means lower right"), which is what DESIGN.md ("Packing
      layout") needs, so this backend serves segments with lq < lk as well.
    - GQA: enable_gqa=True only lifts the Hq == Hkv check; K/V go to the kernel with their Hkv heads
      (flash_api.h: k is "total_k x num_heads_k x head_size") and the backward returns dK, dV with
      Hkv heads, so K/V are not repeated.
    """
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(
        query.contiguous(), key.contiguous(), value.contiguous(),
        cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32), max_seqlen_q, max_seqlen_k,
        scale=scale, window_size=(-1, 0), enable_gqa=query.shape[1] != key.shape[1],
    )


_RUNNERS = {"flash_attn": _run_flash_attn, "torch_varlen": _run_torch_varlen, "per_segment_sdpa": _run_per_segment_sdpa}
