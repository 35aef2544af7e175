"""Spliced chat templates: byte-identical to rendering the template, on random conversations, for the
templates that place contents as they are or stripped; refused (or caught and redone) for the others."""

from __future__ import annotations

import json
import random

import pytest

from iopo_fast.data.chat_splice import SpliceMismatch, SplicedTemplate
from iopo_fast.data.records import VERIFY_EVERY, ChatEncoder, load_examples
from iopo_fast.data.prepared import prepared_examples

# Llama 3's template (contents `| trim`med), and one in the manner of Qwen3's, which cuts the reasoning out of
# an assistant turn.
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
          "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
THINKING = ("{% for message in messages %}{% set content = message['content'] %}{% if message['role'] == 'assistant' "
            "and '</think>' in content %}{% set content = content.split('</think>')[-1].lstrip('\n') %}{% endif %}"
            "{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Branches on a word no probe holds: spliced, and caught by the rendered check.
ZEBRA = ("{% for message in messages %}{% if 'zebra' in message['content'] %}{{ 'STRIPES ' }}{% endif %}"
         "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def with_template(tokenizer, template: str | None):
    """A copy of `tokenizer` with another chat template (None: its own)."""
    copy = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    if template is not None:
        copy.chat_template = template
    return copy


def random_text(rng: random.Random, tokenizer) -> str:
    """Words, markup, Jinja syntax, special tokens and unicode, with random whitespace around them."""
    pieces = ["rain", "Zebra", "JSON", "<b>", "{{ x }}", "{%", "%}", "\\", '"', "'", "日本語", "é", "😀", "</think>",
              "<think>", tokenizer.eos_token, tokenizer.bos_token or "", "\n", "\n\n", "\t", "  "]
    text = " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
    return rng.choice(["", " ", "\n", "  \t"]) + text + rng.choice(["", " ", "\n\n", " \t "]) + "end"


def random_conversations(tokenizer, count: int, seed: int = 0):
    rng = random.Random(seed)
    return [(random_text(rng, tokenizer) if rng.random() < 0.5 else None, random_text(rng, tokenizer),
             random_text(rng, tokenizer)) for _ in range(count)]


@pytest.mark.parametrize("template, form", [(None, "as is"), (LLAMA3, "stripped")])
def test_spliced_texts_equal_the_rendered_template_on_random_conversations(smollm2_tokenizer, template, form):
    tokenizer = with_template(smollm2_tokenizer, template)
    rendered, spliced = ChatEncoder(tokenizer), ChatEncoder(tokenizer, fast=True)
    assert spliced.spliced is not None and spliced.spliced.form == form
    conversations = random_conversations(tokenizer, 300)
    assert any(system is None for system, _, _ in conversations) and any(conversations[i][0] for i in range(9))
    for conversation in conversations:
        assert spliced.spliced.texts(*conversation) == (rendered_prompt_and_whole(tokenizer, *conversation))
        assert spliced.spliced_texts(*conversation) == rendered.texts(*conversation)
    assert spliced.encode_many(conversations) == [rendered.encode(*conversation) for conversation in conversations]


def rendered_prompt_and_whole(tokenizer, system, prompt, response):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return (tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
            tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False))


def test_a_template_that_changes_contents_is_not_spliced(smollm2_tokenizer):
    assert SplicedTemplate.of(with_template(smollm2_tokenizer, THINKING)) is None
    upper = with_template(smollm2_tokenizer, LLAMA3.replace("| trim", "| trim | upper"))
    assert SplicedTemplate.of(upper) is None
    encoder = ChatEncoder(upper, fast=True)
    conversation = ("system", "a prompt", "an answer")
    assert encoder.encode_many([conversation]) == [encoder.encode(*conversation)]


def test_a_template_branching_on_an_unprobed_word_is_caught_and_rendered(tmp_path, smollm2_tokenizer):
    tokenizer = with_template(smollm2_tokenizer, ZEBRA)
    encoder = ChatEncoder(tokenizer, fast=True)
    assert encoder.spliced is not None  # no probe says "zebra"
    plain = [(None, f"prompt {i}", f"answer {i}") for i in range(VERIFY_EVERY)]
    encoder.encode_many(plain)  # the first is rendered too, and agrees
    with pytest.raises(SpliceMismatch):
        encoder.encode_many([(None, "a zebra", "an answer")])

    records = [{"x1": f"Describe a zebra {i}.", "x2": f"Describe a horse {i}.", "y1": "Stripes.", "y2": "A mane."}
               for i in range(250)]
    data = tmp_path / "zebra.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    examples, _ = prepared_examples(data, tokenizer, tmp_path / "cache", num_proc=2)
    assert list(examples) == load_examples(data, tokenizer)[0]
