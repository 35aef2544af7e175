"""Changes of one constraint of x1 into one that y1 does not meet, by rule, for constraints a program checks.

Only a change of one constraint can make a valid quadruple: if x2 added a constraint to x1, y2 (which
meets all of x2) would meet x1 too; if x2 removed one, y1 would meet x2. And the new constraint must
exclude the old one, no response meeting both, or a y2 that meets x2 would meet x1 too (halving a word
limit keeps every answer to x2 within x1's). So a rule replaces one constraint by an opposite one:

- the demo data's kinds (`demo_constraints`): for a word limit, the opposite bound past both y1's length
  and the old limit; the keyword y1 uses now excluded, or the one it avoids now required; the other
  letter case; one bullet fewer or more, or JSON instead of bullets; other JSON keys, or bullets instead;
  another ending; another language. x2 is x1 with the constraint's sentence replaced, so no model is
  needed (when x1 states it in other words, the generator restates x2 as below);
- IFEval's and IFBench's: a relation turned around ("less than" and "at least", same number), lower case
  and capitals swapped, an exact count (`EXACT_COUNTS`) one more or one fewer. Their instructions state
  constraints in free text, so the generator rewrites x2 (the `restate` prompt).

A change is kept only if y1 fails the new constraint, checked by program, and the new constraints do not
contradict each other. `rule_response` writes y2 from y1 by rule where the change allows it (case, ending,
JSON keys, one bullet fewer), for building pairs without any model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..evaluation.checks import DEMO_PREFIX, FAILED, CheckError, make_check
from ..evaluation.demo_constraints import KINDS, LANGUAGE_MARKERS, Constraint, compatible, count_words
from .records import Requirement

ENDINGS = ("Is there anything else?", "Hope this helps!", "Thanks for asking.", "That is all for now.")
JSON_KEYS = (("summary", "detail"), ("title", "body"), ("main_point", "example"))
RELATIONS = {"less than": "at least", "at least": "less than"}
SWAPPED_IDS = {"change_case:english_lowercase": "change_case:english_capital",
               "change_case:english_capital": "change_case:english_lowercase"}
# IFEval's checks whose number is met exactly (==), and the argument that holds it.
EXACT_COUNTS = {"detectable_format:number_bullet_lists": "num_bullets",
                "length_constraints:number_paragraphs": "num_paragraphs"}


@dataclass(frozen=True)
class Change:
    """Requirement `index` of x1 replaced by `new`; `instruction` is x2's text and `response` y2 when a rule
    writes them."""

    index: int
    new: Requirement
    instruction: str | None
    by: str = "rule"
    response: str | None = None


def rule_changes(instruction: str, requirements: tuple[Requirement, ...], response: str) -> list[Change]:
    """Every change by rule of one requirement into one that `response` fails, in a fixed order."""
    demo = {index: _demo_constraint(requirement) for index, requirement in enumerate(requirements)
            if requirement.check is not None and requirement.check.id.startswith(DEMO_PREFIX)}
    changes = []
    for index, requirement in enumerate(requirements):
        if index in demo:
            others = [constraint for other, constraint in demo.items() if other != index]
            old_sentence = demo[index].describe()
            changes += [Change(index, _demo_requirement(new), _replaced_sentence(instruction, old_sentence, new.describe()))
                        for new in _demo_alternatives(demo[index], response)
                        if not new.check(response) and compatible([*others, new])]
        elif requirement.check is not None:
            changes += [Change(index, new, None) for new in _argument_alternatives(requirement, instruction)
                        if _fails(new, response)]
    return changes


def _fails(requirement: Requirement, response: str) -> bool:
    """Whether the program says `response` fails `requirement` (not when it cannot tell, or raises)."""
    return requirement.check.verdicts(response)[0] == FAILED


def _replaced_sentence(instruction: str, old: str, new: str) -> str | None:
    """x1 with the constraint's sentence replaced; None when x1 states it in other words."""
    return instruction.replace(old, new, 1) if old in instruction else None


