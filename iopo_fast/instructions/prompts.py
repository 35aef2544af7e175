"""The prompts of every LLM step of `build-instructions`, as files beside this module (`prompts/*.txt`), written
from the IOPO paper's description of TRACE's construction; any of them can be replaced from a file
(`--prompts FILE`, a JSON or YAML mapping from step names to templates, as for `build-pairs`).

- `expand`: the generator adds constraints of the planned dimensions to a simple instruction;
- `structure`: the generator splits the complex instruction into its task, constraints (each with its
  dimension, and its program check when one applies) and input, as a JSON object;
- `review`: quality control, the generator accepts or rejects the structured instruction, as a JSON object;
- `answer`: a response to the instruction (the instruction alone);
- `revise`: a new response after one that did not meet every constraint;
- `judge`: the scores of the constraints in words, by TRACE's protocol (`evaluation.trace_judge`).
"""

from __future__ import annotations

from pathlib import Path

from ..evaluation.trace_judge import TRACE_JUDGE_PROMPT
from ..pairs.prompts import load_prompts

PROMPT_FILES = Path(__file__).resolve().parent / "prompts"
PLACEHOLDERS = {
    "expand": ("instruction", "count", "dimensions"),
    "structure": ("instruction", "dimensions", "checks"),
    "review": ("task", "input", "constraints"),
    "answer": ("instruction",),
    "revise": ("instruction", "response", "unmet"),
    "judge": ("instruction", "constraints", "response"),
}
PROMPTS = {
    **{step: (PROMPT_FILES / f"{step}.txt").read_text(encoding="utf-8").strip()
       for step in ("expand", "structure", "review", "revise")},
    "answer": "{instruction}",
    "judge": TRACE_JUDGE_PROMPT,
}


def load_instruction_prompts(path: str | Path | None) -> dict[str, str]:
    """`PROMPTS`, with the steps a JSON or YAML file names replaced; `PromptError` names the file and the reason."""
    return load_prompts(path, PROMPTS, PLACEHOLDERS)
