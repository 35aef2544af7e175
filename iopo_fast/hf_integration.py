"""Running Hugging Face decoders on a packed batch, through transformers' public extension points.

The packed attention is registered in transformers' `AttentionInterface` under `ATTENTION_NAME`, and
the packing metadata reaches it through the model's forward kwargs; nothing of the modeling code is
forked. Because no attention-mask function is registered under that name, transformers builds no
mask at all for a packed forward: no `[S, S]` mask ever exists. The model's own attention setting is
switched only for the duration of a packed forward, so the same model still runs unpacked batches.

Supported families: `SUPPORTED_MODEL_TYPES` (tested: Llama, including SmolLM2, Qwen2, Mistral and
Qwen3). A family whose attention does more than scaled dot-product over rotated q/k (logit
softcapping, sliding windows, attention sinks) is refused rather than silently mis-computed.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from transformers import AttentionInterface

from .attention import resolve_backend, varlen_attention
from .packing import PackedBatch

ATTENTION_NAME = "iopo_fast_packed"
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "qwen3")

logger = logging.getLogger(__name__)


def packed_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             packed_batch: PackedBatch | None = None, attention_backend: str = "reference",
                             **kwargs):
    """The attention of one layer over the packed stream: q, k, v are `[1, heads, T, head_dim]`."""
    if packed_batch is None:
        raise RuntimeError(f"the {ATTENTION_NAME!r} attention runs only inside iopo_fast.packed_hidden_states")
    if dropout:
        raise NotImplementedError("attention dropout is not supported on packed batches")
    # Keys and values are gathered from the stream by kv_index: the prompt rows appear once more for
    # the second response of each pack, and the gather's backward sums their gradients.
    key_rows = key[0].transpose(0, 1).index_select(0, packed_batch.kv_index)
    value_rows = value[0].transpose(0, 1).index_select(0, packed_batch.kv_index)
    output = varlen_attention(
        query[0].transpose(0, 1), key_rows, value_rows,
        packed_batch.cu_seqlens_q, packed_batch.cu_seqlens_k, packed_batch.max_seqlen_q, packed_batch.max_seqlen_k,
        scale=scaling, backend=attention_backend,
    )
    return output.unsqueeze(0), None


AttentionInterface.register(ATTENTION_NAME, packed_attention_forward)


def packed_hidden_states(model: nn.Module, batch: PackedBatch, attention_backend: str = "auto") -> torch.Tensor:
    """Final hidden states `[T, D]` of the decoder of `model` (a `*ForCausalLM`) over the packed stream."""
    check_supported(model.config, batch)
    embedding = model.get_input_embeddings().weight
    backend = resolve_backend(embedding.device, embedding.dtype, attention_backend)
    _log_backend_once(backend)
    with _attention_implementation(model.config, ATTENTION_NAME):
        output = model.get_decoder()(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
            packed_batch=batch, attention_backend=backend,
        )
    return output.last_hidden_state[0]


def check_supported(config, batch: PackedBatch | None = None) -> None:
    """Refuse model configurations whose attention the packed path would compute wrongly."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"packed batches support model types {', '.join(SUPPORTED_MODEL_TYPES)}, not {config.model_type!r}"
        )
    window = getattr(config, "sliding_window", None)
    uses_window = window is not None and getattr(config, "use_sliding_window", True)
    if uses_window and (batch is None or batch.max_seqlen_k > window):
        raise NotImplementedError(f"{config.model_type}: sliding-window attention (window {window}) is not supported")


@contextlib.contextmanager
def _attention_implementation(config, name: str):
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


_logged_backends: set[str] = set()


def _log_backend_once(backend: str) -> None:
    if backend not in _logged_backends:
        _logged_backends.add(backend)
        logger.info("packed attention backend: %s", backend)
