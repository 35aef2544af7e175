"""The IOPO paper's judging protocol on TRACE: one request per response, every constraint scored from 0 to 10.

The judge sees the instruction, its constraints as a numbered list and the response. It explains each
constraint's evaluation, then answers in the format of TRACE's evaluation code, which this parser reads:

    Fine Grained Score: [{"1": 10, "2": 0, ...}]
    Constraints Overall Score: [[5]]

(TRACE's own prompt keys the scores by the constraints' text; numbers keep quotes in a constraint from
breaking the JSON.)

A constraint is met only with a score of 10, so a response follows its instruction only if every
constraint scores 10 (the paper's accuracy). The overall score is kept beside it: TRACE's evaluation
code counts a response by it (`overall_score_rule`), and the two rules disagree when a judge gives 10
overall to a response it scored below 10 somewhere, or the reverse; how often is reported.

The prompt (`trace_judge_prompt.txt` beside this module) is written for this project from the paper's
description and keeps the evaluation code's answer format; `--judge-prompt FILE` replaces it (holding `{instruction}`,
`{constraints}` and `{response}`), e.g. with the paper's own.

An answer is untrusted: scores are read by position, from the last "Fine Grained Score" whose value can be
read: the first JSON object or list after it (an object, a list holding one or one per constraint, or a list
of numbers), else, when that is not valid JSON (a quote inside a key, single quotes, a trailing comma), the
numbers that follow its keys. A score is a number from 0 to 10, or a string such as "10" or "10/10". An
answer without one score per constraint leaves every constraint of the response `unjudged`, with the
reason and the answer kept.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..endpoints.client import CachedChat
from .checks import FAILED, MET
from .judge import REASONING, UNJUDGED, Judge, JudgedConstraint, JudgedResponse, Judgment, fill
from .report import accuracy

FULL_SCORE = 10.0

# The default prompt, a file a user can copy and edit (`--judge-prompt`).
TRACE_JUDGE_PROMPT = (Path(__file__).resolve().parent / "trace_judge_prompt.txt").read_text(encoding="utf-8").strip()

_FINE_GRAINED = re.compile(r"fine[\s_-]*grained[\s_-]*scores?[\s*:]*", re.IGNORECASE)  # "**Fine Grained Score:**"
_OVERALL = re.compile(r"overall\s+score\W*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)  # "Constraints Overall Score: [[5]]"
_LOOSE_SCORE = re.compile(r"""["']?\s*:\s*["']?(\d+(?:\.\d+)?)(?:\s*/\s*10)?["']?\s*[,}]""")  # "key": 10, in broken JSON
_OUT_OF_TEN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*")
# A constraint that already carries its number, as TRACE's do ("1. ...", "2、...", "3) ..."; not "1.5 lines").
_NUMBERED = re.compile(r"\s*\d+\s*(?:[)、]|\.(?!\d))")


class TraceJudge(Judge):
    """One request per response; every constraint scored, and met only with a score of 10."""

    protocol = "trace"
    DEFAULT_PROMPT = TRACE_JUDGE_PROMPT
    PLACEHOLDERS = ("{instruction}", "{constraints}", "{response}")
    MAX_TOKENS = 2048  # an explanation per constraint (TRACE's have up to 15) before the scores

    def judge_responses(self, cases: list[tuple[str, tuple[JudgedConstraint, ...], str]],
                        cache_path: Path) -> list[JudgedResponse]:
        asked = [index for index, (_, _, response) in enumerate(cases) if response.strip()]
        conversations = [self.messages(*cases[index]) for index in asked]
        answers = CachedChat(self.settings, cache_path).answers(conversations, description="judging")
        judged = [JudgedResponse(tuple(Judgment(FAILED, score=0.0) for _ in constraints), "empty response", 0.0)
                  for _, constraints, _ in cases]
        for index, answer in zip(asked, answers):
            count = len(cases[index][1])
            judged[index] = (read_scores(answer.text, count) if answer.error is None
                             else JudgedResponse((Judgment(UNJUDGED),) * count, answer.error, problem="no answer"))
        return judged

    def messages(self, instruction: str, constraints: tuple[JudgedConstraint, ...], response: str) -> list[dict]:
        """The request that asks for every score of one response."""
        content = fill(self.prompt, instruction=instruction, constraints=numbered(constraints), response=response)
        return [{"role": "user", "content": content}]


def numbered(constraints: tuple[JudgedConstraint, ...]) -> str:
    """The constraints one per line, each with its number (kept where the text already starts with one)."""
    return "\n".join(constraint.text if _NUMBERED.match(constraint.text) else f"{number}. {constraint.text}"
                     for number, constraint in enumerate(constraints, start=1))


def read_scores(answer: str, count: int) -> JudgedResponse:
    """The verdicts in a judge's answer about `count` constraints: each met only with a score of 10; all
    `unjudged`, with the reason, if the fine-grained scores cannot be read. The overall score is read apart."""
    text = REASONING.sub("", answer)
    overall = [float(value) for value in _OVERALL.findall(text)]
    overall_score = overall[-1] if overall and overall[-1] <= FULL_SCORE else None
    scores, problem = _fine_grained(text, count)
    if problem is not None:
        return JudgedResponse((Judgment(UNJUDGED),) * count, answer, overall_score, problem)
    judgments = tuple(Judgment(MET if score == FULL_SCORE else FAILED, score=score) for score in scores)
    return JudgedResponse(judgments, answer, overall_score)


def _fine_grained(text: str, count: int) -> tuple[list[float], str | None]:
    """The scores after the last "Fine Grained Score" that has readable ones, in order, or why none can be read
    (the reason for the last header tried)."""
    headers = list(_FINE_GRAINED.finditer(text))
    if not headers:
        return [], "no fine-grained scores"
    problem = None
    for header in reversed(headers):  # a judge that revises its scores, or mentions them after giving them
        scores, problem = _scores_after(text[header.end():], count)
        if problem is None:
            return scores, None
    return [], problem


def _scores_after(rest: str, count: int) -> tuple[list[float], str | None]:
    """The scores of the first JSON value after a header, read by position."""
    start = min((index for index in (rest.find("["), rest.find("{")) if index != -1), default=-1)
    end = _OVERALL.search(rest)
    if start == -1 or (end is not None and end.start() < start):
        return [], "the fine-grained scores are not JSON"
    try:
        # Objects as lists of pairs, not dicts: a judge that names two constraints alike still gives two scores.
        value, _ = json.JSONDecoder(object_pairs_hook=lambda pairs: pairs).raw_decode(rest, start)
    except json.JSONDecodeError:
        segment = rest[start:end.start() if end is not None else None]
        value = _LOOSE_SCORE.findall(segment)
        if not value:
            return [], "the fine-grained scores are not JSON"
    if isinstance(value, list) and value and all(_is_object(element) for element in value):
        value = [pair for element in value for pair in element]  # [{...}] as in TRACE's format, or [{...}, {...}]
    raw = [score for _, score in value] if _is_object(value) else value
    if not isinstance(raw, list) or len(raw) != count:
        scored = len(raw) if isinstance(raw, list) else "no"
        return [], f"{scored} fine-grained scores for {count} constraints"
    scores = [_number(score) for score in raw]
    if any(score is None or not 0 <= score <= FULL_SCORE for score in scores):
        return [], "a fine-grained score is not a number from 0 to 10"
    return scores, None


def _is_object(value) -> bool:
    """Whether a decoded JSON value was an object (decoded as a list of (key, value) pairs)."""
    return isinstance(value, list) and all(isinstance(pair, tuple) for pair in value)


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (number := _OUT_OF_TEN.fullmatch(value)):  # "10", "10/10"
        return float(number.group(1))
    return None


def overall_score_rule(rows: list[dict]) -> dict:
    """TRACE's evaluation code's rule, beside the paper's: the share of responses whose overall score is 10
    (of those with one), and in how many of them it disagrees with "every constraint scored 10"."""
    overall = [row for row in rows if row.get("judge_overall_score") is not None]
    followed = [row["judge_overall_score"] == FULL_SCORE for row in overall]
    every_met = [all(check["strict"] == MET for check in row["checks"]) for row in overall]
    decided = [all(check["strict"] != UNJUDGED for check in row["checks"]) for row in overall]
    disagree = sum(rule != met for rule, met, known in zip(followed, every_met, decided) if known)
    return {**accuracy(followed), "responses_without_overall_score": len(rows) - len(overall),
            "disagreements_with_every_constraint_met": disagree}
