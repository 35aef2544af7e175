"""Constraints no program can check, judged by an LLM behind an OpenAI-compatible endpoint.

The protocol is the IOPO paper's (TRACE): every constraint of every response is judged on its own, met
or not, and a prompt counts as followed only if all its constraints are met. One request per
(response, constraint): the judge sees the whole instruction, the one constraint and the response, and
ends its answer with `Verdict: YES` or `Verdict: NO`.

An answer without a verdict, or a request that failed after its retries, is `unjudged`: counted apart,
never as met or failed (the report leaves the prompt out of the prompt level, as it does with an
`unsupported` check). An empty response meets nothing, as in IFBench, and is not sent.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..endpoints.client import CachedChat, EndpointSettings, check_reachable
from .checks import FAILED, MET

UNJUDGED = "unjudged"
JUDGE_PREFIX = "judge:"
PLACEHOLDERS = ("{instruction}", "{constraint}", "{response}")

JUDGE_PROMPT = """You judge whether a response follows one constraint of an instruction. Be strict.

[Instruction]
{instruction}

[Constraint]
{constraint}

[Response]
{response}

Judge only this constraint, not the rest of the instruction. Explain your judgement in at most two \
sentences, then end with a line that is exactly "Verdict: YES" if the response meets the constraint, \
or "Verdict: NO" if it does not."""

_VERDICT = re.compile(r"verdict\W{0,4}(yes|no)\b", re.IGNORECASE)
_MARKUP = re.compile(r"[*_`#]")  # markdown around a verdict: "**Verdict:** **YES**"
_REASONING = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)  # a reasoning model's thoughts, even cut off
_LEADING_ANSWER = re.compile(r"\W*(yes|no)(?:[.,;:!]|\s*$)", re.IGNORECASE)  # "Yes." or "No, the text ..."


class JudgeError(ValueError):
    """A judge prompt file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class JudgedConstraint:
    """A constraint stated in words, and its type (for the per-type accuracies)."""

    text: str
    type: str = "constraint"

    @property
    def id(self) -> str:
        return JUDGE_PREFIX + self.type


@dataclass(frozen=True)
class Judgment:
    verdict: str
    answer: str | None  # the judge's answer, or why there is none


def parse_verdict(answer: str) -> str:
    """MET or FAILED from the judge's last `Verdict: YES/NO`, else from an answer that opens with a yes or no
    and a punctuation mark ("No, the response ..."; not "No doubt ..."); else UNJUDGED. Markdown emphasis
    and a `<think>` block are ignored."""
    answer = _MARKUP.sub("", _REASONING.sub("", answer)).strip()
    verdicts = _VERDICT.findall(answer)
    if not verdicts:
        leading = _LEADING_ANSWER.match(answer)
        verdicts = [leading.group(1)] if leading else []
    if not verdicts:
        return UNJUDGED
    return MET if verdicts[-1].lower() == "yes" else FAILED


def load_judge_prompt(path: str | Path | None) -> str:
    """The judge prompt: `JUDGE_PROMPT`, or a file's text with the same three placeholders."""
    if path is None:
        return JUDGE_PROMPT
    try:
        template = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise JudgeError(f"{path}: {error.strerror or error}") from None
    missing = [name for name in PLACEHOLDERS if name not in template]
    if missing:
        raise JudgeError(f"{path}: the judge prompt must contain {', '.join(missing)}")
    return template


class Judge:
    """Verdicts of an LLM judge on (instruction, constraint, response) triples."""

    def __init__(self, settings: EndpointSettings, prompt: str = JUDGE_PROMPT):
        self.settings = settings
        self.prompt = prompt

    def describe(self) -> dict:
        """What decides the verdicts, for the results files."""
        prompt_digest = hashlib.sha256(self.prompt.encode()).hexdigest()[:16]
        return {**asdict(self.settings), "prompt_sha256": prompt_digest}

    def check_reachable(self) -> None:
        """`EndpointError` if the judge is down or refuses the key or the model."""
        check_reachable(self.settings)

    def judge(self, cases: list[tuple[str, JudgedConstraint, str]], cache_path: Path) -> list[Judgment]:
        """One `Judgment` per (instruction, constraint, response), in order; answers cached in `cache_path`."""
        asked = [index for index, (_, _, response) in enumerate(cases) if response.strip()]
        conversations = [self.messages(*cases[index]) for index in asked]
        answers = CachedChat(self.settings, cache_path).answers(conversations, description="judging")
        judgments = [Judgment(FAILED, "empty response")] * len(cases)
        for index, answer in zip(asked, answers):
            judgments[index] = (Judgment(parse_verdict(answer.text), answer.text) if answer.error is None
                                else Judgment(UNJUDGED, answer.error))
        return judgments

    def messages(self, instruction: str, constraint: JudgedConstraint, response: str) -> list[dict]:
        """The request that asks for one verdict."""
        content = fill(self.prompt, instruction=instruction, constraint=constraint.text, response=response)
        return [{"role": "user", "content": content}]


def fill(template: str, **values: str) -> str:
    """`template` with its `{name}` placeholders replaced in one pass (not str.format: the texts may hold
    other braces, even a placeholder's name)."""
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in values))
    return pattern.sub(lambda match: values[match.group(0)[1:-1]], template)
