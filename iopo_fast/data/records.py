"""Training records on disk to token-id examples.

Accepted record formats (in any source `iopo_fast.data.sources` reads: JSON Lines, a JSON array, Parquet, a
folder of those, a saved or Hub `datasets` data set, a LLaMA-Factory `dataset_info.json` entry):

- the original IOPO release: `{"conversations": [{"from": "human", "value": x1}, {"from": "human",
  "value": x2}], "chosen": {"from": "gpt", "value": y1}, "rejected": {"from": "gpt", "value": y2}}`.
  The names are the release's and mislead: "rejected" is y2, the response that follows x2, preferred
  for x2 and rejected only for x1 (the roles `chosen_v2` and `rejected_v2` of `loss.IOPO` carry the
  same names);
- flat IOPO: `{"x1": ..., "x2": ..., "y1": ..., "y2": ...}`;
- DPO: `{"prompt": ..., "chosen": ..., "rejected": ...}` (DPO and SFT modes only);
- SFT (SFT mode only): `{"prompt": ..., "response": ...}` (or Alpaca's `"instruction"`, an optional `"input"`
  appended after a blank line, `"output"`), or one user and one assistant turn, after an optional system
  turn: `{"messages": [{"role": "user", "content": x}, {"role": "assistant", "content": y}]}` or ShareGPT's
  `"conversations"` with `"from"` "human" and "gpt" (a gpt turn tells it from the IOPO release's format).

Every format takes an optional `"system"` string (a chat's system turn takes its place). In DPO mode an
IOPO record gives the two DPO pairs that carry its four sequences: (x1: y1 over y2) and (x2: y2 over y1). In
SFT mode it gives its two responses that follow their own instruction, (x1, y1) and (x2, y2); a DPO record
gives (x, y_w), an SFT record itself. Both are read from the objective's roles (`Objective.preference_pairs`,
`Objective.preferred_sequences`).

A record that cannot be used is rejected with its file, line (or array index) and reason: skipped and
written to the rejection log by default, or raised as `DataError` in strict mode. Good records are
never affected by bad ones.

Truncation policy: responses are never cut (a cut response loses its end of turn, and may no longer
satisfy the constraints it is the preferred answer for). When the longest of an example's sequences
exceeds `cutoff_len`, its prompts lose tokens from the start, keeping the end of the instruction and
the assistant header, until every sequence fits. If that leaves fewer than `MIN_PROMPT_TOKENS` for
a prompt, the record is rejected.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .chat_splice import SpliceMismatch, SplicedTemplate, render
from ..loss import Objective
from .examples import DPOExample, Example, IOPOExample, SFTExample
from .sources import DataError, DataSource, check_source, read_records, resolve_source
from .tiktoken_twin import EncodingMismatch, TiktokenTwin

MIN_PROMPT_TOKENS = 8
LOSS_MODES = ("iopo", "dpo", "sft")
# Of the conversations a fast path makes, one in this many is also made the plain way (the template rendered,
# the backend tokenizer).
VERIFY_EVERY = 64


class _Chat(NamedTuple):
    """The layout of a chat record's turns: the keys of a turn's role and text, and the roles' names."""

    role: str
    text: str
    user: str
    assistant: str


# The chat formats of an SFT record, by the key that holds its turns.
CHATS = {"messages": _Chat("role", "content", "user", "assistant"),
         "conversations": _Chat("from", "value", "human", "gpt")}  # ShareGPT's


@dataclass
class TextExample:
    """One example as strings: prompts (x1, x2) or (x,), responses (y1, y2), (y_w, y_l) or (y,)."""

    source: str
    system: str | None
    prompts: tuple[str, ...]
    responses: tuple[str, ...]


