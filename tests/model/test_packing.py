"""The shared-prefix layout and the padded layout hold exactly the examples' sequences."""

from __future__ import annotations

import pytest
import torch
from conftest import random_dpo_examples, random_iopo_examples, random_sft_examples

from iopo_fast import pack_examples, pad_examples
from iopo_fast.data.examples import packed_length, unpacked_length

MAKERS = [random_iopo_examples, random_dpo_examples, random_sft_examples]


@pytest.mark.parametrize("make_examples", MAKERS)
def test_packed_stream_holds_each_prompt_once_and_no_padding(generator, make_examples):
    examples = make_examples(4, 50, generator)
    batch = pack_examples(examples)
    expected_stream = [t for example in examples for prompt, responses in example.shared_prompts()
                       for t in prompt + [t for response, _ in responses for t in response]]
    assert batch.input_ids[0].tolist() == expected_stream
    assert batch.num_tokens == sum(packed_length(example) for example in examples)
    if make_examples is random_iopo_examples:
        assert all(packed_length(e) == len(e.prompt1) + len(e.prompt2) + 2 * (len(e.response1) + len(e.response2))
                   for e in examples)


@pytest.mark.parametrize("make_examples", MAKERS)
def test_every_attention_segment_is_an_unpacked_sequence(generator, make_examples):
    """Keys of segment i, gathered by kv_index, are the tokens and positions of one unpacked sequence."""
    examples = make_examples(3, 50, generator)
    batch = pack_examples(examples)
    expected = []
    for example in examples:
        for prompt, ((first, _), *others) in example.shared_prompts():
            expected += [(prompt + first, len(prompt + first))] + [(prompt + other, len(other)) for other, _ in others]
    cu_q, cu_k = batch.cu_seqlens_q.tolist(), batch.cu_seqlens_k.tolist()
    assert len(cu_q) == len(cu_k) == len(expected) + 1
    for i, (tokens, num_queries) in enumerate(expected):
        rows = batch.kv_index[cu_k[i]:cu_k[i + 1]]
        assert batch.input_ids[0, rows].tolist() == tokens
        assert batch.position_ids[0, rows].tolist() == list(range(len(tokens)))
        # The queries are the last rows of the key segment (bottom-right causal alignment).
        assert cu_q[i + 1] - cu_q[i] == num_queries
        assert rows[-num_queries:].tolist() == list(range(cu_q[i], cu_q[i + 1]))
    assert batch.max_seqlen_q == max(n for _, n in expected)
    assert batch.max_seqlen_k == max(len(t) for t, _ in expected)


@pytest.mark.parametrize("layout", [pack_examples, pad_examples])
@pytest.mark.parametrize("make_examples", MAKERS)
def test_each_response_token_is_predicted_by_the_row_before_it_in_its_sequence(generator, layout, make_examples):
    examples = make_examples(3, 50, generator)
    batch = layout(examples)
    stream = batch.input_ids.flatten()
    cursor = 0
    order = torch.argsort(batch.segment_ids, stable=True)  # group targets by (example, role) score
    for example_index, example in enumerate(examples):
        for role, (prompt, response) in enumerate(example.sequences()):
            sequence = prompt + response
            picked = order[cursor:cursor + len(response)]
            cursor += len(response)
            assert (batch.segment_ids[picked] == example_index * batch.num_roles + role).all()
            assert batch.targets[picked].tolist() == response
            # The predictor of response token j holds token P + j - 1 of the unpacked sequence.
            assert stream[batch.predictor_rows[picked]].tolist() == sequence[len(prompt) - 1 : -1]
    assert batch.response_lengths.tolist() == [[len(r) for _, r in e.sequences()] for e in examples]


def test_padded_batch_counts_only_content_tokens(generator):
    examples = random_iopo_examples(3, 50, generator)
    batch = pad_examples(examples)
    assert batch.input_ids.shape[0] == 4 * len(examples)
    assert batch.num_tokens == sum(unpacked_length(example) for example in examples)


def test_token_budget_is_enforced(generator):
    examples = random_iopo_examples(3, 50, generator)
    needed = sum(packed_length(example) for example in examples)
    assert pack_examples(examples, max_tokens=needed).num_tokens == needed
    with pytest.raises(ValueError, match=f"take {needed} tokens, over max_tokens={needed - 1}"):
        pack_examples(examples, max_tokens=needed - 1)


@pytest.mark.parametrize("layout", [pack_examples, pad_examples])
def test_mixed_example_kinds_are_refused(generator, layout):
    examples = random_iopo_examples(1, 50, generator) + random_dpo_examples(1, 50, generator)
    with pytest.raises(ValueError, match="cannot mix"):
        layout(examples)
