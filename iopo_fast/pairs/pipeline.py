"""`build_pairs`: IOPO quadruples (x1, x2, y1, y2) from instructions with constraints, streamed to disk.

Every record goes through these stages (a record dropped at one stage reaches none after it):

1. `read`: a JSON record;
2. `constraints`: an instruction with constraints (`records`);
3. `y1`: the record's response, or the generator's;
4. `y1 meets x1`: every constraint of x1 met (by program, or by the judge for constraints in words);
5. `x2`: one constraint changed into one y1 fails, by rule (`changes`) or by the generator (`modify`)
   for constraints in words, with the judge confirming that y1 fails it;
6. `y2`: the generator's response to x2, or y1 rewritten by rule when there is no generator;
7. `y2 meets x2`: every constraint of x2 met;
8. `y2 fails x1`: the changed constraint of x1 not met by y2 (y2 meets the others: x1 and x2 share them).

Kept records go to `pairs.jsonl` in the trainer's format, with where they came from, the change, both
constraint lists and every verdict (`y1|x1`, `y1|x2`, `y2|x2`, `y2|x1`) beside them; dropped ones go to
`dropped.jsonl` with their stage, reason and details. Streaming, the cache, resuming after a kill and the
report are `streaming`'s.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

from ..endpoints.client import CachedRequests
from ..evaluation.checks import ERROR, FAILED, MET
from ..evaluation.judge import fill, parse_verdict
from .changes import Change, rule_changes, rule_response
from .prompts import PROMPTS
from .records import RecordError, Requirement, Task, read_task
from .streaming import Dropped, ModelRoles, ModelSettings, Pipeline, digest, json_object, run, summary

STAGES = ("read", "constraints", "y1", "y1 meets x1", "x2", "y2", "y2 meets x2", "y2 fails x1")


class PairBuilder(ModelRoles):
    """Builds the quadruple of one record, or raises `Dropped`."""

    def __init__(self, prompts: dict[str, str], generator: CachedRequests | None, judge: CachedRequests | None,
                 seed: int = 0):
        super().__init__(generator, judge)
        self.prompts, self.seed = prompts, seed

    async def build(self, where: str, record: object) -> tuple[str, dict]:
        try:
            task = read_task(where, record)
        except RecordError as error:
            raise Dropped("constraints", "not a usable record", str(error)) from None
        return "pairs", await self.build_task(task)

    async def build_task(self, task: Task) -> dict:
        y1 = task.response if task.response is not None else await self._generate(task, task.instruction, "y1")
        y1_x1 = await self._all_met(task.instruction, task.requirements, y1, "y1 meets x1", "y1 does not meet x1")
        change, y1_changed = await self._change(task, y1)
        x2 = change.instruction
        requirements2 = tuple(requirement.of_instruction(x2)
                              for requirement in _replaced(task.requirements, change.index, change.new))
        if self.generator is not None:
            y2 = await self._generate(task, x2, "y2")
        else:
            y2 = change.response  # not None: `_change` chose so
        if y2.strip() == y1.strip():
            raise Dropped("y2", "y2 identical to y1")
        y2_x2 = await self._all_met(x2, requirements2, y2, "y2 meets x2", "y2 does not meet x2")
        y2_changed = await self._verdict(task.instruction, task.requirements[change.index], y2, "y2 fails x1")
        if y2_changed["verdict"] != FAILED:
            raise Dropped("y2 fails x1", "y2 meets x1")
        return {
            "conversations": [{"from": "human", "value": task.instruction}, {"from": "human", "value": x2}],
            "chosen": {"from": "gpt", "value": y1}, "rejected": {"from": "gpt", "value": y2},
            **({"system": task.system} if task.system is not None else {}),
            "source": task.where,
            "change": {"index": change.index, "from": task.requirements[change.index].to_json(),
                       "to": change.new.to_json(), "by": change.by},
            "constraints": {"x1": [r.to_json() for r in task.requirements], "x2": [r.to_json() for r in requirements2]},
            "verdicts": {"y1|x1": y1_x1, "y1|x2": _replaced(y1_x1, change.index, y1_changed),
                         "y2|x2": y2_x2, "y2|x1": _replaced(y2_x2, change.index, y2_changed)},
        }

    async def _generate(self, task: Task, instruction: str, stage: str) -> str:
        """The generator's response to `instruction` (the `answer` prompt), in the record's system context."""
        if self.generator is None:
            raise Dropped(stage, "no response, and no generator to write one")
        content = fill(self.prompts["answer"], instruction=instruction)
        system = [{"role": "system", "content": task.system}] if task.system is not None else []
        text = await self.ask("generator", [*system, {"role": "user", "content": content}], stage)
        if not text.strip():
            raise Dropped(stage, "the generator wrote an empty response")
        return text

    async def _all_met(self, instruction: str, requirements: tuple[Requirement, ...], response: str, stage: str,
                       reason: str) -> list[dict]:
        """The verdict of every requirement on `response`, or `Dropped(stage, reason)` unless all are met. The
        programs decide first; the judge is asked only when they all pass."""
        checked = {index: self._verdict_by_program(requirement, response, stage)
                   for index, requirement in enumerate(requirements) if requirement.check is not None}
        if any(verdict["verdict"] != MET for verdict in checked.values()):
            raise Dropped(stage, reason, _failed(checked.values()))
        worded = [index for index, requirement in enumerate(requirements) if requirement.check is None]
        judged = await asyncio.gather(*(self._verdict(instruction, requirements[index], response, stage)
                                        for index in worded), return_exceptions=True)
        for outcome in judged:
            if isinstance(outcome, BaseException):
                raise outcome
        verdicts = checked | dict(zip(worded, judged))
        if any(verdict["verdict"] != MET for verdict in verdicts.values()):
            raise Dropped(stage, reason, _failed(verdicts.values()))
        return [verdicts[index] for index in range(len(requirements))]

    async def _verdict(self, instruction: str, requirement: Requirement, response: str, stage: str) -> dict:
        """Met or failed, by the requirement's program or by the judge; a requirement without a verdict (a check
        that needs an absent NLTK resource, a judge answer without one) drops the record: it cannot be confirmed."""
        if requirement.check is not None:
            return self._verdict_by_program(requirement, response, stage)
        if self.judge is None:
            raise Dropped(stage, "constraints in words need a judge (--judge-url, or --generator-url)")
        content = fill(self.prompts["judge"], instruction=instruction, constraint=requirement.text, response=response)
        answer = await self.ask("judge", [{"role": "user", "content": content}], stage)
        judged = parse_verdict(answer)
        if judged not in (MET, FAILED):
            raise Dropped(stage, "the judge gave no verdict", answer)
        return {"constraint": requirement.text, "verdict": judged, "by": "judge", "judge_answer": answer}

    def _verdict_by_program(self, requirement: Requirement, response: str, stage: str) -> dict:
        with self.statistics.measure("checks"):
            strict, _ = requirement.check.verdicts(response)
        if strict == ERROR:  # IFEval's or IFBench's official checker raised on this response
            raise Dropped(stage, "a check raised an error", f"{requirement.check.id}: {requirement.text}")
        if strict not in (MET, FAILED):
            raise Dropped(stage, f"a check is {strict}", requirement.text)
        return {"constraint": requirement.text, "verdict": strict, "by": "program"}

    async def _change(self, task: Task, y1: str) -> tuple[Change, dict]:
        """A change of one constraint that y1 fails, with y1's verdict on the new constraint: by rule when
        one exists (picked at random, seeded by the record, so a rerun picks the same), else by the generator."""
        with self.statistics.measure("checks"):
            changes = rule_changes(task.instruction, task.requirements, y1)
        if self.generator is None:  # a rule must write x2 and y2 too
            changes = [replace(change, response=y2) for change in changes if change.instruction is not None
                       and (y2 := rule_response(task.requirements[change.index], change.new, y1)) is not None]
        if changes:
            change = random.Random(f"{self.seed}:{task.where}:{task.instruction}").choice(changes)
            if change.instruction is None:
                old = task.requirements[change.index].text
                content = fill(self.prompts["restate"], instruction=task.instruction, old=old, new=change.new.text)
                restated = (await self.ask("generator", [{"role": "user", "content": content}], "x2")).strip()
                if not restated or restated == task.instruction.strip():
                    raise Dropped("x2", "the generator's restated instruction is empty or unchanged", restated)
                change = replace(change, instruction=restated, by="rule, restated by the generator")
        else:
            worded = [index for index, requirement in enumerate(task.requirements) if requirement.check is None]
            if not worded or self.generator is None:
                raise Dropped("x2", "no change of a constraint that y1 fails: none by rule" +
                              ("" if self.generator else " that writes x2 and y2 without a generator"))
            change = await self._modified_by_generator(task, y1, worded)
        y1_new = await self._verdict(change.instruction, change.new.of_instruction(change.instruction), y1, "x2")
        if y1_new["verdict"] != FAILED:
            raise Dropped("x2", "y1 meets the changed constraint")
        return change, y1_new

    async def _modified_by_generator(self, task: Task, y1: str, worded: list[int]) -> Change:
        """The generator's change of one of the constraints in words (`modify`), rewriting the instruction."""
        listed = "\n".join(f"{number}. {task.requirements[index].text}" for number, index in enumerate(worded, 1))
        content = fill(self.prompts["modify"], instruction=task.instruction, constraints=listed, response=y1)
        answer = await self.ask("generator", [{"role": "user", "content": content}], "x2")
        proposal = json_object(answer)
        number, text, instruction = (proposal.get(key) for key in ("index", "constraint", "instruction"))
        usable = (type(number) is int and 1 <= number <= len(worded) and isinstance(text, str) and text.strip()
                  and isinstance(instruction, str) and instruction.strip() not in ("", task.instruction.strip()))
        if not usable:
            raise Dropped("x2", "the generator's change is not usable", answer)
        return Change(worded[number - 1], Requirement(text.strip()), instruction.strip(), by="generator")


def build_pairs(dataset: str, output: str | Path, generator: ModelSettings | None = None,
                judge: ModelSettings | None = None, prompts: dict[str, str] | None = None, seed: int = 0,
                limit: int | None = None, in_flight: int | None = None, log=print) -> dict:
    """Build quadruples from the records of `dataset` (any source the trainer reads) into the folder
    `output`; resumes a run that stopped. The generator and the judge are endpoints or local models; the
    judge defaults to the generator. Returns the report."""
    prompts = prompts or dict(PROMPTS)
    settings = {"seed": seed, "prompts": digest(prompts)}
    pipeline = Pipeline("build-pairs", STAGES, {"pairs": ("pairs.jsonl", STAGES[-1])}, settings,
                        lambda generator_chat, judge_chat: PairBuilder(prompts, generator_chat, judge_chat, seed))
    report = run(pipeline, dataset, output, generator, judge, limit, in_flight)
    log(summary("build-pairs", report))
    return report


def _failed(verdicts) -> str:
    return "; ".join(verdict["constraint"] for verdict in verdicts if verdict["verdict"] != MET)


def _replaced(items, index: int, new) -> list:
    return [new if position == index else item for position, item in enumerate(items)]
