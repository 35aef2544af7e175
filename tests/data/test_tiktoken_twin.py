"""The tiktoken twin of a tokenizer: the backend's ids on fresh random texts; no twin where tiktoken's BPE is
not the tokenizer's; and where the checks at construction miss a difference, the backend check catches it
and the data is prepared the reference way."""

from __future__ import annotations

import json
import random
import unicodedata

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from iopo_fast.data.records import VERIFY_EVERY, ChatEncoder, load_examples
from iopo_fast.data.prepared import prepared_examples
from iopo_fast.data.tiktoken_twin import EncodingMismatch, TiktokenTwin

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def backend_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids


def random_text(rng: random.Random, tokenizer, vocabulary: list[str]) -> str:
    """Runs of random `vocabulary` tokens (their merges meet at the joins), of characters from many scripts,
    of whitespace, digits and the tokenizer's special tokens."""
    pieces = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.randrange(4)
        if kind == 0:
            pieces.append(tokenizer.convert_tokens_to_string(rng.choices(vocabulary, k=rng.randint(1, 8))))
        elif kind == 1:
            blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x400, 0x4FF), (0x600, 0x6FF), (0x3040, 0x30FF), (0x4E00, 0x9FFF),
                      (0x1F300, 0x1F64F), (0x300, 0x36F), (0x0, 0x1F), (0x1100, 0x11FF), (0xAC00, 0xD7A3)]
            pieces.append("".join(chr(rng.randint(*rng.choice(blocks))) for _ in range(rng.randint(1, 20))))
        elif kind == 2:
            pieces.append(rng.choice([" ", "  ", "\n", "\n\n", "\t", "\r\n", " \n ", "   \n\n  "]))
        else:
            pieces.append(rng.choice([str(rng.randint(0, 10**9)), "'s", "'LL", *tokenizer.all_special_tokens]))
    return "".join(pieces)


