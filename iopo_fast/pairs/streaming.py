"""Records streamed through LLM stages to files on disk, resumable: the engine of `build-pairs` and
`build-instructions`.

A builder turns one input record into an outcome: a kind of output (its file's name) and the entry to
append there, or `Dropped` with the stage and reason. Outputs and drops (`dropped.jsonl`) are appended and
flushed record by record, so a kill loses at most the record being written; a rerun skips every record
already in any of them, and the cache of every request (`cache.jsonl`) makes the records in flight at the
kill cheap to redo (only the requests in flight are asked again). A record stopped by a request that
failed (after the client's retries) or by a fault of this program is not written: the report counts it
under `to_retry`, with an example of the error, and a rerun builds it again. `input.json` names the input
the folder was built from, the command and the settings that decide which records it keeps: another input,
an edited one, another command or other settings are refused rather than mixed in.
`report.json` counts the records that reached each stage and those dropped for each reason.

Memory does not grow with the records' text: records are read one by one (JSON Lines; a JSON array or
Parquet file is read whole), at most `in_flight` of them are being built at once, and the cache keeps
its answers on disk. What grows is an index: about a hundred bytes per request cached and per record done.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from ..data.sources import DataError, check_source, read_records, resolve_source
from ..endpoints.append_log import AppendLog, complete_lines
from ..endpoints.client import AnswerCache, CachedRequests, Chat, EndpointError, EndpointSettings
from ..generation.local_chat import LocalChat, LocalModel
from ..utils import write_atomically

ModelSettings = EndpointSettings | LocalModel
DROPPED, RETRY = "dropped", "retry"


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


class RecordBuilder(Protocol):
    statistics: Statistics

    async def build(self, where: str, record: object) -> tuple[str, dict]:
        """(the output it goes to, the entry) for one input record, or `Dropped`."""


class ModelRoles:
    """The generator's and the judge's requests (`CachedRequests`), counted and timed in `statistics`."""

    def __init__(self, generator: CachedRequests | None, judge: CachedRequests | None):
        self.generator, self.judge = generator, judge
        self.statistics = Statistics()

    async def ask(self, role: str, messages: list[dict], stage: str) -> str:
        """The answer of the generator or the judge (`role`), or `Dropped` when its request failed."""
        with self.statistics.measure(role):
            answer = await (self.generator if role == "generator" else self.judge).ask(messages)
        self.statistics.requests[role, "cached" if answer.cached else "asked"] += 1
        if answer.error is not None:
            raise Dropped(stage, f"a {role} request failed", answer.error, retry=True)
        return answer.text


@dataclass(frozen=True)
class Pipeline:
    """What `run` needs of a command: its name, its stages in order, its output files by the kind of outcome
    (and the last stage a record of that kind goes through), the settings that decide which records it keeps
    (a folder is resumed only with the same), and how to make its builder from the generator's and the
    judge's requests."""

    name: str
    stages: Sequence[str]
    outputs: dict[str, tuple[str, str]]  # outcome kind -> (file name in the output folder, its last stage)
    settings: dict
    make_builder: Callable[[CachedRequests | None, CachedRequests | None], RecordBuilder]


