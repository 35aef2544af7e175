"""The constraints of the bundled demo data: how an instruction states them and how a response is checked.

One `Kind` per constraint kind: the sentence that states it (`template`, one `{}` per argument), the
slot it fills (an instruction has at most one constraint per slot), and the program that checks a
response. `parse_constraints` reads the constraints back from an instruction's text, so a record, or
a model's response to one of its instructions, can be checked on its own. The data generator
(`examples/make_demo_data.py`) and the `demo` evaluation benchmark both use these checkers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

DEFAULT_LANGUAGE = "English"
LANGUAGE_MARKERS = {
    "English": frozenset(
        "the and is are your you of to with for it can more this that from before after help helps "
        "keeps every each makes when into many in".split()
    ),
    "French": frozenset(
        "le les et est des du une vous votre vos pour avec plus sont très qui ce il elle aide chaque "
        "sans au aux dans pendant avant après bien fait peut".split()
    ),
    "Spanish": frozenset(
        "el los las y es del una tu tus para con más muy cada sin al ayuda puede antes después "
        "durante mejor por lo muchos mucha muchas hace".split()
    ),
}

WORD = re.compile(r"\w+(?:['’-]\w+)*")
LETTERS = re.compile(r"[^\W\d_]+")


def count_words(text: str) -> int:
    """Words as runs of letters or digits; an apostrophe or hyphen inside a word keeps it one word."""
    return len(WORD.findall(text))


def detect_language(text: str) -> str | None:
    """The language whose closed list of marker words occurs most often in `text`; None on a tie."""
    words = LETTERS.findall(text.lower())
    hits = {language: sum(word in markers for word in words) for language, markers in LANGUAGE_MARKERS.items()}
    ranked = sorted(hits, key=hits.get, reverse=True)
    return ranked[0] if hits[ranked[0]] > hits[ranked[1]] else None


def contains_word(response: str, word: str) -> bool:
    """Whether `word` occurs as a whole word, in any letter case."""
    return re.search(rf"\b{re.escape(word)}\b", response, re.IGNORECASE) is not None


def bullet_count(response: str) -> int:
    return sum(line.startswith("- ") for line in response.splitlines())


def is_json_object_with_keys(response: str, *keys: str) -> bool:
    """Whether the whole response is a JSON object with exactly these keys and non-empty string values."""
    try:
        answer = json.loads(response)
    except json.JSONDecodeError:
        return False
    return (
        isinstance(answer, dict)
        and set(answer) == set(keys)
        and all(isinstance(value, str) and value.strip() for value in answer.values())
    )


def ends_with(response: str, phrase: str) -> bool:
    """Whether the response ends with `phrase`, in any letter case."""
    return response.rstrip().lower().endswith(phrase.lower())


@dataclass(frozen=True)
class Kind:
    """One kind of constraint: the slot it fills, its instruction text and its checker.

    `template` holds one `{}` per argument; `arg_pattern` matches one argument when the text is read back.
    """

    slot: str
    template: str
    check: Callable[..., bool]
    arg_pattern: str = ""
    arg_type: type = str

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.template).replace(re.escape("{}"), f"({self.arg_pattern})"))


COUNT = r"\d+"
KINDS = {
    "max_words": Kind("length", "Answer in at most {} words.", lambda response, limit: count_words(response) <= limit,
                      COUNT, int),
    "exact_words": Kind("length", "Answer in exactly {} words.", lambda response, limit: count_words(response) == limit,
                        COUNT, int),
    "min_words": Kind("length", "Answer in at least {} words.", lambda response, limit: count_words(response) >= limit,
                      COUNT, int),
    "include": Kind("keyword", "Include the word '{}'.", contains_word, LETTERS.pattern),
    "exclude": Kind("keyword", "Do not use the word '{}'.", lambda response, word: not contains_word(response, word),
                    LETTERS.pattern),
    # As IFEval's: a text with no cased letter is in neither case.
    "lowercase": Kind("case", "Write entirely in lowercase.", str.islower),
    "uppercase": Kind("case", "Write entirely in UPPERCASE.", str.isupper),
    "bullets": Kind("layout", "Answer as a list of exactly {} bullet points starting with '- '.",
                    lambda response, count: bullet_count(response) == count, COUNT, int),
    "json": Kind("layout", "Answer as a JSON object with keys '{}' and '{}'.", is_json_object_with_keys, r"\w+"),
    "ending": Kind("ending", "End your answer with '{}'", ends_with, r"[^']+"),
    "language": Kind("language", "Answer in {}.", lambda response, language: detect_language(response) == language,
                     "|".join(LANGUAGE_MARKERS)),
}
SLOTS = {slot: [name for name, kind in KINDS.items() if kind.slot == slot] for slot in
         dict.fromkeys(kind.slot for kind in KINDS.values())}
CONFLICTING_KINDS = frozenset(
    frozenset({"json", other}) for other in ("ending", "uppercase", "max_words", "exact_words", "min_words")
)


@dataclass(frozen=True)
class Constraint:
    """One constraint of an instruction: a kind from `KINDS` and its arguments."""

    kind: str
    args: tuple = ()

    @property
    def slot(self) -> str:
        return KINDS[self.kind].slot

    def describe(self) -> str:
        """The sentence that states this constraint in an instruction."""
        return KINDS[self.kind].template.format(*self.args)

    def check(self, response: str) -> bool:
        return KINDS[self.kind].check(response, *self.args)


def parse_constraints(instruction: str) -> list[Constraint]:
    """The constraints stated in an instruction, in the order they appear."""
    found = [
        (match.start(), Constraint(name, tuple(kind.arg_type(arg) for arg in match.groups())))
        for name, kind in KINDS.items()
        for match in kind.pattern.finditer(instruction)
    ]
    return [constraint for _, constraint in sorted(found, key=lambda start_and_constraint: start_and_constraint[0])]


def broken(response: str, constraints: Sequence[Constraint]) -> list[Constraint]:
    """The constraints that `response` does not meet."""
    return [constraint for constraint in constraints if not constraint.check(response)]


def compatible(constraints: Sequence[Constraint]) -> bool:
    """At most one constraint per slot, and no pair of kinds that contradict each other.

    A JSON answer cannot end with a phrase, hold upper-case keys, or be counted in words unambiguously.
    """
    kinds = [constraint.kind for constraint in constraints]
    slots = {constraint.slot for constraint in constraints}
    return len(slots) == len(constraints) and not any(
        frozenset({first, second}) in CONFLICTING_KINDS for first, second in combinations(kinds, 2)
    )
