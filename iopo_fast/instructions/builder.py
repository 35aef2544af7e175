"""One simple instruction through TRACE's construction (the IOPO paper, section 3), or `Dropped` with why.

Stages, in order (a record dropped at one reaches none after it):

1. `read`, `instruction`: a JSON record holding a prompt (`pairs.records.turns`: a prompt or instruction
   field, or a chat's user turn; a system message is kept);
2. `expand`: the generator adds the constraints the plan draws for it (`plan`), of the taxonomy's dimensions;
3. `structure`: the generator splits the result into its task, its constraints (each with its dimension,
   and a program check where one applies) and its input; an answer that is not that JSON object, a
   dimension outside the taxonomy or a check that does not exist is a drop, with the answer kept;
4. `quality`: by program, duplicated constraints and contradictory word-count bounds; then the
   generator's review (redundant, incomplete, contradictory, unverifiable or unrelated constraints);
5. `response`, `judging`: up to `max_tries` responses (the first to the instruction, each next one a
   revision told which constraints the last one missed; a response already tried ends the tries), each
   judged by its constraints' program checks and, if it meets them all, by the judge with TRACE's protocol
   (one request for all the constraints in words, met only at 10); the first that meets them all is kept.

Instructions whose seed text falls in the evaluation split (a hash of the run's seed and the text, so the
same instruction is always on the same side) stop after stage 4: they are the evaluation set, never
trained on, written in TRACE's released format.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from ..endpoints.client import CachedRequests
from ..evaluation.checks import ERROR, FAILED, MET, Check, CheckError, make_check
from ..evaluation.judge import fill
from ..evaluation.taxonomy import Dimension, Taxonomy
from ..evaluation.trace_judge import read_scores
from ..pairs.records import RecordError, turns
from ..pairs.streaming import Dropped, ModelRoles, json_object
from .plan import Plan

STAGES = ("read", "instruction", "expand", "structure", "quality", "response", "judging")
TRAIN, EVAL = "train", "eval"  # the outcomes: a record to train on, an instruction of the evaluation split
TRACE_SYSTEM = "You are a helpful assistant."  # the system message of TRACE's evaluation records

_LEADING_NUMBER = re.compile(r"^\s*\d+\s*(?:[)、]|\.(?!\d))\s*")  # "1. ", "2、", "3) "; not "1.5 lines"
# Word-count bounds stated in words: (pattern, which bound, what to add to the number for an inclusive bound).
_WORD_BOUNDS = (
    (re.compile(r"\b(?:at least|no fewer than|a minimum of)\s+(\d+)\s+words\b", re.IGNORECASE), "low", 0),
    (re.compile(r"\bmore than\s+(\d+)\s+words\b", re.IGNORECASE), "low", 1),
    (re.compile(r"\b(?:at most|no more than|up to|a maximum of|not exceed(?:ing)?)\s+(\d+)\s+words\b",
                re.IGNORECASE), "high", 0),
    (re.compile(r"\b(?:fewer|less) than\s+(\d+)\s+words\b", re.IGNORECASE), "high", -1),
)


@dataclass(frozen=True)
class Constraint:
    """One constraint of a structured instruction: its text, its dimension, and its program check if any."""

    text: str
    dimension: Dimension
    check: Check | None = None

    def to_json(self) -> dict:
        check = {"id": self.check.id, "kwargs": self.check.kwargs} if self.check is not None else None
        return {"constraint": self.text, "dimension": self.dimension.name, "type": self.dimension.type, "check": check}


@dataclass(frozen=True)
class Structured:
    """An instruction split as TRACE's records are: task, constraints, input; `prompt` is the user turn."""

    task: str
    constraints: tuple[Constraint, ...]
    input: str | None

    @property
    def numbered(self) -> list[str]:
        return [f"{number}. {constraint.text}" for number, constraint in enumerate(self.constraints, start=1)]

    @property
    def prompt(self) -> str:
        """The instruction as TRACE's evaluation file writes its user turn."""
        inputs = f"# Inputs:\n{self.input}\n" if self.input else ""
        return "\n".join([self.task, *self.numbered]) + "\n" + inputs


