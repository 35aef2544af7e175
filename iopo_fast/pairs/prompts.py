"""The prompts of every step of `build-pairs`, in one place; any of them can be replaced from a file.

- `answer`: a response to an instruction (y1 when a record has none, and y2): the instruction alone.
- `modify`: for constraints stated in words, the generator changes one constraint of x1 into one that
  y1 does not meet, and rewrites the instruction; it answers with a JSON object.
- `restate`: for IFEval and IFBench constraints, whose arguments are changed by rule, the generator
  rewrites the instruction so that it asks for the new requirement instead of the old one.
- `judge`: the verdict on one constraint stated in words (the evaluation's judge prompt).

A prompts file is a JSON or YAML mapping from step names to templates; each template must hold its
step's placeholders, filled by `judge.fill`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluation.judge import JUDGE_PROMPT

MODIFY_PROMPT = """You write training data for instruction following. Below are an instruction, the constraints \
it states, and a response that meets all of them.

[Instruction]
{instruction}

[Constraints]
{constraints}

[Response]
{response}

Change exactly one constraint into a different requirement of the same kind that this response does NOT meet \
(another length, keyword, format, tone, language, ending...). Keep everything else in the instruction as it is.
Answer with a JSON object only, no other text:
{"index": <the number of the constraint you changed>, "constraint": "<the new constraint>", \
"instruction": "<the whole new instruction>"}"""

RESTATE_PROMPT = """Rewrite the instruction below so that its requirement "{old}" becomes "{new}". \
Change nothing else. Answer with the new instruction only.

[Instruction]
{instruction}"""

PROMPTS = {"answer": "{instruction}", "modify": MODIFY_PROMPT, "restate": RESTATE_PROMPT, "judge": JUDGE_PROMPT}
PLACEHOLDERS = {"answer": ("instruction",), "modify": ("instruction", "constraints", "response"),
                "restate": ("instruction", "old", "new"), "judge": ("instruction", "constraint", "response")}


class PromptError(ValueError):
    """A prompts file that cannot be used; the message names the file and the reason."""


def load_prompts(path: str | Path | None, defaults: dict[str, str] = PROMPTS,
                 placeholders: dict[str, tuple[str, ...]] = PLACEHOLDERS) -> dict[str, str]:
    """`defaults` (by default `build-pairs`' prompts), with the steps a JSON or YAML file names replaced by its
    templates, each holding its step's `placeholders`."""
    if path is None:
        return dict(defaults)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise PromptError(f"{path}: {error.strerror or error}") from None
    overrides = _parse(path, text)
    if not isinstance(overrides, dict) or not overrides:
        raise PromptError(f"{path}: expected a mapping from step names ({', '.join(defaults)}) to prompt templates")
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise PromptError(f"{path}: unknown step {unknown[0]!r} (the steps are {', '.join(defaults)})")
    for step, template in overrides.items():
        if not isinstance(template, str) or not template.strip():
            raise PromptError(f"{path}: the {step!r} prompt must be a non-empty string")
        missing = [name for name in placeholders[step] if "{" + name + "}" not in template]
        if missing:
            raise PromptError(f"{path}: the {step!r} prompt must contain {', '.join('{' + m + '}' for m in missing)}")
    return {**defaults, **overrides}


def _parse(path: str | Path, text: str) -> object:
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise PromptError(f"{path}{line}: invalid YAML: {getattr(error, 'problem', None) or error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None
