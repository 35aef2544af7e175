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
`dropped.jsonl` with their stage, reason and details. Both are appended and flushed record by record, so
a kill loses at most the record being written; a rerun skips every record already in either file, and
the cache of every request (`cache.jsonl`) makes the records in flight at the kill cost nothing to
redo. `report.json` counts the records that reached each stage and those dropped for each reason.

Memory is bounded: records are read one by one, at most `in_flight` of them are being built at once, and
the cache keeps its answers on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..checkpoint import write_atomically
from ..endpoint import AnswerCache, CachedRequests, Chat, EndpointSettings, check_reachable
from ..evaluation.checks import FAILED, MET
from ..evaluation.judge import fill, parse_verdict
from ..jsonl import AppendLog, complete_lines
from ..local_chat import LocalChat, LocalModel
from ..sources import check_source, read_records, resolve_source
from .changes import Change, rule_changes, rule_response
from .prompts import PROMPTS
from .records import RecordError, Requirement, Task, read_task

STAGES = ("read", "constraints", "y1", "y1 meets x1", "x2", "y2", "y2 meets x2", "y2 fails x1")


class Dropped(Exception):
    """A record that stops at `stage`, for `reason` (a fixed phrase, counted); `detail` is its own."""

    def __init__(self, stage: str, reason: str, detail: str | None = None):
        super().__init__(reason)
        self.stage, self.reason, self.detail = stage, reason, detail


@dataclass
class Statistics:
    """Seconds spent waiting for each kind of step (summed over the records built at the same time), and
    requests by role, asked of the model or answered from the cache."""

    seconds: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)

    @contextlib.contextmanager
    def measure(self, step: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] += time.perf_counter() - start

    def to_json(self) -> dict:
        return {"requests": {f"{role} ({origin})": count for (role, origin), count in sorted(self.requests.items())},
                "waiting_seconds": {step: round(value, 3) for step, value in sorted(self.seconds.items())}}


