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
the cache of every request (`cache.jsonl`) makes the records in flight at the kill cheap to redo (only
the requests in flight are asked again). A record stopped by a request that failed (after the client's
retries) or by a fault of this program is not written: the report counts it under `to_retry`, with an
example of the error, and a rerun builds it again. `input.json` names the input the folder was built
from: another input, or an edited one, is refused rather than mixed in. `report.json` counts the records
that reached each stage and those dropped for each reason.

Memory does not grow with the records' text: records are read one by one (JSON Lines; a JSON array or
Parquet file is read whole), at most `in_flight` of them are being built at once, and the cache keeps
its answers on disk. What grows is an index: about a hundred bytes per request cached and per record done.
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

from ..data.sources import DataError, check_source, read_records, resolve_source
from ..endpoints.append_log import AppendLog, complete_lines
from ..endpoints.client import AnswerCache, CachedRequests, Chat, EndpointError, EndpointSettings
from ..evaluation.checks import ERROR, FAILED, MET
from ..evaluation.judge import fill, parse_verdict
from ..generation.local_chat import LocalChat, LocalModel
from ..utils import write_atomically
from .changes import Change, rule_changes, rule_response
from .prompts import PROMPTS
from .records import RecordError, Requirement, Task, read_task

STAGES = ("read", "constraints", "y1", "y1 meets x1", "x2", "y2", "y2 meets x2", "y2 fails x1")


class Dropped(Exception):
    """A record that stops at `stage`, for `reason` (a fixed phrase, counted); `detail` is its own. With
    `retry`, the cause is not the record's (a request that failed): it is not recorded as done, and a rerun
    builds it again."""

    def __init__(self, stage: str, reason: str, detail: str | None = None, retry: bool = False):
        super().__init__(reason)
        self.stage, self.reason, self.detail, self.retry = stage, reason, detail, retry


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
            raise Dropped(stage, f"a {role} request failed", answer.error, retry=True)
        return answer.text

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
        answer = await self._ask("judge", [{"role": "user", "content": content}], stage)
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
        y1_new = await self._verdict(change.instruction, change.new.of_instruction(change.instruction), y1, "x2")
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
        usable = (type(number) is int and 1 <= number <= len(worded) and isinstance(text, str) and text.strip()
                  and isinstance(instruction, str) and instruction.strip() not in ("", task.instruction.strip()))
        if not usable:
            raise Dropped("x2", "the generator's change is not usable", answer)
        return Change(worded[number - 1], Requirement(text.strip()), instruction.strip(), by="generator")


ModelSettings = EndpointSettings | LocalModel