def modified(tokenizer, change) -> PreTrainedTokenizerFast:
    """A copy of `tokenizer` whose backend JSON `change` edits in place."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    change(spec)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))


def split_then_byte_level(spec, pattern=LLAMA3_PATTERN):  # Llama 3's pre-tokenizer: its own regex, then bytes
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def qwen2_normalizer_and_pre_tokenizer(spec):
    spec["normalizer"] = {"type": "NFC"}
    split_then_byte_level(spec, QWEN2_PATTERN)


@pytest.mark.parametrize("change", [None, split_then_byte_level, qwen2_normalizer_and_pre_tokenizer],
                         ids=["smollm2", "llama3-pre-tokenizer", "qwen2-normalizer-and-pre-tokenizer"])
def test_the_twin_gives_the_backend_ids_on_random_texts(smollm2_tokenizer, generator, change):
    tokenizer = smollm2_tokenizer if change is None else modified(smollm2_tokenizer, change)
    twin = TiktokenTwin.of(tokenizer)
    assert twin is not None
    rng, vocabulary = random.Random(generator.initial_seed()), list(tokenizer.get_vocab())
    encoded, not_nfc = 0, 0
    for _ in range(2000):
        text = random_text(rng, tokenizer, vocabulary)
        ids = twin.encode(text)
        if ids is not None:
            assert ids == backend_ids(tokenizer, text), text
            encoded += 1
        not_nfc += not unicodedata.is_normalized("NFC", text)
    # the texts the twin leaves to the backend are those with control characters (and, under NFC, not in NFC)
    assert encoded > 1000 and not_nfc > 100


def test_the_twin_leaves_to_the_backend_exactly_the_characters_holding_a_byte_without_a_token(smollm2_tokenizer):
    twin = TiktokenTwin.of(smollm2_tokenizer)
    missing = set()
    for byte in range(256):
        try:
            twin.encoding.encode_single_token(bytes([byte]))
        except KeyError:
            missing.add(byte)
    assert 0x04 in missing
    for code_point in [*range(0xD800), *range(0xE000, 0x110000)]:  # every character but the surrogates
        character = chr(code_point)
        holds_missing = not missing.isdisjoint(character.encode())
        assert holds_missing == (twin.encode(character) is None), hex(code_point)
    # and the backend drops such a byte
    assert backend_ids(smollm2_tokenizer, "a\x04b") == [*backend_ids(smollm2_tokenizer, "a"),
                                                        *backend_ids(smollm2_tokenizer, "b")]


def test_a_whitespace_run_too_long_for_tiktokens_regex_engine_is_left_to_the_backend(smollm2_tokenizer):
    encoder = ChatEncoder(smollm2_tokenizer, fast=True)
    text = "a" + " " * 10**6 + "b"  # fancy_regex's backtracking limit
    assert encoder.twin.encode(text) is None
    assert encoder.encode_many([(None, text, "c")]) == [ChatEncoder(smollm2_tokenizer).encode(None, text, "c")]


def add_token(spec, content: str, normalized: bool = False):
    spec["added_tokens"].append({"id": len(spec["model"]["vocab"]) + len(spec["added_tokens"]), "content": content,
                                 "single_word": False, "lstrip": False, "rstrip": False, "normalized": normalized,
                                 "special": not normalized})


@pytest.mark.parametrize("change", [
    lambda spec: spec.update(normalizer={"type": "Lowercase"}),
    lambda spec: spec["model"].update(dropout=0.1),
    lambda spec: spec["model"]["merges"].insert(0, spec["model"]["merges"].pop(100)),  # merge order != id order
    lambda spec: spec["pre_tokenizer"].update(add_prefix_space=True),
    lambda spec: spec["added_tokens"][1].update(lstrip=True),
    lambda spec: add_token(spec, spec["added_tokens"][1]["content"][:-2]),
    lambda spec: (add_token(spec, "<tool>", normalized=True), add_token(spec, ">call")),  # "<tool>call" differs
    lambda spec: spec.update(truncation={"direction": "Right", "max_length": 256, "strategy": "LongestFirst",
                                         "stride": 0}),
    lambda spec: split_then_byte_level(spec, r"\p{L}*| ?[^\s\p{L}\p{N}]+|\s+|\p{N}+"),  # tiktoken panics on it
], ids=["normalizer", "dropout", "merge-order", "prefix-space", "stripped-added-token", "added-token-in-another",
        "added-tokens-overlapping", "truncation", "regex-matching-nothing"])
def test_no_twin_for_a_tokenizer_tiktoken_does_not_reproduce(smollm2_tokenizer, change):
    assert TiktokenTwin.of(modified(smollm2_tokenizer, lambda spec: None)) is not None
    assert TiktokenTwin.of(modified(smollm2_tokenizer, change)) is None


def two_way_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE where "abc" is made by merging "ab" and "c", but "bc" is merged first: the backend
    stops at ["a", "bc"] (no merge joins them), tiktoken joins them into "abc" (a token). No probe spells it."""
    vocabulary = {character: index for index, character in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocabulary.update({"bc": 256, "ab": 257, "abc": 258})
    backend = Tokenizer(models.BPE(vocabulary, [("b", "c"), ("a", "b"), ("ab", "c")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHATML
    return tokenizer


def test_a_difference_the_probes_miss_is_caught_and_prepared_the_reference_way(tmp_path):
    tokenizer = two_way_tokenizer()
    twin = TiktokenTwin.of(tokenizer)
    assert twin is not None and twin.encode("abc") != backend_ids(tokenizer, "abc")
    encoder = ChatEncoder(tokenizer, fast=True)
    encoder.encode_many([(None, f"prompt {i}", f"answer {i}") for i in range(VERIFY_EVERY)])  # agree
    with pytest.raises(EncodingMismatch):
        encoder.encode_many([(None, "the abc", "an answer")])

    records = [{"x1": f"Spell abc {i}.", "x2": f"Spell xyz {i}.", "y1": "abc", "y2": "xyz"} for i in range(250)]
    data = tmp_path / "abc.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    examples, _ = prepared_examples(data, tokenizer, tmp_path / "cache", num_proc=2)
    assert list(examples) == load_examples(data, tokenizer)[0]
