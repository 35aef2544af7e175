"""Constraints no program can check, judged by an LLM behind an OpenAI-compatible endpoint.

Two protocols, each a `Judge`:

- `trace` (`trace_judge.TraceJudge`, the default): the IOPO paper's protocol on TRACE. One request per
  response holding all its constraints; the judge scores each constraint from 0 to 10 and the response
  overall, and a constraint is met only with a score of 10.
- `per-constraint` (`ConstraintJudge`): one request per (response, constraint); the judge sees the whole
  instruction, the one constraint and the response, and ends its answer with `Verdict: YES` or `Verdict: NO`.

An answer that cannot be read, or a request that failed after its retries, leaves its constraints
`unjudged`: counted apart, never as met or failed (the report leaves the prompt out of the prompt level,
as it does with an `unsupported` check). An empty response meets nothing, as in IFBench, and is not sent.
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
REASONING = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)  # a reasoning model's thoughts, even cut off
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
    """The verdict on one constraint of one response."""

    verdict: str
    answer: str | None = None  # the judge's answer about this constraint alone, or why there is none
    score: float | None = None  # its score from 0 to 10, in the protocols that score


@dataclass(frozen=True)
class JudgedResponse:
    """The verdicts on every constraint of one response, and what the judge said of the response as a whole."""

    judgments: tuple[Judgment, ...]
    answer: str | None = None  # the answer to a request about all the constraints at once
    overall: float | None = None  # the judge's overall score, in the protocols that give one
    problem: str | None = None  # why the constraints have no verdict, when the answer cannot be read


def parse_verdict(answer: str) -> str:
    """MET or FAILED from the judge's last `Verdict: YES/NO`, else from an answer that opens with a yes or no
    and a punctuation mark ("No, the response ..."; not "No doubt ..."); else UNJUDGED. Markdown emphasis
    and a `<think>` block are ignored."""
    answer = _MARKUP.sub("", REASONING.sub("", answer)).strip()
    verdicts = _VERDICT.findall(answer)
    if not verdicts:
        leading = _LEADING_ANSWER.match(answer)
        verdicts = [leading.group(1)] if leading else []
    if not verdicts:
        return UNJUDGED
    return MET if verdicts[-1].lower() == "yes" else FAILED


def load_judge_prompt(path: str | Path, placeholders: tuple[str, ...]) -> str:
    """The text of a judge prompt file, which must hold every one of `placeholders`."""
    try:
        template = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise JudgeError(f"{path}: {error.strerror or error}") from None
    missing = [name for name in placeholders if name not in template]
    if missing:
        raise JudgeError(f"{path}: the judge prompt must contain {', '.join(missing)}")
    return template


class Judge:
    """Verdicts of an LLM judge on the constraints of responses; a subclass is a protocol: how it asks, and how
    it reads the answers."""

    protocol: str
    DEFAULT_PROMPT: str
    PLACEHOLDERS: tuple[str, ...]
    MAX_TOKENS: int  # the default length of an answer

    def __init__(self, settings: EndpointSettings, prompt: str | None = None):
        self.settings = settings
        self.prompt = prompt or self.DEFAULT_PROMPT

    @classmethod
    def with_prompt_file(cls, settings: EndpointSettings, path: str | Path | None) -> Judge:
        """The judge with the prompt in `path` (holding this protocol's placeholders), or its default prompt."""
        return cls(settings, None if path is None else load_judge_prompt(path, cls.PLACEHOLDERS))

    def describe(self) -> dict:
        """What decides the verdicts, for the results files."""
        prompt_digest = hashlib.sha256(self.prompt.encode()).hexdigest()[:16]
        return {**asdict(self.settings), "protocol": self.protocol, "prompt_sha256": prompt_digest}

    def check_reachable(self) -> None:
        """`EndpointError` if the judge is down or refuses the key or the model."""
        check_reachable(self.settings)

    def judge_responses(self, cases: list[tuple[str, tuple[JudgedConstraint, ...], str]],
                        cache_path: Path) -> list[JudgedResponse]:
        """One `JudgedResponse` per (instruction, its constraints, response), in order; the answers cached in
        `cache_path` (`CachedChat`), so that a rerun asks nothing again."""
        raise NotImplementedError


class ConstraintJudge(Judge):
    """One request per constraint of a response, answered `Verdict: YES` or `Verdict: NO`."""

    protocol = "per-constraint"
    DEFAULT_PROMPT = JUDGE_PROMPT
    PLACEHOLDERS = ("{instruction}", "{constraint}", "{response}")
    MAX_TOKENS = 512  # two sentences and a verdict

    def judge_responses(self, cases: list[tuple[str, tuple[JudgedConstraint, ...], str]],
                        cache_path: Path) -> list[JudgedResponse]:
        flat = [(instruction, constraint, response) for instruction, constraints, response in cases
                for constraint in constraints]
        judgments = iter(self.judge(flat, cache_path))
        return [JudgedResponse(tuple(next(judgments) for _ in constraints)) for _, constraints, _ in cases]

    def judge(self, cases: list[tuple[str, JudgedConstraint, str]], cache_path: Path) -> list[Judgment]:
        """One `Judgment` per (instruction, constraint, response), in order."""
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