class InstructionBuilder(ModelRoles):
    """Builds one record of the training or the evaluation split from one simple instruction."""

    def __init__(self, prompts: dict[str, str], generator: CachedRequests | None, judge: CachedRequests | None,
                 taxonomy: Taxonomy, plan: Plan, seed: int = 0, eval_fraction: float = 0.0, max_tries: int = 3,
                 max_constraints: int = 15):
        super().__init__(generator, judge)
        self.prompts, self.taxonomy, self.plan, self.seed = prompts, taxonomy, plan, seed
        self.eval_fraction, self.max_tries, self.max_constraints = eval_fraction, max_tries, max_constraints

    async def build(self, where: str, record: object) -> tuple[str, dict]:
        if not isinstance(record, dict):
            raise Dropped("instruction", "not a usable instruction", "not a JSON object")
        try:
            instruction, _, system = turns(record)
        except RecordError as error:
            raise Dropped("instruction", "not a usable instruction", str(error)) from None
        expanded = await self._expand(instruction, self.plan.draw(f"{self.seed}:{where}"))
        structured = await self._structure(expanded)
        _check_by_program(structured.constraints)
        await self._review(structured)
        if self.in_evaluation_split(instruction):
            return EVAL, _trace_record(where, structured, system)
        response, verdicts, tries = await self._respond(structured, system)
        checked = [constraint.check for constraint in structured.constraints if constraint.check is not None]
        return TRAIN, {
            "messages": [*_system(system), {"role": "user", "content": structured.prompt},
                         {"role": "assistant", "content": response}],
            # What `build-pairs` reads: the constraints in words, and the checked ones by id and arguments.
            "constraints": [constraint.text for constraint in structured.constraints if constraint.check is None],
            "instruction_id_list": [check.id for check in checked], "kwargs": [check.kwargs for check in checked],
            "seed_instruction": instruction, "expanded": expanded,
            "structure": {"task": structured.task, "input": structured.input,
                          "constraints": [constraint.to_json() for constraint in structured.constraints]},
            "verdicts": verdicts, "tries": tries,
        }

    def in_evaluation_split(self, instruction: str) -> bool:
        digest = hashlib.sha256(f"{self.seed}:{instruction.strip()}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.eval_fraction

    async def _expand(self, instruction: str, dimensions: list[Dimension]) -> str:
        listed = "\n".join(f"- {dimension.name} ({dimension.type}): {dimension.description} For example: "
                           f"{dimension.examples[0] if dimension.examples else ''}" for dimension in dimensions)
        content = fill(self.prompts["expand"], instruction=instruction, count=str(len(dimensions)), dimensions=listed)
        expanded = (await self.ask("generator", [{"role": "user", "content": content}], "expand")).strip()
        if not expanded or expanded == instruction.strip():
            raise Dropped("expand", "the expanded instruction is empty or unchanged", expanded)
        return expanded

    async def _structure(self, expanded: str) -> Structured:
        dimensions = "\n".join(f"- {dimension.name} ({dimension.type})" for dimension in self.taxonomy.dimensions)
        checks = "\n".join(f"- {check['id']} ({dimension.name}), for example {json.dumps(check['kwargs'])}"
                           for dimension in self.taxonomy.dimensions for check in dimension.checks)
        content = fill(self.prompts["structure"], instruction=expanded, dimensions=dimensions, checks=checks)
        answer = await self.ask("generator", [{"role": "user", "content": content}], "structure")
        return self._read_structure(answer)

    def _read_structure(self, answer: str) -> Structured:
        """The generator's structure, validated; `Dropped` (with the answer) for anything else."""
        parsed = json_object(answer)
        task, task_input, items = parsed.get("task"), parsed.get("input"), parsed.get("constraints")
        if not (isinstance(task, str) and task.strip() and isinstance(items, list) and items
                and all(isinstance(item, dict) and isinstance(item.get("constraint"), str)
                        and item["constraint"].strip() for item in items)
                and (task_input is None or isinstance(task_input, str))):
            raise Dropped("structure", "not a JSON object with a task and its constraints", answer)
        if len(items) > self.max_constraints:
            raise Dropped("structure", "more constraints than the most allowed", answer)
        task_input = task_input.strip() if task_input and task_input.strip().lower() not in ("null", "none") else None
        dimensions = [self.taxonomy.classify(str(item.get("dimension", ""))) for item in items]
        if None in dimensions:
            raise Dropped("structure", "a constraint outside the taxonomy", answer)
        texts = [_LEADING_NUMBER.sub("", item["constraint"].strip()) for item in items]
        structured = Structured(task.strip(), tuple(Constraint(text, dimension) for text, dimension
                                                    in zip(texts, dimensions)), task_input)
        try:  # a check that compares the response with the prompt reads the whole instruction
            checks = [None if item.get("check") is None else
                      make_check(item["check"].get("id"), item["check"].get("kwargs"), structured.prompt)
                      for item in items]
        except (CheckError, AttributeError):
            raise Dropped("structure", "a check that does not exist or does not take its arguments", answer) from None
        return Structured(structured.task, tuple(Constraint(text, dimension, check) for text, dimension, check
                                                 in zip(texts, dimensions, checks)), task_input)

    async def _review(self, structured: Structured) -> None:
        content = fill(self.prompts["review"], task=structured.task, input=structured.input or "(none)",
                       constraints="\n".join(structured.numbered))
        answer = await self.ask("generator", [{"role": "user", "content": content}], "quality")
        verdict = json_object(answer).get("acceptable")
        if not isinstance(verdict, bool):
            raise Dropped("quality", "the review's answer is not usable", answer)
        if not verdict:
            raise Dropped("quality", "rejected by the review", answer)

    async def _respond(self, structured: Structured, system: str | None) -> tuple[str, list[dict], int]:
        """The first of `max_tries` responses that meets every constraint, its verdicts and its try."""
        response, unmet, tried = None, [], set()
        for attempt in range(1, self.max_tries + 1):
            if response is None:
                content = fill(self.prompts["answer"], instruction=structured.prompt)
            else:
                content = fill(self.prompts["revise"], instruction=structured.prompt, response=response,
                               unmet="\n".join(f"- {verdict['constraint']}" for verdict in unmet))
            messages = [*_system(system), {"role": "user", "content": content}]
            response = (await self.ask("generator", messages, "response")).strip()
            if not response:
                raise Dropped("response", "the generator wrote an empty response")
            if response in tried:  # the same request would get the same answer again: no use trying on
                break
            tried.add(response)
            verdicts = await self._verdicts(structured, response)
            if all(verdict["verdict"] == MET for verdict in verdicts):
                return response, verdicts, attempt
            unmet = [verdict for verdict in verdicts if verdict["verdict"] == FAILED]
        raise Dropped("judging", "no response met every constraint within the tries",
                      "; ".join(verdict["constraint"] for verdict in unmet))

    async def _verdicts(self, structured: Structured, response: str) -> list[dict]:
        """Each constraint's verdict on `response`: its program's, else the judge's. The judge is asked only
        when every program check is met (otherwise the response fails anyway)."""
        verdicts = [None] * len(structured.constraints)
        for index, constraint in enumerate(structured.constraints):
            if constraint.check is not None:
                strict, _ = constraint.check.verdicts(response)
                if strict not in (MET, FAILED, ERROR):  # a check whose NLTK resource is missing
                    raise Dropped("judging", f"a check is {strict}", constraint.check.id)
                verdicts[index] = {"constraint": constraint.text, "verdict": MET if strict == MET else FAILED,
                                   "by": "program"}
        worded = [index for index, constraint in enumerate(structured.constraints) if constraint.check is None]
        if worded and all(verdict["verdict"] == MET for verdict in verdicts if verdict is not None):
            if self.judge is None:
                raise Dropped("judging", "constraints in words need a judge")
            listed = "\n".join(f"{number}. {structured.constraints[index].text}"
                               for number, index in enumerate(worded, start=1))
            content = fill(self.prompts["judge"], instruction=structured.prompt, constraints=listed,
                           response=response)
            answer = await self.ask("judge", [{"role": "user", "content": content}], "judging")
            judged = read_scores(answer, len(worded))
            if judged.problem is not None:
                raise Dropped("judging", "the judge's answer cannot be read", answer)
            for index, judgment in zip(worded, judged.judgments):
                verdicts[index] = {"constraint": structured.constraints[index].text, "verdict": judgment.verdict,
                                   "by": "judge", "score": judgment.score}
        return [verdict or {"constraint": structured.constraints[index].text, "verdict": "not asked", "by": "judge"}
                for index, verdict in enumerate(verdicts)]


def _check_by_program(constraints: tuple[Constraint, ...]) -> None:
    """Quality control that needs no model: duplicated constraints, and bounds on the word count that no
    response meets (at least N words and at most M < N, stated in words or by checks)."""
    seen = set()
    for constraint in constraints:
        key = re.sub(r"\W+", " ", constraint.text.casefold()).strip()
        if constraint.check is not None:
            key = (constraint.check.id, repr(sorted(constraint.check.kwargs.items())))
        if key in seen:
            raise Dropped("quality", "duplicated constraints", constraint.text)
        seen.add(key)
    bounds = {"low": [], "high": []}
    for constraint in constraints:
        for pattern, bound, shift in _WORD_BOUNDS:
            bounds[bound] += [int(number) + shift for number in pattern.findall(constraint.text)]
        check = constraint.check
        if check is not None and check.id == "length_constraints:number_words":  # IFEval: "at least" or "less than"
            at_least = check.kwargs["relation"] == "at least"
            bounds["low" if at_least else "high"].append(int(check.kwargs["num_words"]) - (not at_least))
        if check is not None and check.id == "count:word_count_range":
            bounds["low"].append(int(check.kwargs["min_words"]))
            bounds["high"].append(int(check.kwargs["max_words"]))
    if bounds["low"] and bounds["high"] and max(bounds["low"]) > min(bounds["high"]):
        raise Dropped("quality", "contradictory length bounds",
                      f"at least {max(bounds['low'])} and at most {min(bounds['high'])} words")


def _trace_record(where: str, structured: Structured, system: str | None) -> dict:
    """An instruction of the evaluation split in the format of TRACE's released evaluation file, and its
    program checks (`checks`, by the constraint's index) for the `jsonl:` benchmark."""
    return {
        "id": where,
        "messages": [{"role": "system", "content": system or TRACE_SYSTEM},
                     {"role": "user", "content": structured.prompt}],
        "type": "trace", "description": structured.task, "constraints": "\n".join(structured.numbered),
        "input": structured.input or "NULL", "constraints_num": len(structured.constraints),
        "constraints_splits": structured.numbered,
        "levels2": [constraint.dimension.trace_label or constraint.dimension.name
                    for constraint in structured.constraints],
        "category": "iopo-fast",
        "checks": [{"index": index, "id": constraint.check.id, "kwargs": constraint.check.kwargs}
                   for index, constraint in enumerate(structured.constraints) if constraint.check is not None],
    }


def _system(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system is not None else []