class RejectionLog:
    """Collects rejected records, writes them to `path` as JSON Lines, or raises in strict mode."""

    def __init__(self, path: str | Path | None = None, strict: bool = False):
        self.path = Path(path) if path is not None else None
        self.strict = strict
        self.reasons: Counter[str] = Counter()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def reject(self, source: str, reason: str, record: object) -> None:
        if self.strict:
            raise DataError(f"{source}: {reason}")
        self.reasons[reason.split(":")[0]] += 1
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as log:
                log.write(json.dumps({"source": source, "reason": reason, "record": record}, ensure_ascii=False) + "\n")

    @property
    def count(self) -> int:
        return sum(self.reasons.values())


@dataclass
class DataStats:
    """What loading one file did."""

    path: str
    records: int = 0
    examples: int = 0
    truncated: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def summary(self, rejection_log: RejectionLog | None = None) -> str:
        text = f"{self.path}: {self.records} records, {self.examples} examples, {self.truncated} truncated"
        if self.rejected:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.rejected.most_common())
            text += f", {sum(self.rejected.values())} rejected ({reasons})"
            if rejection_log is not None and rejection_log.path is not None:
                text += f", see {rejection_log.path}"
        return text


def load_examples(
    path: str | Path | DataSource,
    tokenizer,
    loss: str = "iopo",
    cutoff_len: int = 1024,
    rejection_log: RejectionLog | None = None,
) -> tuple[list[Example], DataStats]:
    """Read, validate, tokenize and truncate the records of `path` (any `sources.resolve_source` name) into
    IOPO, DPO or SFT examples (`loss`)."""
    if loss not in LOSS_MODES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSS_MODES)}")
    rejection_log = rejection_log if rejection_log is not None else RejectionLog()
    encoder = ChatEncoder(tokenizer)
    data_source = resolve_source(path)
    check_source(data_source)
    stats = DataStats(str(data_source))
    rejected_before = Counter(rejection_log.reasons)
    examples: list[Example] = []
    for source, record, invalid_json in read_records(data_source):
        stats.records += 1
        if invalid_json:
            rejection_log.reject(source, invalid_json, record)
            continue
        try:
            for text in _parse_record(source, record, loss):
                example, truncated = _tokenize(text, encoder, cutoff_len)
                examples.append(example)
                stats.truncated += truncated
        except _Rejected as rejection:
            rejection_log.reject(source, str(rejection), record)
    stats.examples = len(examples)
    stats.rejected = rejection_log.reasons - rejected_before
    if not examples:
        raise DataError(f"{path}: no usable examples ({stats.records} records, all rejected)")
    return examples, stats


class _Rejected(Exception):
    """Raised inside this module for a record that cannot be used; the message is the reason."""


def _parse_record(source: str, record: object, loss: str) -> list[TextExample]:
    """The examples one record gives in `loss` mode, or `_Rejected` with the reason."""
    if not isinstance(record, dict):
        raise _Rejected("not a JSON object")
    system = _optional_string(record, "system")
    if record.get("conversations") is not None and not _is_chat(record, "conversations"):
        turns = record["conversations"]
        if not isinstance(turns, list) or len(turns) != 2:
            raise _Rejected("'conversations' must hold exactly two human turns (x1, x2)")
        x1, x2 = (_message_text(dict(enumerate(turns)), i, f"conversations[{i}]") for i in range(2))
        y1, y2 = (_message_text(record, key, key) for key in ("chosen", "rejected"))
    elif record.get("x1") is not None or record.get("x2") is not None:
        x1, x2, y1, y2 = (_required_string(record, name) for name in ("x1", "x2", "y1", "y2"))
    elif record.get("prompt") is not None and (record.get("chosen") is not None or record.get("rejected") is not None):
        prompt, chosen, rejected = (_required_string(record, name) for name in ("prompt", "chosen", "rejected"))
        if loss == "iopo":
            raise _Rejected("a DPO record (prompt/chosen/rejected) has no second instruction: train it with loss: dpo")
        _check_distinct(("chosen", chosen), ("rejected", rejected))
        return _derived(TextExample(source, system, (prompt,), (chosen, rejected)), DPOExample.objective, loss)
    elif record.get("conversations") is not None or record.get("messages") is not None:
        key = "conversations" if record.get("conversations") is not None else "messages"
        turn_system, prompt, response = _chat_texts(record, key)
        label = f"{CHATS[key].user}/{CHATS[key].assistant} {key}"
        return _sft(TextExample(source, turn_system or system, (prompt,), (response,)), label, loss)
    elif record.get("prompt") is not None or record.get("instruction") is not None:
        prompt_key, response_key = _present(record, "prompt", "instruction"), _present(record, "response", "output")
        prompt, response = _required_string(record, prompt_key), _required_string(record, response_key)
        context = record.get("input")  # Alpaca's, often ""
        if context is not None and not isinstance(context, str):
            raise _Rejected("field 'input' is not a string")
        if context and context.strip():
            prompt = f"{prompt}\n\n{context}"
        return _sft(TextExample(source, system, (prompt,), (response,)), f"{prompt_key}/{response_key}", loss)
    else:
        raise _Rejected("unrecognised record: expected conversations/chosen/rejected, x1/x2/y1/y2, "
                        "prompt/chosen/rejected, prompt/response or messages")
    _check_distinct(("x1", x1), ("x2", x2))
    _check_distinct(("y1", y1), ("y2", y2))
    return _derived(TextExample(source, system, (x1, x2), (y1, y2)), IOPOExample.objective, loss)


