"""A tokenizer's byte-level BPE run by tiktoken: the same token ids, four times faster on one core.

Preparing a data set is bound by the tokenizer: the `tokenizers` backend encodes SmolLM2's chat texts at
about 4 MB/s on one core, tiktoken's BPE (the engine of OpenAI's and Llama 3's tokenizers) at about
17 MB/s. Both implement byte-level BPE, and their algorithms agree when the vocabulary is a plain
GPT-2-style one:

- text is split on the added tokens (none inside another), then into words by one regex (GPT-2's
  `ByteLevel` pre-tokenizer, or a `Split` regex before a `ByteLevel` without its own), with no normalizer,
  or NFC (Qwen2's) for texts already in NFC: every piece of such a text is in NFC too (slicing cannot
  bring together characters that compose), so the backend's normalizer leaves it as it is;
- `tokenizers` merges the adjacent pair that comes first in the merge list, tiktoken the adjacent pair
  whose concatenation has the lowest rank. With rank = token id, these are the same order when the
  merges create their tokens in increasing id order, and every multi-byte token is a merge's product.

`TiktokenTwin.of` checks those conditions on the tokenizer's own JSON, then encodes `PROBES` both ways,
and returns None (the backend stays) if anything differs. A vocabulary may lack some bytes (SmolLM2 has
no token for a few control characters): the backend drops them, tiktoken cannot, so texts holding them
are left to the backend, as are texts not in NFC under an NFC normalizer. What no static check rules
out (a word whose merges could reach one token two ways) `ChatEncoder` guards by re-encoding every
`VERIFY_EVERY`-th conversation with the backend and raising `EncodingMismatch` on a difference.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

import tiktoken

NFC = {"type": "NFC"}  # the only normalizer a twin reproduces, and on texts already in NFC only
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

PROBES = [
    "Write a haiku about rain. Use at most 17 words, in lowercase.",
    "  leading and trailing spaces  \n\n\t tabs\r\nand CRLF   \n",
    "It's we'll they've I'M YOU'LL she'd 'quoted' don't",
    "Numbers: 3.14159, 1,000,000, 2026-12-04, x^2+y^2=z^2, 007",
    "Ünïcødé — 日本語のテキスト, русский текст, العربية, 😀🎉👍🏽, e\u0301, \u00a0nbsp\u3000ideographic",
    "<b>markup</b> & {{ jinja }} {% raw %} \\ \" ' <think>\nreasoning\n</think>\n\n",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\n    \n",
]


class EncodingMismatch(Exception):
    """tiktoken's ids for a text differ from the tokenizer backend's."""


@dataclass(frozen=True)
class TiktokenTwin:
    """A `tiktoken.Encoding` giving the ids of a tokenizer's backend (added tokens matched in the text, no
    special tokens added), for every text without a character the vocabulary has no bytes for (and in NFC,
    if the tokenizer normalizes to NFC)."""

    encoding: tiktoken.Encoding
    unencodable: re.Pattern | None  # the characters holding a byte that no token stands for
    nfc: bool = False  # the backend normalizes to NFC: only texts already in NFC are encoded

    @classmethod
    def of(cls, tokenizer) -> TiktokenTwin | None:
        """The twin of `tokenizer`, or None where tiktoken cannot reproduce it."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        spec = json.loads(backend.to_str())
        pattern, ranks = _pattern(spec), _mergeable_ranks(spec)
        added, normalizer = spec.get("added_tokens") or [], spec.get("normalizer")
        if (pattern is None or ranks is None or normalizer not in (None, NFC)
                or spec.get("truncation") is not None or spec.get("padding") is not None
                or any(token["lstrip"] or token["rstrip"] or token["single_word"] for token in added)
                or _overlapping(added)):
            return None
        missing = {byte for byte in range(256) if bytes([byte]) not in ranks}
        if any(0x80 <= byte < 0xC0 for byte in missing):  # a continuation byte: in too many characters
            return None
        nfc = normalizer == NFC
        probes = [*PROBES, "".join(token["content"] + " a" for token in added)]
        try:
            twin = cls(tiktoken.Encoding(f"{tokenizer.name_or_path}-twin", pat_str=pattern, mergeable_ranks=ranks,
                                         special_tokens={token["content"]: token["id"] for token in added}),
                       _unencodable(missing), nfc)
            agrees = all(twin.encode(probe) == backend.encode(probe, add_special_tokens=False).ids
                         for probe in (unicodedata.normalize("NFC", probe) if nfc else probe for probe in probes))
        # A regex tiktoken cannot compile raises ValueError; one it runs wrongly (an alternative matching the
        # empty string) panics its Rust core, and pyo3's PanicException derives from BaseException.
        except BaseException as error:
            if not isinstance(error, Exception) and type(error).__name__ != "PanicException":
                raise
            return None
        return twin if agrees else None

    def encode(self, text: str) -> list[int] | None:
        """The ids of `text`, or None if it holds a character the twin cannot encode, is not in NFC where the
        tokenizer normalizes to NFC, or holds a whitespace run too long for tiktoken's regex engine (a million
        characters)."""
        if ((self.unencodable is not None and self.unencodable.search(text))
                or (self.nfc and not unicodedata.is_normalized("NFC", text))):
            return None
        try:
            return self.encoding.encode(text, allowed_special="all")
        except ValueError:
            return None


