"""Per-sequence response log-probs: the scores s_k of DESIGN.md ("The IOPO objective")."""

from __future__ import annotations

import torch
from torch import nn

from .hf_integration import packed_hidden_states
from .kernels import fused_logprobs
from .packing import Batch, PackedBatch, PaddedBatch


def sequence_logps(model: nn.Module, batch: Batch, impl: str = "auto", attention_backend: str = "auto") -> torch.Tensor:
    """Summed log-probs of every response, `[num_examples, num_roles]` in role order, differentiable.

    `batch` is a `PackedBatch` (shared-prefix layout, varlen attention by `attention_backend`) or a
    `PaddedBatch`. Only the hidden rows that predict a response token go through the LM head, and
    they go through the fused log-prob kernel (`iopo_fast.kernels.fused_logprobs`, `impl` selects
    the implementation): the `[tokens x vocab]` logits are never materialized.
    """
    _check_supported_head(model)
    if isinstance(batch, PackedBatch):
        hidden = packed_hidden_states(model, batch, attention_backend)
    elif isinstance(batch, PaddedBatch):
        decoder = model.get_decoder()
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state.flatten(0, 1)
    else:
        raise TypeError(f"expected a PackedBatch or a PaddedBatch, got {type(batch).__name__}")
    predictor_hidden = hidden.index_select(0, batch.predictor_rows)
    token_logps = fused_logprobs(predictor_hidden, model.get_output_embeddings().weight, batch.targets, impl=impl)
    # Summed in float64: a sequence score adds hundreds of fp32 terms, and the sum is cheap.
    scores = torch.zeros(batch.num_examples * batch.num_roles, dtype=torch.float64, device=token_logps.device)
    scores = scores.index_add(0, batch.segment_ids, token_logps.double())
    return scores.float().view(batch.num_examples, batch.num_roles)


def _check_supported_head(model: nn.Module) -> None:
    """The fused path computes plain `h W^T` logits: refuse heads that transform them further."""
    config = model.config
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, name, None) not in (None, 1.0):
            raise NotImplementedError(f"{type(model).__name__}: {name}={getattr(config, name)} is not supported")
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError(f"{type(model).__name__}: an LM head with a bias is not supported")