def _sft(text: TextExample, label: str, loss: str) -> list[TextExample]:
    """The examples of an SFT record (`label` names its format), which only SFT mode trains on."""
    if loss != SFTExample.objective.name:
        raise _Rejected(f"an SFT record ({label}) has one response: train it with loss: sft")
    return _derived(text, SFTExample.objective, loss)


def _derived(text: TextExample, objective: Objective, loss: str) -> list[TextExample]:
    """The examples of `loss` that `text`, an example of `objective`, holds: itself, its DPO pairs, or its
    preferred (prompt, response) sequences for SFT, as the objective defines them."""
    if loss == objective.name:
        return [text]
    if loss == "dpo":
        triples = objective.preference_pairs()
        return [dataclasses.replace(text, prompts=(text.prompts[p],), responses=(text.responses[w], text.responses[l]))
                for p, w, l in triples]
    return [dataclasses.replace(text, prompts=(text.prompts[p],), responses=(text.responses[r],))
            for p, r in objective.preferred_sequences()]


def _required_string(container: dict, key: str, label: str | None = None) -> str:
    """`container[key]` as a non-empty string, or `_Rejected` naming the field as `label`."""
    label = label or key
    if key not in container or container[key] is None:
        raise _Rejected(f"missing field '{label}'")
    value = container[key]
    if not isinstance(value, str):
        raise _Rejected(f"field '{label}' is not a string")
    if not value.strip():
        raise _Rejected(f"empty field '{label}'")
    return value


def _optional_string(record: dict, key: str) -> str | None:
    return _required_string(record, key) if record.get(key) is not None else None


def _present(record: dict, *keys: str) -> str:
    """The first of `keys` that `record` holds, else the first (for the message of the missing field)."""
    return next((key for key in keys if record.get(key) is not None), keys[0])


def _is_chat(record: dict, key: str) -> bool:
    """Whether the turns under `key` hold an assistant turn (an SFT chat, not the IOPO release's two instructions)."""
    turns, chat = record[key], CHATS[key]
    return isinstance(turns, list) and any(isinstance(turn, dict) and turn.get(chat.role) == chat.assistant
                                           for turn in turns)


def _chat_texts(record: dict, key: str) -> tuple[str | None, str, str]:
    """(system turn or None, prompt, response) of the turns under `key`: an optional system turn, then one user
    turn and one assistant turn."""
    chat = CHATS[key]
    turns = record[key] if isinstance(record[key], list) else []
    roles = [turn.get(chat.role) if isinstance(turn, dict) else None for turn in turns]
    if roles not in ([chat.user, chat.assistant], ["system", chat.user, chat.assistant]):
        raise _Rejected(f"'{key}' must hold one {chat.user} turn and one {chat.assistant} turn, "
                        "after an optional system turn")
    texts = [_required_string(turn, chat.text, f"{key}[{i}].{chat.text}") for i, turn in enumerate(turns)]
    return (texts[0] if len(texts) == 3 else None), texts[-2], texts[-1]