class PairBuilder:
    """Builds the quadruple of one `Task`, or raises `Dropped`."""

    def __init__(self, prompts: dict[str, str], generator: CachedRequests | None, judge: CachedRequests | None,
                 seed: int = 0):
        self.prompts, self.generator, self.judge, self.seed = prompts, generator, judge, seed
        self.statistics = Statistics()

    async def build(self, task: Task) -> dict:
        y1 = task.response if task.response is not None else await self._generate(task, task.instruction, "y1")
        y1_x1 = await self._verdicts(task.instruction, task.requirements, y1, "y1 meets x1")
        if not all(verdict["verdict"] == MET for verdict in y1_x1):
            raise Dropped("y1 meets x1", "y1 does not meet x1", _failed(y1_x1))
        change, y1_changed = await self._change(task, y1)
        x2 = change.instruction
        requirements2 = _replaced(task.requirements, change.index, change.new)
        if self.generator is not None:
            y2 = await self._generate(task, x2, "y2")
        else:
            y2 = rule_response(task.requirements[change.index], change.new, y1)  # not None: `_change` chose so
        y2_x2 = await self._verdicts(x2, requirements2, y2, "y2 meets x2")
        if not all(verdict["verdict"] == MET for verdict in y2_x2):
            raise Dropped("y2 meets x2", "y2 does not meet x2", _failed(y2_x2))
        [y2_changed] = await self._verdicts(task.instruction, (task.requirements[change.index],), y2, "y2 fails x1")
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
        text = await self._ask("generator", [*system, {"role": "user", "content": content}], stage)
        if not text.strip():
            raise Dropped(stage, "the generator wrote an empty response")
        return text

    async def _ask(self, role: str, messages: list[dict], stage: str) -> str:
        """The answer of the generator or the judge (`role`), or `Dropped` when its request failed."""
        with self.statistics.measure(role):
            answer = await (self.generator if role == "generator" else self.judge).ask(messages)
        self.statistics.requests[role, "cached" if answer.cached else "asked"] += 1
        if answer.error is not None:
            raise Dropped(stage, f"a {role} request failed", answer.error)
        return answer.text

    async def _verdicts(self, instruction: str, requirements: tuple[Requirement, ...], response: str,
                        stage: str) -> list[dict]:
        """The verdict of every requirement on `response`: by its program, or by the judge. A requirement
        without a verdict (a check that needs an absent NLTK resource, a judge answer without one) drops
        the record: it cannot be confirmed."""
        async def verdict(requirement: Requirement) -> dict:
            if requirement.check is not None:
                with self.statistics.measure("checks"):
                    try:
                        strict, _ = requirement.check.verdicts(response)
                    except Exception as error:  # a reference checker that cannot read this response
                        raise Dropped(stage, "a check raised an error", f"{requirement.check.id}: {error!r}") from None
                if strict not in (MET, FAILED):
                    raise Dropped(stage, f"a check is {strict}", requirement.text)
                return {"constraint": requirement.text, "verdict": strict, "by": "program"}
            if self.judge is None:
                raise Dropped(stage, "constraints in words need a judge (--judge-url, or --generator-url)")
            content = fill(self.prompts["judge"], instruction=instruction, constraint=requirement.text, response=response)
            answer = await self._ask("judge", [{"role": "user", "content": content}], stage)
            judged = parse_verdict(answer)
            if judged not in (MET, FAILED):
                raise Dropped(stage, "the judge gave no verdict", answer)
            return {"constraint": requirement.text, "verdict": judged, "by": "judge", "judge_answer": answer}

        return list(await asyncio.gather(*map(verdict, requirements)))

    async def _change(self, task: Task, y1: str) -> tuple[Change, dict]:
        """A change of one constraint that y1 fails, with y1's verdict on the new constraint: by rule when
        one exists (picked at random, seeded by the record, so a rerun picks the same), else by the generator."""
        changes = rule_changes(task.instruction, task.requirements, y1)
        if self.generator is None:  # a rule must write x2 and y2 too
            changes = [change for change in changes if change.instruction is not None
                       and rule_response(task.requirements[change.index], change.new, y1) is not None]
        if changes:
            change = random.Random(f"{self.seed}:{task.where}:{task.instruction}").choice(changes)
            if change.instruction is None:
                old = task.requirements[change.index].text
                content = fill(self.prompts["restate"], instruction=task.instruction, old=old, new=change.new.text)
                restated = (await self._ask("generator", [{"role": "user", "content": content}], "x2")).strip()
                if not restated or restated == task.instruction.strip():
                    raise Dropped("x2", "the generator's restated instruction is empty or unchanged", restated)
                change = replace(change, instruction=restated, by="rule, restated by the generator")
        else:
            worded = [index for index, requirement in enumerate(task.requirements) if requirement.check is None]
            if not worded or self.generator is None:
                raise Dropped("x2", "no change of a constraint that y1 fails: none by rule" +
                              ("" if self.generator else " that writes x2 and y2 without a generator"))
            change = await self._modified_by_generator(task, y1, worded)
        [y1_new] = await self._verdicts(change.instruction, (change.new,), y1, "x2")
        if y1_new["verdict"] != FAILED:
            raise Dropped("x2", "y1 meets the changed constraint")
        return change, y1_new

    async def _modified_by_generator(self, task: Task, y1: str, worded: list[int]) -> Change:
        """The generator's change of one of the constraints in words (`modify`), rewriting the instruction."""
        listed = "\n".join(f"{number}. {task.requirements[index].text}" for number, index in enumerate(worded, 1))
        content = fill(self.prompts["modify"], instruction=task.instruction, constraints=listed, response=y1)
        answer = await self._ask("generator", [{"role": "user", "content": content}], "x2")
        proposal = _json_object(answer)
        number, text, instruction = (proposal.get(key) for key in ("index", "constraint", "instruction"))
        usable = (isinstance(number, int) and 1 <= number <= len(worded) and isinstance(text, str) and text.strip()
                  and isinstance(instruction, str) and instruction.strip() not in ("", task.instruction.strip()))
        if not usable:
            raise Dropped("x2", "the generator's change is not usable", answer)
        return Change(worded[number - 1], Requirement(text.strip()), instruction.strip(), by="generator")


Model = EndpointSettings | LocalModel


