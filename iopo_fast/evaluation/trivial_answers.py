"""Answers that follow no instruction on purpose: a score is read beside what these score on the same prompts.

`TRIVIAL_ANSWERS` are four named ones (empty, ".", the prompt echoed back, one generic paragraph).
`TRIVIAL_FAMILY` is the family they belong to: every answer that ignores the task in a way a
skeptic would try, each a fixed rule applied to every prompt, so a member's score is a policy's score:

- the named four, and the echo's first sentence;
- single words: "yes", "no", "ok", each letter in either case, and the prompt's own first, last and
  longest word;
- the prompt's quoted phrases (the words most instructions ask to include, or to avoid), one per line;
- every answer above with text in each casing (as written, lower, upper, title case).

The highest score of any member is the family's floor: a model that scores at or below it has shown
nothing a rule that ignores the task could not.

Kept apart from the evaluation runner, and importing nothing heavy, so that the demo data builder
(`examples/make_demo_data.py`) can require every eval prompt to fail the whole family without loading torch.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

GENERIC_ANSWER = ("Thank you for the question. Here is a clear and helpful answer: the main points are explained "
                  "in order, each with a short example, and a brief summary closes the answer.")
# Each answer's name and how it answers a prompt.
TRIVIAL_ANSWERS: dict[str, Callable[[str], str]] = {
    "empty": lambda prompt: "", "dot": lambda prompt: ".", "echo": lambda prompt: prompt,
    "generic": lambda prompt: GENERIC_ANSWER}

_WORDS = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
# A phrase in double, curly or single quotes (not an apostrophe inside a word), or between asterisks.
_QUOTED = re.compile(r"\"([^\"\n]{1,60})\"|“([^”\n]{1,60})”|‘([^’\n]{1,60})’|(?<!\w)'([^'\n]{1,60})'(?!\w)|\*([^*\n]{1,60})\*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def _words(prompt: str) -> list[str]:
    return _WORDS.findall(prompt) or [""]


# The members with text, before casing: each a rule from the prompt to an answer.
_TEXT_RULES: dict[str, Callable[[str], str]] = {
    "echo": TRIVIAL_ANSWERS["echo"],
    "echo's first sentence": lambda prompt: _SENTENCE_END.split(prompt.strip(), maxsplit=1)[0],
    "generic": TRIVIAL_ANSWERS["generic"],
    "yes": lambda prompt: "yes", "no": lambda prompt: "no", "ok": lambda prompt: "ok",
    "first word": lambda prompt: _words(prompt)[0],
    "last word": lambda prompt: _words(prompt)[-1],
    "longest word": lambda prompt: max(_words(prompt), key=len),
    "quoted phrases": lambda prompt: "\n".join("".join(groups) for groups in _QUOTED.findall(prompt)),
}
CASINGS: dict[str, Callable[[str], str]] = {"": str, "lower": str.lower, "upper": str.upper, "title": str.title}


def _cased(rule: Callable[[str], str], change: Callable[[str], str]) -> Callable[[str], str]:
    return lambda prompt: change(rule(prompt))


def _constant(text: str) -> Callable[[str], str]:
    return lambda prompt: text


# The members in one phrase, for reports that print the family's highest.
FAMILY_DESCRIPTION = ("the named four, yes, no, ok, each letter, the prompt's first sentence, its first, last and "
                      "longest word and its quoted phrases, each text in every casing")
TRIVIAL_FAMILY: dict[str, Callable[[str], str]] = {
    "empty": TRIVIAL_ANSWERS["empty"], "dot": TRIVIAL_ANSWERS["dot"],
    **{f"letter {letter}": _constant(letter) for letter in string.ascii_letters},
    **{f"{name} {casing}".strip(): _cased(rule, change) for name, rule in _TEXT_RULES.items()
       for casing, change in CASINGS.items()},
}

