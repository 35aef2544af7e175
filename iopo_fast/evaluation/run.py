"""`iopo-fast eval`: generate responses to each benchmark's prompts, check every constraint, report.

For each benchmark, in `output_dir/<benchmark>/`:

- `responses.jsonl`: one line per prompt, its response and every constraint's strict and loose verdict.
  Responses are appended batch by batch as they are generated: an interrupted evaluation, run again
  with the same model and settings, generates only the prompts that have no response yet.
- `generation.json`: the model (with a fingerprint of its files), the backend, the generation settings
  (`max_new_tokens` the number this benchmark is generated with: its own default unless one is given)
  and the benchmark; responses written under other settings, another backend or another model are
  never mixed in.
- `judge-cache.jsonl`, for constraints in words: the LLM judge's answers by request
  (`iopo_fast.endpoints.client`), so an interrupted judging resumes and a rerun asks nothing again.
- `summary.json`: accuracies in both modes (`report.summarize`, by the taxonomy's types and dimensions
  too), the judge's settings if one was asked (and, under TRACE's protocol, the evaluation code's
  overall-score rule beside the paper's, `trace_judge.overall_score_rule`), and
  what answers that ignore the task score on the same prompts: the named trivial answers' summaries
  (`trivial_floors`) and the highest of their family, with the member that reaches it (`trivial_family_floor`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from ..endpoints.append_log import AppendLog, complete_lines
from ..generation.generators import generator_class
from ..generation.settings import GenerationSettings
from ..model.loading import model_fingerprint
from ..utils import write_atomically
from .benchmarks import EvalItem, benchmark_name, default_max_new_tokens, load_benchmark
from .checks import MODES
from .judge import Judge, JudgedResponse
from .report import LEVELS, format_family_floor, format_table, summarize
from .taxonomy import Taxonomy, load_taxonomy
from .trace_judge import overall_score_rule
from .trivial_answers import TRIVIAL_ANSWERS, TRIVIAL_FAMILY

RESPONSE_FIELDS = ("key", "prompt", "response")  # what a line of responses.jsonl holds at least


class EvaluationError(RuntimeError):
    """Existing results that cannot be continued; the message says why and what to do."""


def evaluate_model(model: str, benchmarks: list[str], output_dir: str | Path, settings: GenerationSettings,
                   limit: int | None = None, make_generator: Callable | None = None, replace_stale: bool = False,
                   judge: Judge | None = None, taxonomy: Taxonomy | None = None, log=print) -> dict:
    """Evaluate `model` on each benchmark; returns {benchmark: {"strict": summary, "loose": summary}}.

    `limit` takes the first prompts of each benchmark only. `make_generator(model, settings)` builds the
    generator (default: `generator_class("auto")`), once, only if some response is missing: a callable
    `generator(prompts, max_new_tokens=...)` from prompts to responses, given each benchmark's number of new
    tokens (`settings.max_new_tokens`, or that benchmark's default when it is None); if it has a `stream` of
    the same arguments, yielding (index, response) as each ends, that is used instead. Its `backend` names it,
    and its `batch_size` (if it has one) is how many prompts it is given at a time. Responses in `output_dir`
    of another model, backend or settings (that benchmark's number of new tokens included) are an
    `EvaluationError`, or with `replace_stale` are discarded (a training run's own output folder, where a new
    run replaces an old one). `judge` gives the verdicts of constraints stated in words (`judge:PATH`
    benchmarks); it is asked whether it is up before any generation they need. `taxonomy` (default: TRACE's)
    places each constraint in a type and dimension, for the accuracies by type and dimension.
    """
    taxonomy = taxonomy or load_taxonomy()
    make_generator = make_generator or generator_class("auto")
    names = [benchmark_name(spec) for spec in benchmarks]
    if len(set(names)) < len(names):
        raise EvaluationError(f"benchmarks {benchmarks} would share a results folder: give each a distinct name")
    items = {spec: load_benchmark(spec)[:limit] for spec in benchmarks}  # every benchmark is read before the model loads
    judged_specs = [spec for spec, benchmark_items in items.items() if any(item.judged for item in benchmark_items)]
    if judged_specs and judge is None:
        raise EvaluationError(f"{', '.join(judged_specs)}: constraints in words need an LLM judge "
                              f"(--judge-url and --judge-model)")
    identity = {"model": model, "model_fingerprint": model_fingerprint(model), "backend": make_generator.backend}
    # Each benchmark's settings, with the number of new tokens it is generated with: recorded and compared as such.
    resolved = {spec: _settings_for(spec, settings) for spec in benchmarks}
    identities = {spec: {**identity, "generation": resolved[spec].as_dict(), "benchmark": spec} for spec in benchmarks}
    responses, pending, floors, family_floors = {}, {}, {}, {}
    for spec, benchmark_items in items.items():
        responses[spec] = _responses_so_far(Path(output_dir) / benchmark_name(spec), identities[spec], replace_stale)
        # A response is reused only for the same prompt: an edited benchmark file has its changed prompts answered anew.
        pending[spec] = [item for item in benchmark_items
                         if responses[spec].get(item.key, {}).get("prompt") != item.prompt]
    if any(pending[spec] for spec in judged_specs):
        judge.check_reachable()  # before the generation, which may take hours
    generator = None
    results = {}
    for spec, benchmark_items in items.items():
        name = benchmark_name(spec)
        folder, benchmark_identity, written = Path(output_dir) / name, identities[spec], responses[spec]
        if pending[spec]:
            generator = generator or make_generator(model, settings)
            log(f"{name}: generating {len(pending[spec])} responses with {generator.backend} "
                f"({len(benchmark_items) - len(pending[spec])} already written)")
            _write_json(folder / "generation.json", benchmark_identity)
            _generate(generator, pending[spec], folder / "responses.jsonl", written,
                      getattr(generator, "batch_size", settings.batch_size), resolved[spec].max_new_tokens)
        generated = [written.pop(item.key) for item in benchmark_items]
        texts = [row["response"] for row in generated]
        judged = spec in judged_specs
        judged_responses = (judge.judge_responses([(item.prompt, item.judged, text) for item, text
                                                   in zip(benchmark_items, texts)], folder / "judge-cache.jsonl")
                            if judged else [JudgedResponse(()) for _ in benchmark_items])
        rows = [{**score(item, text, judged_response), "cut": answer["cut"]}
                for item, text, judged_response, answer in zip(benchmark_items, texts, judged_responses, generated)]
        _write_lines(folder / "responses.jsonl", rows + list(written.values()))  # and those beyond `limit`
        results[name] = {mode: summarize(rows, mode, taxonomy=taxonomy) for mode in MODES}
        judge_settings = {"judge": judge.describe()} if judged else {}
        if judged and judge.protocol == "trace":
            judge_settings["overall_score_rule"] = overall_score_rule(rows)
        # What trivial answers score on the same prompts (by program; a judge is not asked about them).
        floors[name], family_floors[name] = ({}, {}) if judged else trivial_floors(benchmark_items)
        _write_json(folder / "summary.json", {**benchmark_identity, **judge_settings, "limit": limit,
                                              "summary": results[name], "trivial_floors": floors[name],
                                              "trivial_family_floor": family_floors[name]})
    log(format_table(results))
    if any(family_floors.values()):
        log("\n".join(f"{name} {format_family_floor(floor)}" for name, floor in family_floors.items() if floor))
    log("what the named trivial answers score on the same prompts:\n" + format_table(
        {f"{name} {answer}": by_mode for name, by_answer in floors.items() for answer, by_mode in by_answer.items()}))
    return results


def _settings_for(spec: str, settings: GenerationSettings) -> GenerationSettings:
    """`settings` as the benchmark `spec` is generated with: its default number of new tokens unless one is given."""
    if settings.max_new_tokens is not None:
        return settings
    return dataclasses.replace(settings, max_new_tokens=default_max_new_tokens(spec))


def trivial_floors(items: list[EvalItem]) -> tuple[dict[str, dict[str, dict]], dict]:
    """What answers that ignore the task score on `items`: the summaries, in each mode, of each named trivial
    answer (`TRIVIAL_ANSWERS`); and the family's floor (`TRIVIAL_FAMILY`): in each mode and at each level, the
    highest accuracy of any member, and which member it is (the first in the family's order on a tie)."""
    rows: dict[str, list[dict]] = {name: [] for name in TRIVIAL_FAMILY}
    logging.disable(logging.ERROR)  # IFEval's language check logs every text with no words: "." here
    try:
        for item in items:
            by_text: dict[str, dict] = {}  # members that give the same text share its verdicts
            for name, respond in TRIVIAL_FAMILY.items():
                text = respond(item.prompt)
                if text not in by_text:
                    by_text[text] = score(item, text)
                rows[name].append(by_text[text])
    finally:
        logging.disable(logging.NOTSET)
    summaries = {name: {mode: summarize(member_rows, mode) for mode in MODES} for name, member_rows in rows.items()}
    family: dict = {"members": len(TRIVIAL_FAMILY)}
    for mode in MODES:
        family[mode] = {}
        for level in LEVELS:
            member = max(summaries, key=lambda name: summaries[name][mode][level]["accuracy"] or 0.0)
            family[mode][level] = {"accuracy": summaries[member][mode][level]["accuracy"], "member": member}
    return {answer: summaries[answer] for answer in TRIVIAL_ANSWERS}, family


def score(item: EvalItem, response: str, judged: JudgedResponse = JudgedResponse(())) -> dict:
    """One line of responses.jsonl: the prompt, the response and each constraint's verdicts. A judged constraint
    has one verdict, the same in both modes, with the judge's answer about it or its score beside it; an answer
    about the whole response, its overall score and why it could not be read are the row's."""
    verdicts = [check.verdicts(response) for check in item.checks]
    checks = [{"id": check.id, "kwargs": check.kwargs, "strict": strict, "loose": loose}
              for check, (strict, loose) in zip(item.checks, verdicts)]
    checks += [{"id": constraint.id, "constraint": constraint.text, "strict": judgment.verdict,
                "loose": judgment.verdict, **_present(judge_answer=judgment.answer, score=judgment.score)}
               for constraint, judgment in zip(item.judged, judged.judgments, strict=True)]
    return {"key": item.key, "prompt": item.prompt, "response": response, "checks": checks,
            **_present(judge_answer=judged.answer, judge_overall_score=judged.overall, judge_problem=judged.problem)}


def _present(**values) -> dict:
    """The `values` that are not None."""
    return {name: value for name, value in values.items() if value is not None}


def _responses_so_far(folder: Path, identity: dict, replace_stale: bool) -> dict[str, dict]:
    """The rows already generated under exactly these settings (`generation.json`), by prompt key."""
    folder.mkdir(parents=True, exist_ok=True)
    path, identity_file = folder / "responses.jsonl", folder / "generation.json"
    # Files written before the backend was recorded were all written by transformers.
    saved = json.loads(identity_file.read_text()) if identity_file.is_file() else None
    written = path.is_file() and path.stat().st_size > 0
    stale = written and (saved is None or {"backend": "transformers", **saved} != identity)
    if stale and replace_stale:
        path.unlink()
        return {}
    if stale:
        raise EvaluationError(f"{folder} holds responses of another model, backend or generation settings "
                              f"(see {identity_file}): choose another output folder, delete it, or match them")
    # A line cut by a kill is dropped (and the file rewritten without it): that prompt is answered again.
    rows = (row for _, _, row in complete_lines(path, _is_response))
    return {row["key"]: {**{name: row[name] for name in RESPONSE_FIELDS}, "cut": row.get("cut")} for row in rows}


def _is_response(row: object) -> bool:
    return isinstance(row, dict) and all(isinstance(row.get(name), str) for name in RESPONSE_FIELDS)


def _generate(generator, items: list[EvalItem], path: Path, responses: dict[str, dict], batch_size: int,
              max_new_tokens: int) -> None:
    """Generate at most `max_new_tokens` per response, appending each response to `path` (an `AppendLog`) as
    soon as it is known: as it ends, from a generator that streams (`generator.stream(prompts, max_new_tokens)`
    yielding (index, response)), else as its batch of `batch_size` prompts ends.
    Prompts of similar length are generated together: less padding to attend to."""
    items = sorted(items, key=lambda item: len(item.prompt))
    log = AppendLog(path)
    try:
        with tqdm(total=len(items), desc="generating", unit="prompt") as bar:
            for item, response in _answers(generator, items, batch_size, max_new_tokens):
                # `cut`: whether it stopped at max_new_tokens (None from a generator that does not say).
                responses[item.key] = {"key": item.key, "prompt": item.prompt, "response": str(response),
                                       "cut": getattr(response, "cut", None)}
                log.append(responses[item.key])
                bar.update()
    finally:
        log.close()


def _answers(generator, items: list[EvalItem], batch_size: int, max_new_tokens: int):
    """(item, response) pairs, each as soon as the generator gives it."""
    if hasattr(generator, "stream"):
        for index, response in generator.stream([item.prompt for item in items], max_new_tokens=max_new_tokens):
            yield items[index], response
        return
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        yield from zip(batch, generator([item.prompt for item in batch], max_new_tokens=max_new_tokens))


def _write_lines(path: Path, rows: list[dict]) -> None:
    write_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _write_json(path: Path, value: dict) -> None:
    write_atomically(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
