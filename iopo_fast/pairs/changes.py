"""Changes of one constraint of x1 into one that y1 does not meet, by rule, for constraints a program checks.

Only a change of one constraint can make a valid quadruple: if x2 added a constraint to x1, y2 (which
meets all of x2) would meet x1 too; if x2 removed one, y1 would meet x2. So a rule replaces one
constraint by another of the same sort:

- the demo data's kinds (`demo_constraints`): another requirement of the same slot, drawn from y1 itself
  (half or twice its word count, the keyword it uses now excluded, the other letter case, one bullet
  fewer or more, other JSON keys, another ending, another language). x2 is x1 with the constraint's
  sentence replaced, so no model is needed;
- IFEval's and IFBench's: a number argument halved or doubled, a relation turned around ("less than" and
  "at least"), lower case and capitals swapped. Their instructions state constraints in free text, so the
  generator rewrites x2 (the `restate` prompt).

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


@dataclass(frozen=True)
class Change:
    """Requirement `index` of x1 replaced by `new`; `instruction` is x2's text when the rule can write it."""

    index: int
    new: Requirement
    instruction: str | None
    by: str = "rule"


def rule_changes(instruction: str, requirements: tuple[Requirement, ...], response: str) -> list[Change]:
    """Every change by rule of one requirement into one that `response` fails, in a fixed order."""
    demo = {index: _demo_constraint(requirement) for index, requirement in enumerate(requirements)
            if requirement.check is not None and requirement.check.id.startswith(DEMO_PREFIX)}
    changes = []
    for index, requirement in enumerate(requirements):
        if index in demo:
            others = [constraint for other, constraint in demo.items() if other != index]
            changes += [Change(index, Requirement(new.describe(), _demo_requirement(new).check),
                               instruction.replace(demo[index].describe(), new.describe(), 1))
                        for new in _demo_alternatives(demo[index], response)
                        if not new.check(response) and compatible([*others, new])]
        elif requirement.check is not None:
            changes += [Change(index, new, None) for new in _argument_alternatives(requirement, instruction)
                        if new.check.verdicts(response)[0] == FAILED]
    return changes


def rule_response(old: Requirement, new: Requirement, response: str) -> str | None:
    """y2 written from y1 by rule, for the changes that allow it (checked like any y2 afterwards)."""
    if old.check is None or new.check is None:
        return None
    if new.check.id in ("demo:lowercase", "change_case:english_lowercase"):
        return response.lower()
    if new.check.id in ("demo:uppercase", "change_case:english_capital"):
        return response.upper()
    if old.check.id == new.check.id == "demo:ending":
        body = response.rstrip()
        return body[:len(body) - len(old.check.kwargs["args"][0])].rstrip() + " " + new.check.kwargs["args"][0]
    if old.check.id == new.check.id == "demo:json":
        try:
            values = list(json.loads(response).values())
        except (json.JSONDecodeError, AttributeError):
            return None
        return json.dumps(dict(zip(new.check.kwargs["args"], values)), ensure_ascii=False)
    if old.check.id == new.check.id == "demo:bullets" and new.check.kwargs["args"][0] < old.check.kwargs["args"][0]:
        lines = response.rstrip().splitlines()
        last_bullet = max(number for number, line in enumerate(lines) if line.startswith("- "))
        return "\n".join(lines[:last_bullet] + lines[last_bullet + 1:])
    return None


def _demo_constraint(requirement: Requirement) -> Constraint:
    return Constraint(requirement.check.id.removeprefix(DEMO_PREFIX), tuple(requirement.check.kwargs.get("args", ())))


def _demo_requirement(constraint: Constraint) -> Requirement:
    check = make_check(DEMO_PREFIX + constraint.kind, {"args": list(constraint.args)}, "")
    return Requirement(check.description, check)


def _demo_alternatives(constraint: Constraint, response: str) -> list[Constraint]:
    """Requirements of the same slot as `constraint`, drawn from `response` so that it is likely to fail them."""
    slot, words = KINDS[constraint.kind].slot, count_words(response)
    if slot == "length":
        options = [Constraint("max_words", (max(1, words // 2),)), Constraint("min_words", (2 * words,))]
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
    elif slot == "ending":
        options = [Constraint("ending", (phrase,)) for phrase in ENDINGS]
    else:
        options = [Constraint("language", (language,)) for language in LANGUAGE_MARKERS]
    return [option for option in options if option != constraint]


def _argument_alternatives(requirement: Requirement, instruction: str) -> list[Requirement]:
    """The IFEval or IFBench constraint with one argument changed, or its id swapped, where a rule exists."""
    check = requirement.check
    variants = [(SWAPPED_IDS[check.id], check.kwargs)] if check.id in SWAPPED_IDS else []
    for name, value in check.kwargs.items():
        if isinstance(value, int) and not isinstance(value, bool):
            variants += [(check.id, {**check.kwargs, name: new}) for new in (max(1, value // 2), 2 * value) if new != value]
        elif value in RELATIONS:
            variants.append((check.id, {**check.kwargs, name: RELATIONS[value]}))
    alternatives = []
    for instruction_id, kwargs in variants:
        try:
            new = make_check(instruction_id, kwargs, instruction)
        except CheckError:
            continue
        alternatives.append(Requirement(new.description, new))
    return alternatives