def build_pairs(dataset: str, output: str | Path, generator: ModelSettings | None = None,
                judge: ModelSettings | None = None, prompts: dict[str, str] | None = None, seed: int = 0,
                limit: int | None = None, in_flight: int | None = None, log=print) -> dict:
    """Build quadruples from the records of `dataset` (any source the trainer reads) into the folder
    `output`; resumes a run that stopped. The generator and the judge are endpoints or local models; the
    judge defaults to the generator. Returns the report."""
    output = Path(output)
    source = resolve_source(dataset)
    check_source(source)
    if source.is_local:  # the records' `source` names, which a resume skips, do not depend on how it is spelled
        source = replace(source, location=str(source.path.resolve()))
    _claim(output, source)
    judge = judge or generator
    done, counts = set(), Counter()
    accepted = {entry["source"] for _, _, entry in complete_lines(output / "pairs.jsonl", _has_source)}
    for _, _, entry in complete_lines(output / "dropped.jsonl", _has_source):
        done.add(entry["source"])
        counts[entry["stage"], entry["reason"]] += 1
    done |= accepted
    # Enough records in flight to keep every request slot, or every batch, full.
    parallel = [settings.concurrency if isinstance(settings, EndpointSettings) else settings.batch_size
                for settings in (generator, judge) if settings]
    in_flight = in_flight or 4 * max(parallel, default=16)
    start = time.perf_counter()
    this_run = asyncio.run(_build_all(source, output, generator, judge, prompts or dict(PROMPTS), seed, limit,
                                      in_flight, done, counts))
    report = _report(str(source), len(accepted) + this_run.pop("accepted"), counts, this_run,
                     time.perf_counter() - start)
    write_atomically(output / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    log(_summary(report))
    return report


def _claim(output: Path, source) -> None:
    """`output` made the folder of pairs built from `source`: a new folder, or one built from the same records.
    Another input, or an edited one, would mix records or skip the wrong ones: a `DataError`."""
    identity = {"input": source.location, "fingerprint": source.fingerprint().hex()}
    record = output / "input.json"
    if record.is_file():
        claimed = json.loads(record.read_text())
        if claimed != identity:
            why = "another input" if claimed.get("input") != identity["input"] else "the input has changed since"
            raise DataError(f"{output}: holds pairs built from {claimed.get('input')} ({why}); choose another "
                            f"output folder, or delete this one")
        return
    output.mkdir(parents=True, exist_ok=True)
    write_atomically(record, json.dumps(identity, indent=2) + "\n")


async def _build_all(source, output: Path, generator: ModelSettings | None, judge: ModelSettings | None,
                     prompts: dict[str, str], seed: int, limit: int | None, in_flight: int, done: set[str],
                     counts: Counter) -> dict:
    cache = AnswerCache(output / "cache.jsonl")
    pairs, drops = AppendLog(output / "pairs.jsonl"), AppendLog(output / "dropped.jsonl")
    accepted = started = 0
    to_retry, retry_example = Counter(), {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            def opened(settings: ModelSettings):
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
                elif kind == "dropped":
                    drops.append(entry)
                    counts[entry["stage"], entry["reason"]] += 1
                else:
                    to_retry[entry["stage"], entry["reason"]] += 1
                    retry_example.setdefault(entry["reason"], entry["detail"])

            async def collect() -> None:
                nonlocal building
                finished, building = await asyncio.wait(building, return_when=asyncio.FIRST_COMPLETED)
                failures = [task.exception() for task in finished if task.exception() is not None]
                for task in finished:
                    if task.exception() is None:
                        record(task.result())
                if failures:
                    raise failures[0]  # an EndpointError: every request would fail alike

            try:
                for number, (where, raw, problem) in enumerate(read_records(source)):
                    if limit is not None and number >= limit:
                        break
                    if where in done:
                        continue
                    started += 1
                    if len(building) >= in_flight:
                        await collect()
                    building.add(asyncio.create_task(_outcome(builder, where, raw, problem)))
                while building:
                    await collect()
            except BaseException:
                for task in building:
                    task.cancel()
                await asyncio.gather(*building, return_exceptions=True)  # retrieved: nothing left behind
                raise
    finally:
        for file in (pairs, drops, cache):
            file.close()
    return {"accepted": accepted, "records": started, "to_retry": to_retry, "retry_examples": retry_example,
            **builder.statistics.to_json()}


async def _outcome(builder: PairBuilder, where: str, raw: object, problem: str) -> tuple[str, dict]:
    """("accepted", the record), ("dropped", why) or ("retry", why): the outcome of one input record."""
    try:
        if problem:
            raise Dropped("read", "invalid JSON", problem)
        try:
            task = read_task(where, raw)
        except RecordError as error:
            raise Dropped("constraints", "not a usable record", str(error)) from None
        return "accepted", await builder.build(task)
    except Dropped as drop:
        entry = {"source": where, "stage": drop.stage, "reason": drop.reason, "detail": drop.detail}
        return ("retry" if drop.retry else "dropped"), entry
    except (EndpointError, asyncio.CancelledError):
        raise
    except Exception as error:  # a fault of this program on one record: reported, and the others go on
        return "retry", {"source": where, "stage": "unknown", "reason": f"an internal error ({type(error).__name__})",
                         "detail": str(error)}


def _report(dataset: str, accepted: int, counts: Counter, this_run: dict, seconds: float) -> dict:
    to_retry = this_run.pop("to_retry")
    stopped = counts + to_retry
    records = accepted + sum(stopped.values())
    reached, remaining = {}, records
    for stage in STAGES:
        reached[stage] = remaining
        remaining -= sum(count for (at, _), count in stopped.items() if at == stage)
    return {"input": dataset, "records": records, "accepted": accepted, "reached": reached,
            "dropped": _by_stage(counts), "to_retry": _by_stage(to_retry),
            "this_run": {"seconds": round(seconds, 3), "records_per_second": round(this_run["records"] / seconds, 3),
                         **this_run}}


def _by_stage(counts: Counter) -> dict:
    """{stage: {reason: count}}, stages in pipeline order."""
    stages = [*STAGES, *sorted({at for at, _ in counts} - set(STAGES))]
    return {stage: {reason: count for (at, reason), count in sorted(counts.items()) if at == stage}
            for stage in stages if any(at == stage for at, _ in counts)}


def _summary(report: dict) -> str:
    lines = [f"build-pairs: {report['accepted']} of {report['records']} records kept"]
    for stage, reasons in report["dropped"].items():
        lines += [f"  dropped at {stage}: {count} ({reason})" for reason, count in reasons.items()]
    for stage, reasons in report["to_retry"].items():
        lines += [f"  not built, a rerun retries them: {count} at {stage} ({reason}; for example: "
                  f"{report['this_run']['retry_examples'][reason]})" for reason, count in reasons.items()]
    return "\n".join(lines)


def _has_source(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("source"), str)


def _failed(verdicts) -> str:
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
