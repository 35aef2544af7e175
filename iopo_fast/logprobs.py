"""Per-sequence response log-probs: the scores s_k of DESIGN.md ("The IOPO objective")."""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from .hf_integration import packed_hidden_states
from .kernels import example_chunked_loss, fused_logprobs
from .kernels.example_chunked_loss import ExampleLosses, sequence_sums
from .packing import Batch, PackedBatch, PaddedBatch

# How `loss_forward` forms the loss: see its docstring.
ALGORITHMS = ("recompute", "example_chunks")


def sequence_logps(model: nn.Module, batch: Batch, impl: str = "auto", attention_backend: str = "auto") -> torch.Tensor:
    """Summed log-probs of every response, `[num_examples, num_roles]` in role order, differentiable.

    `batch` is a `PackedBatch` (shared-prefix layout, varlen attention by `attention_backend`) or a
    `PaddedBatch`. Only the hidden rows that predict a response token go through the LM head, and
    they go through the fused log-prob kernel (`iopo_fast.kernels.fused_logprobs`, `impl` selects
    the implementation): the `[tokens x vocab]` logits are never materialized.
    """
    with scoring_forward(model, impl, attention_backend):
        return model(batch)


@contextlib.contextmanager
def scoring_forward(model: nn.Module, impl: str = "auto", attention_backend: str = "auto"):
    """Within it, `model(batch)` returns `sequence_logps(model, batch)`, and so does a wrapper's call.

    The scores are computed as the model's forward, and the LM head's part as the head's forward,
    under the hooks registered on those modules: a DeepSpeed engine wrapping `model` keeps its
    per-forward bookkeeping, and ZeRO-3 gathers the partitioned LM-head weight (which the kernel
    reads directly, not through `head.forward`) before the forward and again before the backward.
    """
    _check_supported_head(model)
    with forward_replaced(model, functools.partial(_sequence_logps, model, impl, attention_backend)):
        yield


def _sequence_logps(model: nn.Module, impl: str, attention_backend: str, batch: Batch) -> torch.Tensor:
    predictor_hidden = _predictor_hidden(model, batch, attention_backend)
    head = model.get_output_embeddings()
    with forward_replaced(head, lambda hidden, targets: fused_logprobs(hidden, head.weight, targets, impl=impl)):
        token_logps = head(predictor_hidden, batch.targets)
    return sequence_sums(token_logps, batch.segment_ids, batch.num_examples, batch.num_roles)


@contextlib.contextmanager
def loss_forward(model: nn.Module, example_losses: ExampleLosses, impl: str = "auto", attention_backend: str = "auto",
                 algorithm: str = "recompute"):
    """Within it, `model(batch)` returns (the sum over the batch's examples of `example_losses`, a
    differentiable fp32 scalar; the scores `[num_examples, num_roles]`, detached), and so does a wrapper's call.

    `example_losses(scores [b, num_roles], examples: slice)` gives the losses of the batch's examples
    `examples` from their scores. `algorithm` "recompute" computes the scores as `sequence_logps` does
    (fused log-prob kernel, 8 T D V FLOPs for T response tokens, O(T) memory), then the loss;
    "example_chunks" forms the loss and its gradient together, chunk by chunk of whole examples
    (`iopo_fast.kernels.example_chunked_loss`: 6 T D V FLOPs, O(chunk x vocabulary) transient memory).
    Hooks run as in `scoring_forward`.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    _check_supported_head(model)
    loss = _recomputed_loss if algorithm == "recompute" else _example_chunked_loss
    with forward_replaced(model, functools.partial(loss, model, example_losses, impl, attention_backend)):
        yield


def _recomputed_loss(model, example_losses, impl, attention_backend, batch):
    scores = _sequence_logps(model, impl, attention_backend, batch)
    return example_losses(scores, slice(None)).sum(), scores.detach()


def _example_chunked_loss(model, example_losses, impl, attention_backend, batch):
    predictor_hidden = _predictor_hidden(model, batch, attention_backend)
    head = model.get_output_embeddings()

    def head_forward(hidden, targets, segment_ids):
        return example_chunked_loss(hidden, head.weight, targets, segment_ids, batch.num_examples, batch.num_roles,
                                    example_losses, impl=impl)

    with forward_replaced(head, head_forward):
        return head(predictor_hidden, batch.targets, batch.segment_ids)


def _predictor_hidden(model: nn.Module, batch: Batch, attention_backend: str) -> torch.Tensor:
    """The final hidden rows that predict the batch's response tokens, `[R, hidden_size]`."""
    if isinstance(batch, PackedBatch):
        hidden = packed_hidden_states(model, batch, attention_backend)
    elif isinstance(batch, PaddedBatch):
        decoder = model.get_decoder()
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state.flatten(0, 1)
    else:
        raise TypeError(f"expected a PackedBatch or a PaddedBatch, got {type(batch).__name__}")
    return hidden.index_select(0, batch.predictor_rows)


@contextlib.contextmanager
def forward_replaced(module: nn.Module, forward):
    """`module.forward` is `forward` within; `module(...)` still runs the module's hooks around it."""
    own_forward = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if own_forward is None:
            del module.forward
        else:
            module.forward = own_forward


def _check_supported_head(model: nn.Module) -> None:
    """The fused path computes plain `h W^T` logits: refuse heads that transform them further."""
    config = model.config
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, name, None) not in (None, 1.0):
            raise NotImplementedError(f"{type(model).__name__}: {name}={getattr(config, name)} is not supported")
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError(f"{type(model).__name__}: an LM head with a bias is not supported")
