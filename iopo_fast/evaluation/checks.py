"""The constraint vocabulary of the evaluation, and the verdict of one constraint on one response.

A constraint is an instruction id and its arguments:

- `demo:<kind>` (`demo:max_words`, `demo:language`, ...), the demo data's kinds, arguments
  `{"args": [...]}` in the order of the kind's template (`demo_constraints.KINDS`);
- IFBench's 58 ids (`count:word_count_range`, ...) and IFEval's 25 (`keywords:existence`, ...),
  with the keyword arguments of their official checkers (`offline_resources.checker_classes`).

Verdicts follow IFBench's `evaluation_lib`: an empty response meets nothing; *strict* checks the
response as written; *loose* also accepts it with its first and/or last line removed and/or its
asterisks removed (eight variants). A check whose NLTK resource is not on the machine is
`unsupported`, never guessed. A verdict is the same in every run and process: the official checkers run
with their random draws seeded and their stated arguments kept (`offline_resources`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .demo_constraints import KINDS, Constraint

# UNSUPPORTED: the checker needs a resource that is not installed (no verdict); ERROR: it raised on the
# response, which counts as not met and is reported apart.
MET, FAILED, UNSUPPORTED, ERROR = "met", "failed", "unsupported", "error"
MODES = ("strict", "loose")  # a verdict per mode
DEMO_PREFIX = "demo:"


class CheckError(ValueError):
    """A constraint id that is not in the vocabulary, or arguments its checker does not take."""


@dataclass(frozen=True)
class Check:
    """One constraint of a prompt: its id, its arguments and the program that tells whether a response meets it.

    `follows` may raise `LookupError` when it needs an NLTK resource that is not installed; any other
    exception is the checker failing on that response.
    """

    id: str
    kwargs: dict = field(compare=False)
    follows: Callable[[str], bool] = field(compare=False, repr=False)
    description: str = field(default="", compare=False)  # how the checker states the constraint in words
    reads_prompt: bool = field(default=False, compare=False)  # compares the response with the prompt's text

    def verdicts(self, response: str) -> tuple[str, str]:
        """(strict, loose) verdicts of this constraint on `response`. Loose is met if the response or one of
        its loose variants is; it is ERROR if none is and the checker raised on one of them."""
        try:
            strict = self._verdict(response)
            raised = strict == ERROR
            if strict != MET:
                for variant in loose_variants(response):
                    verdict = self._verdict(variant)
                    if verdict == MET:
                        return strict, MET
                    raised |= verdict == ERROR
        except LookupError:
            return UNSUPPORTED, UNSUPPORTED
        return strict, (MET if strict == MET else ERROR if raised else FAILED)

    def _verdict(self, text: str) -> str:
        """MET or FAILED for one text (an empty one meets nothing); ERROR if the checker raised on it."""
        if not text.strip():
            return FAILED
        try:
            return MET if self.follows(text) else FAILED
        except LookupError:
            raise
        except Exception:  # e.g. IFBench's ratio:overlap divides by zero on a text of one or two characters
            return ERROR


def loose_variants(response: str) -> list[str]:
    """IFBench's loose variants of a response: first and/or last line removed, and/or asterisks removed."""
    lines = response.split("\n")
    trimmed = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response.replace("*", ""), *trimmed, *(text.replace("*", "") for text in trimmed)]


def make_check(instruction_id: str, kwargs: dict, prompt: str) -> Check:
    """The `Check` of one constraint of `prompt`; `CheckError` for an unknown id or arguments it does not take."""
    if not isinstance(instruction_id, str) or not isinstance(kwargs, dict):
        raise CheckError(f"a constraint is an id string and a kwargs object, got {instruction_id!r} and {kwargs!r}")
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if instruction_id.startswith(DEMO_PREFIX):
        return _demo_check(instruction_id, kwargs)
    from .offline_resources import checker_class, offline_checkers

    checker_type = checker_class(instruction_id)
    if checker_type is None:
        raise CheckError(f"unknown constraint id {instruction_id!r} (demo:<kind>, or an IFBench or IFEval id)")
    checker = checker_type(instruction_id)
    try:
        with offline_checkers():
            description = checker.build_description(**kwargs)
            arguments = checker.get_instruction_args() or {}
            if "prompt" in arguments:
                checker.build_description(prompt=prompt)  # checks that compare the response with the prompt
    except Exception as error:  # the official checkers raise KeyError, AttributeError, ... on arguments they reject
        raise CheckError(f"{instruction_id}: arguments {kwargs} are not accepted ({type(error).__name__}: {error})") from None
    # An official checker draws an argument it is not given at random: a constraint must state them all.
    missing = sorted(arguments.keys() - kwargs.keys() - {"prompt"})
    if missing:
        raise CheckError(f"{instruction_id}: arguments {', '.join(missing)} are missing from {kwargs}")

    def follows(response: str) -> bool:
        with offline_checkers():  # the checkers call nltk.download before they tokenize, and langdetect draws
            return checker.check_following(response)

    return Check(instruction_id, kwargs, follows, description, reads_prompt="prompt" in arguments)


def _demo_check(instruction_id: str, kwargs: dict) -> Check:
    kind = instruction_id.removeprefix(DEMO_PREFIX)
    if kind not in KINDS:
        raise CheckError(f"unknown constraint id {instruction_id!r}: the demo kinds are {', '.join(KINDS)}")
    args, expected = kwargs.get("args", ()), KINDS[kind].template.count("{}")
    try:
        if set(kwargs) - {"args"} or not isinstance(args, list | tuple) or len(args) != expected:
            raise ValueError
        args = tuple(KINDS[kind].arg_type(arg) for arg in args)
    except (TypeError, ValueError):
        raise CheckError(f"{instruction_id}: takes {{\"args\": [...]}} with {expected} values "
                         f"of type {KINDS[kind].arg_type.__name__}, got {kwargs}") from None
    constraint = Constraint(kind, args)
    return Check(instruction_id, {"args": list(args)}, constraint.check, constraint.describe())


def demo_check(constraint: Constraint) -> Check:
    """The `Check` of a demo constraint read from an instruction's text."""
    return _demo_check(DEMO_PREFIX + constraint.kind, {"args": list(constraint.args)})
