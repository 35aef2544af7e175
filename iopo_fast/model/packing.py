"""The batch layouts that the model reads examples (`iopo_fast.data.examples`) in.

`pack_examples` builds the shared-prefix layout of DESIGN.md ("Packing layout"): `[x1 | y1 | y2]`
and `[x2 | y2 | y1]` per IOPO example (`[x | y_w | y_l]` per DPO example, `[x | y]` per SFT example),
all examples in one padding-free stream, with the varlen attention metadata that makes each response
see only its own prompt. `pad_examples` is the plain layout, every sequence right-padded in its own row, as the
original implementation batches them. Both record, for every response token, the hidden row that
predicts it and the (example, role) score it adds to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..data.examples import Example


@dataclass
class Batch:
    """What every layout records about the response tokens of `num_examples` examples.

    predictor_rows: [R] index of the hidden row (in the flattened hidden states) that predicts `targets[r]`.
    segment_ids: [R] index of the score target r adds to: example * num_roles + role.
    response_lengths: [num_examples, num_roles] response tokens per score.
    """

    predictor_rows: torch.Tensor
    targets: torch.Tensor
    segment_ids: torch.Tensor
    response_lengths: torch.Tensor
    num_examples: int
    num_roles: int

    def to(self, device: torch.device | str):
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return type(self)(**{name: v.to(device) if torch.is_tensor(v) else v for name, v in moved.items()})


@dataclass
class PackedBatch(Batch):
    """The shared-prefix layout: one padding-free stream and its varlen attention segments.

    input_ids, position_ids: [1, T]; positions restart as in the unpacked sequences.
    cu_seqlens_q: [n + 1] int32 query segments over the stream.
    kv_index: [Tk] stream rows that form the key/value segments, `cu_seqlens_k` [n + 1] int32;
      the second response of a shared prompt sees the prompt's rows gathered again (DESIGN.md, "Packing layout").
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    kv_index: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]


@dataclass
class PaddedBatch(Batch):
    """The plain layout: each (prompt, response) sequence right-padded in its own row, `[N, S]`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def num_tokens(self) -> int:
        """Tokens that carry content (padding excluded)."""
        return int(self.attention_mask.sum())


class _ResponseIndex:
    """Collects, response by response, the per-token fields that every layout shares."""

    def __init__(self, examples: list[Example]):
        if not examples:
            raise ValueError("a batch needs at least one example")
        self.num_roles = examples[0].objective.num_roles
        if any(example.objective is not examples[0].objective for example in examples):
            raise ValueError("cannot mix examples of different objectives (IOPO, DPO, SFT) in one batch")
        self.num_examples = len(examples)
        self.predictor_rows, self.targets, self.segment_ids = [], [], []
        self.lengths = torch.zeros(self.num_examples, self.num_roles, dtype=torch.long)

    def add(self, example_index: int, role: int, response: list[int], predictor_rows) -> None:
        if not response:
            raise ValueError(f"example {example_index} has an empty response")
        self.predictor_rows.extend(predictor_rows)
        self.targets.extend(response)
        self.segment_ids.extend([example_index * self.num_roles + role] * len(response))
        self.lengths[example_index, role] = len(response)

    def fields(self) -> dict:
        return dict(
            predictor_rows=torch.tensor(self.predictor_rows, dtype=torch.long),
            targets=torch.tensor(self.targets, dtype=torch.long),
            segment_ids=torch.tensor(self.segment_ids, dtype=torch.long),
            response_lengths=self.lengths,
            num_examples=self.num_examples,
            num_roles=self.num_roles,
        )


def pack_examples(examples: list[Example], max_tokens: int | None = None) -> PackedBatch:
    """The shared-prefix layout of `examples` in one stream; `max_tokens` bounds the stream length."""
    responses = _ResponseIndex(examples)
    input_ids, position_ids, kv_index = [], [], []
    query_lengths, key_lengths = [], []
    for example_index, example in enumerate(examples):
        for prompt, ((first, first_role), *others) in example.shared_prompts():
            if not prompt:
                raise ValueError(f"example {example_index} has an empty prompt")
            start, num_prompt, num_first = len(input_ids), len(prompt), len(first)
            input_ids.extend(prompt + first)
            position_ids.extend(range(num_prompt + num_first))
            # The first segment: the prompt and the first response, causal over themselves.
            kv_index.extend(range(start, start + num_prompt + num_first))
            query_lengths.append(num_prompt + num_first)
            key_lengths.append(num_prompt + num_first)
            last_prompt_row = start + num_prompt - 1
            responses.add(example_index, first_role, first, range(last_prompt_row, last_prompt_row + num_first))
            for response, role in others:
                # A further response queries its prompt's rows gathered again, then itself; its positions
                # restart after the prompt (DESIGN.md, "Packing layout").
                response_start = len(input_ids)
                input_ids.extend(response)
                position_ids.extend(range(num_prompt, num_prompt + len(response)))
                kv_index.extend([*range(start, start + num_prompt), *range(response_start, response_start + len(response))])
                query_lengths.append(len(response))
                key_lengths.append(num_prompt + len(response))
                # Its first token is predicted by the prompt's last row, not by the previous response's.
                responses.add(example_index, role, response,
                              [last_prompt_row, *range(response_start, response_start + len(response) - 1)])
    if max_tokens is not None and len(input_ids) > max_tokens:
        raise ValueError(f"{len(examples)} examples take {len(input_ids)} tokens, over max_tokens={max_tokens}")

    def cumulative(lengths: list[int]) -> torch.Tensor:
        return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)

    return PackedBatch(
        **responses.fields(),
        input_ids=torch.tensor([input_ids], dtype=torch.long),
        position_ids=torch.tensor([position_ids], dtype=torch.long),
        cu_seqlens_q=cumulative(query_lengths),
        cu_seqlens_k=cumulative(key_lengths),
        kv_index=torch.tensor(kv_index, dtype=torch.long),
        max_seqlen_q=max(query_lengths),
        max_seqlen_k=max(key_lengths),
    )


def pad_examples(examples: list[Example], pad_token_id: int = 0) -> PaddedBatch:
    """Every (prompt, response) sequence of `examples` right-padded in its own row, in role order."""
    responses = _ResponseIndex(examples)
    sequences = [pair for example in examples for pair in example.sequences()]
    width = max(len(prompt) + len(response) for prompt, response in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for index, (prompt, response) in enumerate(sequences):
        if not prompt:
            raise ValueError(f"example {index // responses.num_roles} has an empty prompt")
        tokens = prompt + response
        input_ids[index, : len(tokens)] = torch.tensor(tokens)
        attention_mask[index, : len(tokens)] = 1
        first_row = index * width + len(prompt) - 1
        example_index, role = divmod(index, responses.num_roles)
        responses.add(example_index, role, response, range(first_row, first_row + len(response)))
    return PaddedBatch(**responses.fields(), input_ids=input_ids, attention_mask=attention_mask)
