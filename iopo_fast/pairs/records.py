"""The input of `build-pairs`: instructions with their constraints, and a response to each when there is one.

Records come from any source the trainer reads (`iopo_fast.data.sources`: JSON Lines, a JSON array, Parquet, a folder,
a saved or Hub `datasets` data set, a `dataset_info.json` entry), in any of these shapes:

- `{"prompt" | "instruction": ..., "input": ... (appended, Alpaca), "response" | "output" | "chosen": ...}`;
- `{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}` or ShareGPT's
  `{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}`; the assistant turn,
  the response, is optional; a system message or `"system"` is kept.

Constraints, as many as the record states, of three sorts:

- IFEval's and IFBench's: `"instruction_id_list": [...]` and `"kwargs": [{...}, ...]`, checked by program;
- the demo data's, read from the instruction's own text (`demo_constraints.parse_constraints`), checked
  by program;
- stated in words: `"constraints": ["...", ...]` (TRACE's `constraints_splits` too), checked by the judge.

A record without any constraint, or whose constraints cannot be read, is not usable: `RecordError`, whose
message is the reason, counted and written to the report by the pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..evaluation.checks import Check, CheckError, demo_check, make_check
from ..evaluation.demo_constraints import parse_constraints

USER_ROLES, ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt")


class RecordError(ValueError):
    """A record that cannot be used; the message is the reason."""


@dataclass(frozen=True)
class Requirement:
    """One constraint of an instruction: its text, and the program that checks it (None: the judge does)."""

    text: str
    check: Check | None = None

    def to_json(self) -> dict:
        if self.check is None:
            return {"text": self.text}
        return {"text": self.text, "id": self.check.id, "kwargs": self.check.kwargs}

    def of_instruction(self, instruction: str) -> Requirement:
        """This requirement in `instruction` (x2): a check that compares the response with the prompt reads
        the new prompt's text."""
        if self.check is None or not self.check.reads_prompt:
            return self
        return Requirement(self.text, make_check(self.check.id, self.check.kwargs, instruction))


@dataclass(frozen=True)
class Task:
    """An instruction x1 with its constraints, and a response y1 when the record has one."""

    where: str
    instruction: str
    requirements: tuple[Requirement, ...]
    response: str | None = None
    system: str | None = None


def read_task(where: str, record: object) -> Task:
    """The `Task` of one record, or `RecordError` with the reason."""
    if not isinstance(record, dict):
        raise RecordError("not a JSON object")
    instruction, response, system = turns(record)
    requirements = (*_checked_requirements(record, instruction), *_worded_requirements(record))
    if not requirements:
        raise RecordError("no constraints: give instruction_id_list and kwargs, or constraints in words, or "
                          "state demo constraints in the instruction")
    return Task(where, instruction, requirements, response, system)


def turns(record: dict) -> tuple[str, str | None, str | None]:
    """(instruction, response or None, system or None)."""
    system = _text(record.get("system"), "system") if record.get("system") is not None else None
    turns = record.get("messages") if record.get("messages") is not None else record.get("conversations")
    if turns is not None:
        if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
            raise RecordError("'messages' or 'conversations' must be a list of message objects")
        roles = [turn.get("role", turn.get("from")) for turn in turns]
        texts = [turn.get("content", turn.get("value")) for turn in turns]
        if roles and roles[0] == "system":
            system, roles, texts = _text(texts[0], "the system message"), roles[1:], texts[1:]
        if not (1 <= len(roles) <= 2 and roles[0] in USER_ROLES and all(role in ASSISTANT_ROLES for role in roles[1:])):
            raise RecordError("a conversation must be one user turn, optionally followed by one assistant turn")
        response = _text(texts[1], "the assistant turn") if len(texts) == 2 else None
        return _text(texts[0], "the user turn"), response, system
    prompt_key = "prompt" if record.get("prompt") is not None else "instruction"
    instruction = _text(record.get(prompt_key), prompt_key)
    if record.get("input"):
        instruction = f"{instruction}\n\n{_text(record['input'], 'input')}"
    response_key = next((key for key in ("response", "output", "chosen") if record.get(key) is not None), None)
    response = None
    if response_key is not None:
        value = record[response_key]
        response = _text(value.get("value") if isinstance(value, dict) else value, response_key)
    return instruction, response, system


def _text(value: object, label: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{label} is missing or not a non-empty string")
    return value


def _checked_requirements(record: dict, instruction: str) -> list[Requirement]:
    ids, kwargs = record.get("instruction_id_list"), record.get("kwargs")
    checks = [demo_check(constraint) for constraint in parse_constraints(instruction)]
    if ids is not None or kwargs is not None:
        if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
            raise RecordError("instruction_id_list and kwargs must be lists of the same length")
        try:
            checks += [make_check(instruction_id, arguments, instruction) for instruction_id, arguments in zip(ids, kwargs)]
        except CheckError as error:
            raise RecordError(str(error)) from None
    # A demo constraint both listed and stated in the text is one constraint.
    unique = {(check.id, json.dumps(check.kwargs, sort_keys=True)): check for check in checks}
    return [Requirement(check.description, check) for check in unique.values()]


def _worded_requirements(record: dict) -> list[Requirement]:
    texts = record.get("constraints_splits", record.get("constraints"))
    if texts is None:
        return []
    if not isinstance(texts, list) or not all(isinstance(text, str) and text.strip() for text in texts):
        raise RecordError("'constraints' must be a list of non-empty strings")
    return [Requirement(text.strip()) for text in texts]
