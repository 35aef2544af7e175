"""Decoding on rows that take the next prompt as one ends, against transformers' own `generate`, prompt by prompt."""

from __future__ import annotations

import pytest
import torch

from iopo_fast.evaluation.benchmarks import load_benchmark
from iopo_fast.generation.generators import TransformersGenerator, _chat_text
from iopo_fast.generation.settings import GenerationSettings
from iopo_fast.generation.row_decoding import RowDecoder
from iopo_fast.model.loading import DEFAULT_MODEL

MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def generator():
    return TransformersGenerator(DEFAULT_MODEL, GenerationSettings(batch_size=2, dtype="float32"),
                                 device=torch.device("cpu"))


def prompt_tokens(generator, prompts: list[str]) -> list[list[int]]:
    texts = [_chat_text(generator.tokenizer, prompt) for prompt in prompts]
    return generator.tokenizer(texts, add_special_tokens=False)["input_ids"]


def generate_alone(generator, tokens: list[int]) -> tuple[list[int], bool]:
    """transformers' `generate` on one prompt, no padding: its new tokens without the end token, and whether it
    was cut."""
    with torch.inference_mode():
        output = generator.model.generate(torch.tensor([tokens]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                          temperature=None, top_p=None, top_k=None,
                                          pad_token_id=generator.tokenizer.pad_token_id)
    new = output[0, len(tokens):].tolist()
    ended = generator.tokenizer.eos_token_id in new
    return new[:new.index(generator.tokenizer.eos_token_id)] if ended else new, not ended


def test_every_response_equals_generate_alone_through_refills_shifts_and_shrinking(generator):
    # Seven prompts of 42 to 116 tokens on two rows: rows take new prompts, and once none is left the batch
    # shrinks. A capacity of the longest sequence plus five moves the columns left every few steps.
    prompts = [item.prompt for item in load_benchmark("ifeval")[:6]] + ["What is 2+2? Answer with a number."]
    tokens = prompt_tokens(generator, prompts)
    longest = max(map(len, tokens)) + MAX_NEW_TOKENS
    finished = list(generator.decode(tokens, MAX_NEW_TOKENS, capacity=longest + 5))

    assert sorted(response.index for response in finished) == list(range(len(prompts)))
    assert finished[0].index == len(prompts) - 1  # the shortest prompt, with the shortest answer, ends first
    for response in finished:
        assert (response.tokens, response.cut) == generate_alone(generator, tokens[response.index]), response.index
    assert {response.cut for response in finished} == {True, False}


def test_the_generator_returns_responses_in_prompt_order_and_streams_them_as_they_end(generator):
    prompts = ["Write a long story about a cat.", "What is 2+2? Answer with a number."]
    short_first = list(generator.stream(prompts, max_new_tokens=MAX_NEW_TOKENS))
    assert [index for index, _ in short_first] == [1, 0]
    assert generator(prompts, max_new_tokens=MAX_NEW_TOKENS) == [short_first[1][1], short_first[0][1]]


def test_sampling_follows_the_seed():
    def sample(seed: int) -> list[str]:
        settings = GenerationSettings(temperature=1.0, top_p=0.9, seed=seed, batch_size=2, dtype="float32")
        return TransformersGenerator(DEFAULT_MODEL, settings, device=torch.device("cpu"))(
            ["Name a colour.", "Name a fruit."], max_new_tokens=8)

    assert sample(0) == sample(0) != sample(1)


def test_bad_arguments_are_refused(generator):
    with pytest.raises(ValueError, match="rows must be positive"):
        RowDecoder(generator.model, 0, [0], 0, torch.argmax)
    with pytest.raises(ValueError, match="capacity"):
        list(generator.decode([[1, 2, 3]], 4, capacity=7))
    with pytest.raises(ValueError, match="non-empty prompts"):
        list(generator.decode([[]], 4))