def run(pipeline: Pipeline, dataset: str, output: str | Path, generator: ModelSettings | None = None,
        judge: ModelSettings | None = None, limit: int | None = None, in_flight: int | None = None) -> dict:
    """Stream the records of `dataset` (any source the trainer reads) through `pipeline` into the folder
    `output`, resuming a run that stopped; the judge defaults to the generator. Returns the report, also
    written to `report.json`."""
    output = Path(output)
    source = resolve_source(dataset)
    check_source(source)
    if source.is_local:  # the records' `source` names, which a resume skips, do not depend on how it is spelled
        source = replace(source, location=str(source.path.resolve()))
    _claim(output, source, pipeline)
    judge = judge or generator
    done, counts, kept = set(), Counter(), Counter(dict.fromkeys(pipeline.outputs, 0))
    for kind, (name, _) in pipeline.outputs.items():
        for _, _, entry in complete_lines(output / name, _has_source):
            done.add(entry["source"])
            kept[kind] += 1
    for _, _, entry in complete_lines(output / "dropped.jsonl", _has_source):
        done.add(entry["source"])
        counts[entry["stage"], entry["reason"]] += 1
    # Enough records in flight to keep every request slot, or every batch, full.
    parallel = [settings.concurrency if isinstance(settings, EndpointSettings) else settings.batch_size
                for settings in (generator, judge) if settings]
    in_flight = in_flight or 4 * max(parallel, default=16)
    start = time.perf_counter()
    this_run = asyncio.run(_run_all(pipeline, source, output, generator, judge, limit, in_flight, done, counts))
    kept.update(this_run.pop("kept"))
    report = _report(pipeline, str(source), kept, counts, this_run, time.perf_counter() - start)
    write_atomically(output / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def _claim(output: Path, source, pipeline: Pipeline) -> None:
    """`output` made the folder of records built from `source` by `pipeline`: a new folder, or one built from
    the same records by the same command with the same settings. Anything else would mix records or skip the
    wrong ones: a `DataError`."""
    identity = {"input": source.location, "fingerprint": source.fingerprint().hex(), "command": pipeline.name,
                "settings": pipeline.settings}
    record = output / "input.json"
    if record.is_file():
        claimed = json.loads(record.read_text())
        if claimed != identity:
            if claimed.get("input") != identity["input"]:
                why = "another input"
            elif claimed.get("fingerprint") != identity["fingerprint"]:
                why = "the input has changed since"
            else:
                settings = claimed.get("settings") or {}
                changed = ["command"] * (claimed.get("command") != pipeline.name) + sorted(
                    key for key in {*settings, *pipeline.settings} if settings.get(key) != pipeline.settings.get(key))
                why = f"other settings: {', '.join(changed)}"
            raise DataError(f"{output}: holds records built from {claimed.get('input')} ({why}); choose another "
                            f"output folder, or delete this one")
        return
    output.mkdir(parents=True, exist_ok=True)
    write_atomically(record, json.dumps(identity, indent=2) + "\n")


async def _run_all(pipeline: Pipeline, source, output: Path, generator: ModelSettings | None,
                   judge: ModelSettings | None, limit: int | None, in_flight: int, done: set[str],
                   counts: Counter) -> dict:
    cache = AnswerCache(output / "cache.jsonl")
    outputs = {kind: AppendLog(output / name) for kind, (name, _) in pipeline.outputs.items()}
    drops = AppendLog(output / "dropped.jsonl")
    kept, started = Counter(), 0
    to_retry, retry_example = Counter(), {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            def opened(settings: ModelSettings):
                chat = Chat(settings, cache) if isinstance(settings, EndpointSettings) else LocalChat(settings, cache)
                return stack.enter_async_context(chat)

            generator_chat = await opened(generator) if generator else None
            # One model for both roles: loaded once, one bound on its requests in flight.
            judge_chat = generator_chat if judge == generator else (await opened(judge) if judge else None)
            builder = pipeline.make_builder(generator_chat, judge_chat)
            building: set[asyncio.Task] = set()

            def record(outcome: tuple[str, dict]) -> None:
                kind, entry = outcome
                if kind == DROPPED:
                    drops.append(entry)
                    counts[entry["stage"], entry["reason"]] += 1
                elif kind == RETRY:
                    to_retry[entry["stage"], entry["reason"]] += 1
                    retry_example.setdefault(entry["reason"], entry["detail"])
                else:
                    outputs[kind].append(entry)
                    kept[kind] += 1

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
        for file in (*outputs.values(), drops, cache):
            file.close()
    return {"kept": kept, "records": started, "to_retry": to_retry, "retry_examples": retry_example,
            **builder.statistics.to_json()}


async def _outcome(builder: RecordBuilder, where: str, raw: object, problem: str) -> tuple[str, dict]:
    """(an output kind, the entry), (DROPPED, why) or (RETRY, why): the outcome of one input record."""
    try:
        if problem:
            raise Dropped("read", "invalid JSON", problem)
        kind, entry = await builder.build(where, raw)
        return kind, {**entry, "source": where}
    except Dropped as drop:
        entry = {"source": where, "stage": drop.stage, "reason": drop.reason, "detail": drop.detail}
        return (RETRY if drop.retry else DROPPED), entry
    except (EndpointError, asyncio.CancelledError):
        raise
    except Exception as error:  # a fault of this program on one record: reported, and the others go on
        return RETRY, {"source": where, "stage": "unknown", "reason": f"an internal error ({type(error).__name__})",
                       "detail": str(error)}


def _report(pipeline: Pipeline, dataset: str, kept: Counter, counts: Counter, this_run: dict, seconds: float) -> dict:
    stages = pipeline.stages
    to_retry = this_run.pop("to_retry")
    stopped = counts + to_retry
    records = sum(kept.values()) + sum(stopped.values())
    reached, remaining = {}, records
    for stage in stages:
        reached[stage] = remaining
        remaining -= sum(count for (at, _), count in stopped.items() if at == stage)
        remaining -= sum(kept[kind] for kind, (_, last) in pipeline.outputs.items() if last == stage)
    return {"input": dataset, "records": records, "kept": dict(kept), "reached": reached,
            "dropped": _by_stage(stages, counts), "to_retry": _by_stage(stages, to_retry),
            "this_run": {"seconds": round(seconds, 3), "records_per_second": round(this_run["records"] / seconds, 3),
                         **this_run}}


def _by_stage(stages: Sequence[str], counts: Counter) -> dict:
    """{stage: {reason: count}}, stages in pipeline order."""
    ordered = [*stages, *sorted({at for at, _ in counts} - set(stages))]
    return {stage: {reason: count for (at, reason), count in sorted(counts.items()) if at == stage}
            for stage in ordered if any(at == stage for at, _ in counts)}


def summary(name: str, report: dict) -> str:
    """The report in a few lines: what was kept, what was dropped where, and what a rerun retries."""
    kept = ", ".join(f"{count} {kind}" for kind, count in report["kept"].items()) or "nothing"
    lines = [f"{name}: {kept} kept of {report['records']} records"]
    for stage, reasons in report["dropped"].items():
        lines += [f"  dropped at {stage}: {count} ({reason})" for reason, count in reasons.items()]
    for stage, reasons in report["to_retry"].items():
        lines += [f"  not built, a rerun retries them: {count} at {stage} ({reason}; for example: "
                  f"{report['this_run']['retry_examples'][reason]})" for reason, count in reasons.items()]
    return "\n".join(lines)


def digest(value: object) -> str:
    """A short digest of a setting (prompts, a plan, a taxonomy), by its repr, for `Pipeline.settings`."""
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def json_object(answer: str) -> dict:
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


def _has_source(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("source"), str)