def _message_text(container: dict, key: str, label: str) -> str:
    """The text of a `{"from": ..., "value": ...}` message at `container[key]` (a plain string is accepted too)."""
    message = container.get(key)
    if isinstance(message, dict):
        return _required_string(message, "value", f"{label}.value")
    return _required_string(container, key, label)


def _check_distinct(first: tuple[str, str], second: tuple[str, str]) -> None:
    if first[1].strip() == second[1].strip():
        raise _Rejected(f"{first[0]} identical to {second[0]}")


class ChatEncoder:
    """Splits a chat-templated conversation into prompt ids and response ids.

    The prompt is everything up to and including the assistant header (the template's generation
    prompt); the response is the assistant's text plus the end-of-turn token, and nothing after it.
    `encode` renders the template for every conversation and tokenizes with the tokenizer. With `fast`,
    `encode_many` joins the pieces of a `SplicedTemplate` instead of rendering, and tokenizes with a
    `TiktokenTwin` of the tokenizer, where there are ones; it makes one conversation in `VERIFY_EVERY` the
    plain way too, and raises `SpliceMismatch` or `EncodingMismatch` if it differs.
    """

    def __init__(self, tokenizer, fast: bool = False):
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
        self.tokenizer = tokenizer
        self.end_of_turn = tokenizer.eos_token
        self.spliced = SplicedTemplate.of(tokenizer) if fast else None
        self.spliced_count = 0  # conversations spliced so far: every VERIFY_EVERY-th is also rendered
        self.twin = TiktokenTwin.of(tokenizer) if fast else None
        self.twin_count = 0  # conversations encoded by the twin so far: every VERIFY_EVERY-th also by the backend

    @property
    def method(self) -> str:
        """How `encode_many` makes the token ids, in words."""
        return (f"chat template {'spliced' if self.spliced else 'rendered'}, "
                f"{'tiktoken' if self.twin else 'the tokenizer'} encoding")

    def encode(self, system: str | None, prompt: str, response: str) -> tuple[list[int], list[int]]:
        prompt_text, response_text = self.texts(system, prompt, response)
        # Encode the two parts separately so that the split never depends on a merge across it.
        return self._ids(prompt_text), self._ids(response_text)

    def texts(self, system: str | None, prompt: str, response: str) -> tuple[str, str]:
        """The templated prompt (up to the assistant header) and response (up to its end of turn)."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        prompt_text = render(self.tokenizer, messages, generation=True)
        full_text = render(self.tokenizer, messages + [{"role": "assistant", "content": response}], generation=False)
        return self._prompt_and_response(prompt_text, full_text)

    def _prompt_and_response(self, prompt_text: str, full_text: str) -> tuple[str, str]:
        if not full_text.startswith(prompt_text):
            raise DataError(f"the chat template of {self.tokenizer.name_or_path!r} does not render prompts as prefixes")
        response_text = full_text[len(prompt_text) :]
        end = response_text.rfind(self.end_of_turn) if self.end_of_turn else -1
        if end >= 0:
            response_text = response_text[: end + len(self.end_of_turn)]
        return prompt_text, response_text

    def spliced_texts(self, system: str | None, prompt: str, response: str) -> tuple[str, str]:
        """`texts` by the splice, when there is one; `SpliceMismatch` if a rendered check differs."""
        if self.spliced is None:
            return self.texts(system, prompt, response)
        texts = self._prompt_and_response(*self.spliced.texts(system, prompt, response))
        if self.spliced_count % VERIFY_EVERY == 0 and texts != self.texts(system, prompt, response):
            raise SpliceMismatch(f"the chat template of {self.tokenizer.name_or_path!r} renders a conversation "
                                 "otherwise than its placeholders")
        self.spliced_count += 1
        return texts

    def encode_many(self, conversations: list[tuple[str | None, str, str]]) -> list[tuple[list[int], list[int]]]:
        """`encode` of many conversations, their texts tokenized by the twin, or else in one batch."""
        texts = [part for conversation in conversations for part in self.spliced_texts(*conversation)]
        ids = self._backend_ids(texts) if self.twin is None else self._twin_ids(texts)
        return list(zip(ids[0::2], ids[1::2]))

    def _twin_ids(self, texts: list[str]) -> list[list[int]]:
        """The twin's ids of the (prompt, response) `texts`, the backend's for those the twin cannot encode;
        both texts of every `VERIFY_EVERY`-th conversation are encoded by both, `EncodingMismatch` if they differ."""
        ids = [self.twin.encode(text) for text in texts]
        checked = [position for position, found in enumerate(ids)
                   if found is None or (self.twin_count + position // 2) % VERIFY_EVERY == 0]
        for position, expected in zip(checked, self._backend_ids([texts[position] for position in checked])):
            if ids[position] is not None and ids[position] != expected:
                raise EncodingMismatch(f"tiktoken encodes a text otherwise than the tokenizer "
                                       f"{self.tokenizer.name_or_path!r}: {texts[position][:80]!r}")
            ids[position] = expected
        self.twin_count += len(texts) // 2
        return ids

    def _backend_ids(self, texts: list[str]) -> list[list[int]]:
        """The tokenizer's ids of `texts` in one batch (without the character offsets `tokenizer(...)` also
        computes, where the tokenizer has a Rust backend)."""
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        # The backend alone, where transformers would add nothing: no truncation or padding set on it.
        if (backend is not None and hasattr(backend, "encode_batch_fast") and backend.truncation is None
                and backend.padding is None):
            return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def conversations(text: TextExample) -> list[tuple[str | None, str, str]]:
    """The (system, prompt, response) conversations whose encodings an example is made of.

    A response's ids do not depend on its prompt, so y_j is encoded once, after its own prompt (the last
    one when there is a single prompt), and shared by the sequences that hold it.
    """
    pairs = [(text.system, prompt, response) for prompt, response in zip(text.prompts, text.responses)]
    if len(text.prompts) == 1 and len(text.responses) == 2:  # DPO: the rejected response after the prompt
        pairs.append((text.system, text.prompts[0], text.responses[1]))
    return pairs


def _tokenize(text: TextExample, encoder: ChatEncoder, cutoff_len: int) -> tuple[Example, bool]:
    """Token ids of `text`, one conversation at a time."""
    return assemble(text, [encoder.encode(*conversation) for conversation in conversations(text)], cutoff_len)


def assemble(text: TextExample, encoded: list[tuple[list[int], list[int]]], cutoff_len: int) -> tuple[Example, bool]:
    """The example of `text` from the (prompt ids, response ids) of its `conversations`, truncated by the
    module's policy; returns (example, whether truncated)."""
    prompts = [prompt for prompt, _ in encoded[: len(text.prompts)]]
    responses = [response for _, response in encoded]

    longest_response = max(len(response) for response in responses)
    if max(len(prompt) for prompt in prompts) + longest_response > cutoff_len:
        prompt_budget = cutoff_len - longest_response
        if prompt_budget < MIN_PROMPT_TOKENS:
            raise _Rejected(
                f"cannot fit in cutoff_len={cutoff_len}: a response of {longest_response} tokens leaves "
                f"{max(prompt_budget, 0)} for the prompt (at least {MIN_PROMPT_TOKENS} needed)"
            )
        prompts = [prompt[-prompt_budget:] for prompt in prompts]
        truncated = True
    else:
        truncated = False

    if len(prompts) == 2:
        return IOPOExample(prompts[0], prompts[1], responses[0], responses[1]), truncated
    if len(responses) == 1:
        return SFTExample(prompts[0], responses[0]), truncated
    return DPOExample(prompts[0], responses[0], responses[1]), truncated