def _overlapping(added: list[dict]) -> bool:
    """Whether the backend and tiktoken could match different added tokens in one text: the backend matches
    the longest, tiktoken the first of its alternation (in hash order), so no token may lie inside another;
    and the backend matches the tokens it does not normalize first, so with both kinds, none may end with
    the start of another."""
    contents = [token["content"] for token in added]
    joined = "\0".join(contents)
    if any(joined.count(content) > 1 for content in contents):
        return True
    if len({token["normalized"] for token in added}) < 2:
        return False
    starts = {content[:end] for content in contents for end in range(1, len(content))}
    return any(content[start:] in starts for content in contents for start in range(1, len(content)))


def _pattern(spec: dict) -> str | None:
    """The one regex that splits text into words, if the pre-tokenizer is byte-level and nothing else."""
    pre_tokenizer = spec.get("pre_tokenizer") or {}
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    *before, byte_level = steps or [{}]
    if byte_level.get("type") != "ByteLevel" or byte_level.get("add_prefix_space"):
        return None
    if not before and byte_level.get("use_regex", True):
        return GPT2_PATTERN
    if (len(before) == 1 and not byte_level.get("use_regex", True) and before[0].get("type") == "Split"
            and before[0].get("behavior") == "Isolated" and not before[0].get("invert")
            and "Regex" in before[0].get("pattern", {})):
        return before[0]["pattern"]["Regex"]
    return None


def _mergeable_ranks(spec: dict) -> dict[bytes, int] | None:
    """tiktoken's ranks (token bytes to id) for a byte-level BPE model whose merge order is its id order:
    the 256 byte tokens and every merge's product. None for any other model."""
    model = spec.get("model") or {}
    if (model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback")
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")):
        return None
    vocab, byte_of = model["vocab"], _byte_level_alphabet()
    merged = [vocab.get("".join(merge.split(" ", 1) if isinstance(merge, str) else merge))
              for merge in model["merges"]]
    if None in merged or any(first >= second for first, second in zip(merged, merged[1:])):
        return None
    products = set(merged)
    ranks = {}
    for token, token_id in vocab.items():
        if any(character not in byte_of for character in token):
            return None
        if len(token) == 1 or token_id in products:
            ranks[bytes(byte_of[character] for character in token)] = token_id
        elif model.get("ignore_merges"):  # the backend emits it for a word spelled exactly so; tiktoken would not
            return None
    return ranks


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in for every byte (`bytes_to_unicode`), inverted: character to byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{chr(byte): byte for byte in printable}, **{chr(256 + n): byte for n, byte in enumerate(others)}}


def _unencodable(missing: set[int]) -> re.Pattern | None:
    """A character class matching every character whose UTF-8 encoding holds one of the `missing` bytes,
    none of them a continuation byte: an ASCII byte is its own character, a lead byte starts a range."""
    ranges = []
    for byte in sorted(missing):
        if byte < 0x80:
            ranges.append((byte, byte))
        elif 0xC2 <= byte < 0xE0:  # two bytes: 5 payload bits in the lead byte, 6 in the next
            ranges.append(((byte & 0x1F) << 6, (byte & 0x1F) << 6 | 0x3F))
        elif 0xE0 <= byte < 0xF0:  # three bytes, from U+0800
            ranges.append((max((byte & 0x0F) << 12, 0x800), (byte & 0x0F) << 12 | 0xFFF))
        elif 0xF0 <= byte < 0xF5:  # four bytes, from U+10000 to U+10FFFF
            ranges.append((max((byte & 0x07) << 18, 0x10000), min((byte & 0x07) << 18 | 0x3FFFF, 0x10FFFF)))
        # 0xC0, 0xC1 and 0xF5-0xFF never occur in UTF-8
    if not ranges:
        return None
    return re.compile("[" + "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in ranges) + "]")