def build_pairs(dataset: str, output: str | Path, generator: Model | None = None, judge: Model | None = None,
                prompts: dict[str, str] | None = None, seed: int = 0, limit: int | None = None,
                in_flight: int | None = None, log=print) -> dict:
    """Build quadruples from the records of `dataset` (any source the trainer reads) into the folder
    `output`; resumes a run that stopped. The generator and the judge are endpoints or local models; the
    judge defaults to the generator. Returns the report."""
    output = Path(output)
    source = resolve_source(dataset)
    check_source(source)
    judge = judge or generator
    for settings in {generator, judge} - {None}:
        if isinstance(settings, EndpointSettings):
            check_reachable(settings)  # before any work: an endpoint that is down is one error
    output.mkdir(parents=True, exist_ok=True)
    accepted = [entry["source"] for _, _, entry in complete_lines(output / "pairs.jsonl", _has_source)]
    dropped = [entry for _, _, entry in complete_lines(output / "dropped.jsonl", _has_source)]
    done = {*accepted, *(entry["source"] for entry in dropped)}
    counts = Counter((entry["stage"], entry["reason"]) for entry in dropped)
    # Enough records in flight to keep every request slot, or every batch, full.
    parallel = [settings.concurrency if isinstance(settings, EndpointSettings) else settings.batch_size
                for settings in (generator, judge) if settings]
    in_flight = in_flight or 4 * max(parallel, default=16)
    start = time.perf_counter()
    statistics = asyncio.run(_build_all(source, output, generator, judge, prompts or dict(PROMPTS), seed, limit,
                                        in_flight, done, counts))
    report = _report(str(source), len(accepted) + statistics.pop("accepted"), counts, statistics,
                     time.perf_counter() - start)
    write_atomically(output / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    log(_summary(report))
    return report


async def _build_all(source, output: Path, generator: Model | None, judge: Model | None,
                     prompts: dict[str, str], seed: int, limit: int | None, in_flight: int, done: set[str],
                     counts: Counter) -> dict:
    cache = AnswerCache(output / "cache.jsonl")
    pairs, drops = AppendLog(output / "pairs.jsonl"), AppendLog(output / "dropped.jsonl")
    accepted = records = 0
    try:
        async with contextlib.AsyncExitStack() as stack:
            def opened(settings: Model):
                chat = Chat(settings, cache) if isinstance(settings, EndpointSettings) else LocalChat(settings, cache)
                return stack.enter_async_context(chat)

            generator_chat = await opened(generator) if generator else None
            # One model for both roles: loaded once, one bound on its requests in flight.
            judge_chat = generator_chat if judge == generator else (await opened(judge) if judge else None)
            builder = PairBuilder(prompts, generator_chat, judge_chat, seed=seed)
            building: set[asyncio.Task] = set()

            def record(outcome: tuple[str, dict]) -> None:
                nonlocal accepted
                kind, entry = outcome
                if kind == "accepted":
                    pairs.append(entry)
                    accepted += 1
                else:
                    drops.append(entry)
                    counts[entry["stage"], entry["reason"]] += 1

            for number, (where, raw, problem) in enumerate(read_records(source)):
                if limit is not None and number >= limit:
                    break
                if where in done:
                    continue
                records += 1
                if len(building) >= in_flight:
                    finished, building = await asyncio.wait(building, return_when=asyncio.FIRST_COMPLETED)
                    for task in finished:
                        record(task.result())
                building.add(asyncio.create_task(_outcome(builder, where, raw, problem)))
            while building:
                finished, building = await asyncio.wait(building, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    record(task.result())
    finally:
        for log in (pairs, drops, cache):
            log.close()
    return {"accepted": accepted, "records": records, **builder.statistics.to_json()}


async def _outcome(builder: PairBuilder, where: str, raw: object, problem: str) -> tuple[str, dict]:
    try:
        if problem:
            raise Dropped("read", "invalid JSON", problem)
        try:
            task = read_task(where, raw)
        except RecordError as error:
            raise Dropped("constraints", "not a usable record", str(error)) from None
        return "accepted", await builder.build(task)
    except Dropped as drop:
        return "dropped", {"source": where, "stage": drop.stage, "reason": drop.reason, "detail": drop.detail}


def _report(dataset: str, accepted: int, counts: Counter, statistics: dict, seconds: float) -> dict:
    records = accepted + sum(counts.values())
    reached, remaining = {}, records
    for stage in STAGES:
        reached[stage] = remaining
        remaining -= sum(count for (dropped_at, _), count in counts.items() if dropped_at == stage)
    dropped = {stage: {reason: count for (at, reason), count in sorted(counts.items()) if at == stage}
               for stage in STAGES if any(at == stage for at, _ in counts)}
    return {"input": dataset, "records": records, "accepted": accepted, "reached": reached, "dropped": dropped,
            "this_run": {"seconds": round(seconds, 3), "records_per_second": round(statistics["records"] / seconds, 3),
                         **statistics}}


def _summary(report: dict) -> str:
    lines = [f"build-pairs: {report['accepted']} of {report['records']} records kept"]
    for stage, reasons in report["dropped"].items():
        lines += [f"  dropped at {stage}: {count} ({reason})" for reason, count in reasons.items()]
    return "\n".join(lines)


def _has_source(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("source"), str)


def _failed(verdicts: list[dict]) -> str:
    return "; ".join(verdict["constraint"] for verdict in verdicts if verdict["verdict"] != MET)


def _replaced(items, index: int, new) -> list:
    return [new if position == index else item for position, item in enumerate(items)]


def _json_object(answer: str) -> dict:
    """The first JSON object in a model's answer (inside a code fence or not), else {}."""
    start = answer.find("{")
    while start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(answer, start)
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            pass
        start = answer.find("{", start + 1)
    return {}
