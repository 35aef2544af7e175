"""Running Hugging Face decoders on a packed batch, through transformers' public extension points.

`use_packed_attention(model)` registers `ATTENTION_NAME` in transformers' `AttentionInterface` and
`AttentionMaskInterface` and makes it the model's attention implementation, once, through
`set_attn_implementation`. The packing metadata reaches the attention through the model's forward
kwargs; nothing of the modeling code is forked. For a packed forward the mask function returns None,
so no `[S, S]` mask is ever built; any other forward (unpacked batches, generation) runs PyTorch SDPA
with its usual mask.
The kwargs travel with each decoder layer's inputs, so gradient checkpointing recomputes a layer
with the same packed attention.

Supported families: `SUPPORTED_MODEL_TYPES` (tested: Llama, including SmolLM2, Qwen2, Mistral and
Qwen3). A family whose attention does more than scaled dot-product over rotated q/k (logit
softcapping, sliding windows, attention sinks) is refused rather than silently mis-computed.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface

from ..compat import attention_implementation, sdpa_functions
from .attention import resolve_backend, varlen_attention
from .packing import PackedBatch

ATTENTION_NAME = "iopo_fast_packed"
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "qwen3")

logger = logging.getLogger(__name__)
sdpa_attention_forward, sdpa_mask = sdpa_functions()


def packed_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             packed_batch: PackedBatch | None = None, attention_backend: str = "per_segment_sdpa",
                             **kwargs):
    """One layer's attention: over the packed stream when `packed_batch` is given, else plain SDPA.

    q, k, v are `[1, heads, T, head_dim]` for a packed batch; the output is `[1, T, heads, head_dim]`.
    """
    if packed_batch is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if dropout:
        raise NotImplementedError("attention dropout is not supported on packed batches")
    # Keys and values are gathered from the stream by kv_index: the prompt rows appear once more for
    # the second response of each shared prompt, and the gather's backward sums their gradients.
    key_rows = key[0].transpose(0, 1).index_select(0, packed_batch.kv_index)
    value_rows = value[0].transpose(0, 1).index_select(0, packed_batch.kv_index)
    output = varlen_attention(
        query[0].transpose(0, 1), key_rows, value_rows,
        packed_batch.cu_seqlens_q, packed_batch.cu_seqlens_k, packed_batch.max_seqlen_q, packed_batch.max_seqlen_k,
        scale=scaling, backend=attention_backend,
    )
    return output.unsqueeze(0), None


_in_packed_forward = contextvars.ContextVar("iopo_fast_packed_forward", default=False)


def packed_attention_mask(*args, **kwargs):
    """No mask for a packed forward (the segments are the mask); SDPA's mask otherwise."""
    return None if _in_packed_forward.get() else sdpa_mask(*args, **kwargs)


def use_packed_attention(model: nn.Module) -> None:
    """Make `model` (a `*ForCausalLM`, or a PEFT model around one) run packed batches: its attention
    implementation becomes `ATTENTION_NAME`, which computes every other forward as SDPA does."""
    check_supported_model(model.config)
    AttentionInterface.register(ATTENTION_NAME, packed_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, packed_attention_mask)
    model.set_attn_implementation(ATTENTION_NAME)


def packed_hidden_states(model: nn.Module, batch: PackedBatch, attention_backend: str = "auto") -> torch.Tensor:
    """Final hidden states `[T, D]` of the decoder of `model` (a `*ForCausalLM` set up by
    `use_packed_attention`) over the packed stream."""
    if attention_implementation(model.config) != ATTENTION_NAME:
        raise ValueError(f"{type(model).__name__} runs {attention_implementation(model.config)!r} attention: call "
                         "use_packed_attention(model) before packed forwards")
    check_supported_model(model.config, batch)
    embedding = model.get_input_embeddings().weight
    backend = resolve_backend(embedding.device, embedding.dtype, attention_backend)
    _log_backend_once(backend)
    with _packed_forward():
        output = model.get_decoder()(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
            packed_batch=batch, attention_backend=backend,
        )
    return output.last_hidden_state[0]


def check_supported_model(config, batch: PackedBatch | None = None) -> None:
    """Refuse model configurations whose attention the packed path would compute wrongly: their type, and,
    given a batch, a sliding window shorter than its longest sequence."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"packed batches support model types {', '.join(SUPPORTED_MODEL_TYPES)}, not {config.model_type!r}"
        )
    window = getattr(config, "sliding_window", None)
    uses_window = window is not None and getattr(config, "use_sliding_window", True)
    if uses_window and batch is not None and batch.max_seqlen_k > window:
        raise NotImplementedError(f"{config.model_type}: sliding-window attention (window {window}) is not supported")


@contextlib.contextmanager
def _packed_forward():
    token = _in_packed_forward.set(True)
    try:
        yield
    finally:
        _in_packed_forward.reset(token)


_logged_backends: set[str] = set()


def _log_backend_once(backend: str) -> None:
    if backend not in _logged_backends:
        _logged_backends.add(backend)
        logger.info("packed attention backend: %s", backend)