def rule_response(old: Requirement, new: Requirement, response: str) -> str | None:
    """y2 written from y1 by rule, for the changes that allow it (checked like any y2 afterwards)."""
    if old.check is None or new.check is None:
        return None
    if new.check.id in ("demo:lowercase", "change_case:english_lowercase"):
        return response.lower()
    if new.check.id in ("demo:uppercase", "change_case:english_capital"):
        return response.upper()
    if old.check.id == new.check.id == "demo:ending":
        body, old_ending = response.rstrip(), old.check.kwargs["args"][0]
        if body[len(body) - len(old_ending):].lower() != old_ending.lower():
            return None
        return body[:len(body) - len(old_ending)].rstrip() + " " + new.check.kwargs["args"][0]
    if old.check.id == new.check.id == "demo:json":
        try:
            values = list(json.loads(response).values())
        except (json.JSONDecodeError, AttributeError):
            return None
        return json.dumps(dict(zip(new.check.kwargs["args"], values)), ensure_ascii=False)
    if old.check.id == new.check.id == "demo:bullets" and new.check.kwargs["args"][0] < old.check.kwargs["args"][0]:
        lines = response.rstrip().splitlines()
        bullets = [number for number, line in enumerate(lines) if line.startswith("- ")]
        return "\n".join(lines[:bullets[-1]] + lines[bullets[-1] + 1:]) if bullets else None
    return None


def _demo_constraint(requirement: Requirement) -> Constraint:
    return Constraint(requirement.check.id.removeprefix(DEMO_PREFIX), tuple(requirement.check.kwargs.get("args", ())))


def _demo_requirement(constraint: Constraint) -> Requirement:
    check = make_check(DEMO_PREFIX + constraint.kind, {"args": list(constraint.args)}, "")
    return Requirement(check.description, check)


def _demo_alternatives(constraint: Constraint, response: str) -> list[Constraint]:
    """Requirements of the same slot as `constraint` that no response meeting it meets, drawn from `response`
    (y1) so that it fails them too."""
    slot, words = KINDS[constraint.kind].slot, count_words(response)
    if constraint.kind == "max_words":  # the opposite bound: past the old limit, and twice y1's words
        options = [Constraint("min_words", (max(2 * words, constraint.args[0] + 1),))]
    elif constraint.kind == "min_words":  # the opposite bound: under the old minimum, and half y1's words
        options = [Constraint("max_words", (limit,)) for limit in [min(words // 2, constraint.args[0] - 1)] if limit > 0]
    elif constraint.kind == "exact_words":
        options = [Constraint("max_words", (limit,)) for limit in [words // 2] if limit > 0] + [
            Constraint("min_words", (2 * words,))]
    elif slot == "keyword":
        options = [Constraint("exclude" if constraint.kind == "include" else "include", constraint.args)]
    elif slot == "case":
        options = [Constraint("uppercase" if constraint.kind == "lowercase" else "lowercase")]
    elif slot == "layout" and constraint.kind == "bullets":
        count = constraint.args[0]
        options = [Constraint("bullets", (count - 1,))] * (count > 1) + [Constraint("bullets", (count + 1,)),
                                                                           Constraint("json", JSON_KEYS[0])]
    elif slot == "layout":
        options = [Constraint("json", keys) for keys in JSON_KEYS] + [Constraint("bullets", (3,))]
    elif slot == "ending":  # an ending that is not a suffix of the other: no response ends with both
        old = constraint.args[0].lower()
        options = [Constraint("ending", (phrase,)) for phrase in ENDINGS
                   if not (phrase.lower().endswith(old) or old.endswith(phrase.lower()))]
    else:
        options = [Constraint("language", (language,)) for language in LANGUAGE_MARKERS]
    return [option for option in options if option != constraint]


def _argument_alternatives(requirement: Requirement, instruction: str) -> list[Requirement]:
    """The IFEval or IFBench constraint with one argument changed, or its id swapped, where a rule exists."""
    check = requirement.check
    variants = [(SWAPPED_IDS[check.id], check.kwargs)] if check.id in SWAPPED_IDS else []
    variants += [(check.id, {**check.kwargs, name: RELATIONS[value]}) for name, value in check.kwargs.items()
                 if isinstance(value, str) and value in RELATIONS]
    count = EXACT_COUNTS.get(check.id)
    if count is not None and isinstance(check.kwargs.get(count), int):
        variants += [(check.id, {**check.kwargs, count: check.kwargs[count] + step}) for step in (-1, 1)
                     if check.kwargs[count] + step > 0]
    alternatives = []
    for instruction_id, kwargs in variants:
        try:
            new = make_check(instruction_id, kwargs, instruction)
        except CheckError:
            continue
        alternatives.append(Requirement(new.description, new))
    return alternatives
