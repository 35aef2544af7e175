"""The preference model: a causal LM that scores the responses of a batch and forms their loss in one forward.

`PreferenceModel(model, loss)` takes a Hugging Face `*ForCausalLM` (or a PEFT model around one) over,
once, at construction, through transformers' public API:

- its attention implementation becomes iopo-fast's packed attention (`hf_attention`), which
  computes every forward that is not packed as SDPA does;
- its LM head becomes a `FusedLMHead` with the same weight (tied or not): plain logits for any
  ordinary call (generation, `model(input_ids)`), and, given targets, the response log-probs or the
  loss through `iopo_fast.kernels`, never materializing the `[tokens x vocab]` logits.

`preference_model(batch, reference_scores)` then returns the summed loss over the batch's examples,
their scores and their per-example metrics, the loss computed once. It is an ordinary module with
ordinary forwards all the way down: a DeepSpeed engine wraps it as it is, and under ZeRO-3 the
partitioned head weight is gathered by the head's own forward (and again for its backward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import example_chunks_loss, full_logits_logprobs, fused_logprobs
from ..kernels.scores import ExampleLosses, sequence_sums
from ..loss import PreferenceLoss
from .hf_attention import packed_hidden_states, use_packed_attention
from .packing import Batch, PackedBatch, PaddedBatch

# How the loss meets the LM head: see `PreferenceModel`.
ALGORITHMS = ("recompute", "example_chunks")


@dataclass
class PreferenceOutput:
    """What one forward of a `PreferenceModel` gives.

    loss: the sum of the examples' losses, a differentiable fp32 scalar (None when scoring only).
    scores: `[num_examples, num_roles]` fp32 summed response log-probs; differentiable when scoring
      only or under "recompute", detached under "example_chunks" (whose gradient flows through `loss`).
    metrics: per-example metrics `[num_examples]`, detached, "loss" among them (empty when scoring only).
    """

    loss: torch.Tensor | None
    scores: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ExampleChunks:
    """What `FusedLMHead` needs to form the loss of whole examples (`iopo_fast.kernels.example_chunks_loss`)."""

    segment_ids: torch.Tensor
    num_examples: int
    num_roles: int
    example_losses: ExampleLosses


class FusedLMHead(nn.Linear):
    """A causal LM's output layer as `PreferenceModel` runs it: the weight of the head it replaces (the very
    parameter, so a tied embedding stays tied), no bias.

    - `head(hidden)`: the logits, as the replaced `nn.Linear` computes them;
    - `head(hidden, targets)`: fp32 log-probs of `targets` `[R]` (`iopo_fast.kernels.fused_logprobs`, or, with
      `impl="full_logits"`, the plain full-logits computation, `iopo_fast.kernels.full_logits_logprobs`);
    - `head(hidden, targets, chunks)`: (the summed loss, the scores) of whole examples in one pass
      (`iopo_fast.kernels.example_chunks_loss`).
    """

    def __init__(self, head: nn.Linear, impl: str = "auto", max_chunk_logits: int = 0):
        nn.Module.__init__(self)
        if getattr(head, "bias", None) is not None:
            raise NotImplementedError("an LM head with a bias is not supported")
        self.in_features, self.out_features = head.in_features, head.out_features
        self.weight = head.weight
        self.register_parameter("bias", None)
        self.impl, self.max_chunk_logits = impl, max_chunk_logits or None

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None, chunks: ExampleChunks | None = None):
        if targets is None:
            return F.linear(hidden, self.weight)
        if chunks is not None:
            return example_chunks_loss(hidden, self.weight, targets, chunks.segment_ids, chunks.num_examples,
                                        chunks.num_roles, chunks.example_losses, impl=self.impl,
                                        max_chunk_logits=self.max_chunk_logits)
        if self.impl == "full_logits":
            return full_logits_logprobs(hidden, self.weight, targets)
        return fused_logprobs(hidden, self.weight, targets, impl=self.impl, max_chunk_logits=self.max_chunk_logits)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl}"


class PreferenceModel(nn.Module):
    """Scores and preference loss of batches of examples through one causal LM; see the module docstring.

    `loss` is the objective and its hyper-parameters (None: the model only scores, as a reference does).
    `attention_backend` picks the varlen attention of packed batches (`iopo_fast.model.attention`), `logprob_impl`
    the LM-head kernel (`iopo_fast.kernels.resolve_impl`, or "full_logits"), `logprob_algorithm` how the loss
    meets the head: "recompute" takes the scores through the fused log-prob kernel (8 T D V FLOPs for T
    response tokens, O(T) memory), then the loss; "example_chunks" forms the loss and its gradient together,
    chunk by chunk of whole examples of at most `max_chunk_logits` logits (6 T D V FLOPs, O(chunk x
    vocabulary) transient memory; 0: `iopo_fast.kernels.chunked_logprobs.default_chunk_logits`).
    """

    def __init__(self, model: nn.Module, loss: PreferenceLoss | None = None, attention_backend: str = "auto",
                 logprob_impl: str = "auto", logprob_algorithm: str = "recompute", max_chunk_logits: int = 0):
        super().__init__()
        if logprob_algorithm not in ALGORITHMS:
            raise ValueError(f"logprob_algorithm must be one of {ALGORITHMS}, got {logprob_algorithm!r}")
        if logprob_algorithm == "example_chunks" and logprob_impl == "full_logits":
            raise ValueError("logprob_algorithm example_chunks has no full_logits implementation")
        _check_supported_head(model)
        use_packed_attention(model)
        model.set_output_embeddings(FusedLMHead(model.get_output_embeddings(), logprob_impl, max_chunk_logits))
        self.model = model
        self.loss, self.attention_backend, self.algorithm = loss, attention_backend, logprob_algorithm

    @property
    def head(self) -> FusedLMHead:
        return self.model.get_output_embeddings()

    def forward(self, batch: Batch, reference_scores: torch.Tensor | None = None,
                with_loss: bool = True) -> PreferenceOutput:
        """The batch's loss, scores and metrics; `reference_scores` `[num_examples, num_roles]` (None:
        reference-free). `with_loss=False`, or a model without a loss, scores only."""
        if self.loss is None or not with_loss:
            return PreferenceOutput(None, self.scores(batch))
        if self.algorithm == "example_chunks":
            return self._example_chunks_loss(self.predictor_hidden(batch), batch, reference_scores)
        scores = self.scores(batch)
        losses, metrics = self.loss(scores, reference_scores, batch.response_lengths)
        return PreferenceOutput(losses.sum(), scores, metrics)

    def scores(self, batch: Batch) -> torch.Tensor:
        """The summed response log-probs `[num_examples, num_roles]` in role order, differentiable."""
        hidden = self.predictor_hidden(batch)
        return sequence_sums(self.head(hidden, batch.targets), batch.segment_ids, batch.num_examples, batch.num_roles)

    def predictor_hidden(self, batch: Batch) -> torch.Tensor:
        """The final hidden rows that predict the batch's response tokens, `[R, hidden_size]`."""
        if isinstance(batch, PackedBatch):
            hidden = packed_hidden_states(self.model, batch, self.attention_backend)
        elif isinstance(batch, PaddedBatch):
            output = self.model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            hidden = output.last_hidden_state.flatten(0, 1)
        else:
            raise TypeError(f"expected a PackedBatch or a PaddedBatch, got {type(batch).__name__}")
        return hidden.index_select(0, batch.predictor_rows)

    def _example_chunks_loss(self, hidden, batch, reference_scores) -> PreferenceOutput:
        # The kernel calls example_losses on each chunk's scores; the metrics of the same call are kept.
        chunk_metrics = []

        def example_losses(scores: torch.Tensor, examples: slice) -> torch.Tensor:
            reference = None if reference_scores is None else reference_scores[examples]
            losses, metrics = self.loss(scores, reference, batch.response_lengths[examples])
            chunk_metrics.append(metrics)
            return losses

        chunks = ExampleChunks(batch.segment_ids, batch.num_examples, batch.num_roles, example_losses)
        loss, scores = self.head(hidden, batch.targets, chunks)
        metrics = {name: torch.cat([metrics[name] for metrics in chunk_metrics]) for name in chunk_metrics[0]}
        return PreferenceOutput(loss, scores, metrics)


def _check_supported_head(model: nn.Module) -> None:
    """The fused head computes plain `h W^T` logits: refuse models that transform them further."""
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(model.config, name, None) not in (None, 1.0):
            raise NotImplementedError(f"{type(model).__name__}: {name}={getattr(model.config, name)} is not supported")
