"""A chat template rendered once per conversation shape, then filled in by joining strings.

Rendering a Jinja chat template costs about 50 us a call, two calls per conversation (the prompt, and the
prompt with its response); at 120,000 IOPO records that is as long as a fifth of the tokenizer's work.
Most templates only place each message's content in fixed text (`'<|im_start|>' + role + '\\n' +
content + '<|im_end|>\\n'`), so the text of any conversation of a given shape (with or without a system
message) is the fixed pieces of one rendering with placeholder contents, joined with the real contents.

That is exact only for templates that treat contents as opaque. `SplicedTemplate.of` renders probe
contents chosen to show what templates do to contents (surrounding whitespace, markup and Jinja syntax,
the template's own special tokens, `<think>` blocks, case, non-ASCII) both ways; it splices only when every
probe is byte-identical, with each content placed as it is, or stripped where the template applies
`| trim` (Llama 3, Gemma). A template that changes a content in any other way, or branches on it (Qwen3
and DeepSeek-R1 split `<think>` out of an assistant turn), is not spliced, and every conversation is
rendered. What probes cannot rule out (a template testing for some word), `ChatEncoder` guards by
rendering every `VERIFY_EVERY`-th conversation and comparing (see `data.ChatEncoder.encode_many`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Placeholder contents: letters and digits only, so that no escaping or trimming can alter them.
SLOTS = ("IOPOSLOTSYSTEM7F3A9C", "IOPOSLOTUSER7F3A9C", "IOPOSLOTASSISTANT7F3A9C")
_SLOT_PATTERN = re.compile("|".join(SLOTS))
CONTENT_FORMS = {"as is": lambda content: content, "stripped": str.strip}


def _probes(tokenizer) -> list[tuple[str, str, str]]:
    """(system, user, assistant) contents that a template transforming or inspecting contents renders
    differently from a splice."""
    specials = " ".join(str(token) for token in (tokenizer.bos_token, tokenizer.eos_token) if token)
    return [
        ("You are terse.", "Write a haiku about rain.", "Rain on the roof."),
        ("  padded system \n", "\n\t padded user  ", " padded answer\n\n"),
        ("<b>bold</b> & {{ x }}", "{% raw %} {# no comment #} \\ \" ' %}", "<script>'&'</script> {{ y }}"),
        (f"{specials} system", f"user {specials}\n", f"<think>\nreasoning\n</think>\n\nthe answer {specials}"),
        ("UPPER lower MiXeD", "Ünïcødé — 日本語 😀", "line one\nline two\n\nline four"),
    ]


class SpliceMismatch(Exception):
    """A spliced conversation differs from the template's rendering of it."""


@dataclass(frozen=True)
class _Rendering:
    """A rendered text cut at its placeholders: `pieces[0] + content[slots[0]] + pieces[1] + ...`."""

    pieces: tuple[str, ...]
    slots: tuple[int, ...]

    @classmethod
    def of(cls, text: str) -> _Rendering:
        return cls(tuple(_SLOT_PATTERN.split(text)),
                   tuple(SLOTS.index(match.group()) for match in _SLOT_PATTERN.finditer(text)))

    def fill(self, contents: tuple[str, ...]) -> str:
        parts = [self.pieces[0]]
        for slot, piece in zip(self.slots, self.pieces[1:]):
            parts += (contents[slot], piece)
        return "".join(parts)


class SplicedTemplate:
    """The chat template's prompt and full texts of (system, prompt, response), by joining strings."""

    def __init__(self, tokenizer, form: str):
        self.form = form
        self.renderings = {
            (has_system, generation): _Rendering.of(render(tokenizer, _messages(*SLOTS, has_system, generation),
                                                           generation))
            for has_system in (False, True) for generation in (False, True)
        }

    @classmethod
    def of(cls, tokenizer) -> SplicedTemplate | None:
        """The splice of `tokenizer`'s template, or None if a probe shows that it is not exact (or the template
        renders no system message: then every conversation is rendered, and fails or not, as before)."""
        try:
            rendered = [(probe, has_system, generation,
                         render(tokenizer, _messages(*probe, has_system, generation), generation))
                        for probe in _probes(tokenizer) for has_system in (False, True) for generation in (False, True)]
        except Exception:  # noqa: BLE001 - a template may raise anything (Gemma's raise_exception, say)
            return None
        for form in CONTENT_FORMS:
            spliced = cls(tokenizer, form)
            if all(spliced.renderings[has_system, generation].fill(spliced._contents(*probe)) == text
                   for probe, has_system, generation, text in rendered):
                return spliced
        return None

    def texts(self, system: str | None, prompt: str, response: str) -> tuple[str, str]:
        """(the prompt with the generation prompt, the whole conversation), as `render` gives them."""
        contents = self._contents(system or "", prompt, response)
        return (self.renderings[bool(system), True].fill(contents), self.renderings[bool(system), False].fill(contents))

    def _contents(self, system: str, prompt: str, response: str) -> tuple[str, str, str]:
        form = CONTENT_FORMS[self.form]
        return form(system), form(prompt), form(response)


def render(tokenizer, messages: list[dict], generation: bool) -> str:
    """The template's text of `messages`: with the generation prompt (a prompt), or without (a whole chat)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _messages(system: str | None, prompt: str, response: str, has_system: bool, generation: bool) -> list[dict]:
    """The messages of a prompt (`generation`) or of a whole conversation."""
    messages = ([{"role": "system", "content": system}] if has_system else []) + [{"role": "user", "content": prompt}]
    return messages if generation else messages + [{"role": "assistant", "content": response}]
