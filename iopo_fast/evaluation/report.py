"""What a model follows: accuracies with 95% bootstrap intervals, at the prompt and instruction level, as
IFEval and IFBench name them (their instruction is a constraint here).

- Prompt-level accuracy: the share of prompts whose response meets every constraint.
- Instruction-level accuracy: the share of constraints met, over all prompts.
- Per constraint type: the share met of the constraints with that id.
- The prompt level of prompts with one constraint and of prompts with several (the IOPO paper's IF-S and
  IF-M on TRACE).
- With a taxonomy (`taxonomy.py`): the share met of the constraints of each of its types and dimensions,
  a constraint placed by its checker id or its judged label (TRACE's `levels2`).

A constraint that is `unsupported` (its checker's resource is missing) has no verdict: it is counted,
not scored. A prompt with such a constraint is left out of the prompt level whatever its other
verdicts (keeping it only when another constraint fails would bias the accuracy down), and counted
as undecided.

Intervals resample prompts (constraints of one prompt move together) for the first two, and the
constraints of the type for the third: the 2.5th and 97.5th percentiles of 1000 resamples.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from .checks import ERROR, FAILED, MET, MODES
from .judge import JUDGE_PREFIX
from .taxonomy import Taxonomy

RESAMPLES = 1000
LEVELS = ("prompt_level", "instruction_level")  # the two accuracies of every summary, as IFEval names them
DECIDED = (MET, FAILED, ERROR)  # ERROR counts as not met


def summarize(rows: list[dict], mode: str, seed: int = 0, taxonomy: Taxonomy | None = None) -> dict:
    """The accuracies of scored responses (`rows[i]["checks"][j][mode]` is a verdict) in one mode; by the
    types and dimensions of `taxonomy` too, if it places any of their constraints."""
    rng = np.random.default_rng(seed)
    verdicts = [[check[mode] for check in row["checks"]] for row in rows]
    scores = prompt_scores(rows, mode)
    by_type: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        for check in row["checks"]:
            if check[mode] in DECIDED:
                by_type[check["id"]].append(check[mode] == MET)
    no_verdict = Counter(verdict for row in verdicts for verdict in row if verdict not in DECIDED)
    outcomes = [(len(row), every) for row, (_, _, every) in zip(verdicts, scores) if every is not None]
    summary = {
        "prompt_level": _accuracy([every for _, every in outcomes], rng),
        "instruction_level": _ratio_of_sums([met for met, _, _ in scores], [decided for _, decided, _ in scores], rng),
        "per_constraint": {name: _accuracy(values, rng) for name, values in sorted(by_type.items())},
        # Each with its own draws, so that the intervals above do not depend on whether these are computed.
        "prompt_level_single_constraint": accuracy([every for count, every in outcomes if count == 1], seed),
        "prompt_level_multiple_constraints": accuracy([every for count, every in outcomes if count > 1], seed),
        "prompts": len(rows),
        "undecided_prompts": sum(every is None for _, _, every in scores),
        "constraints": sum(map(len, verdicts)),
        "constraints_without_verdict": dict(sorted(no_verdict.items())),
        "constraints_with_error": sum(verdict == ERROR for row in verdicts for verdict in row),
        "empty_responses": sum(not row["response"].strip() for row in rows),
        # Responses that stopped at max_new_tokens: None when the generator did not say (or no generation).
        "responses_cut_at_limit": (sum(bool(row.get("cut")) for row in rows)
                                   if any(row.get("cut") is not None for row in rows) else None),
        "response_words": _distribution([len(row["response"].split()) for row in rows]),
    }
    by_taxonomy = taxonomy_accuracies(rows, mode, taxonomy, seed) if taxonomy is not None else None
    return {**summary, "taxonomy": by_taxonomy} if by_taxonomy and by_taxonomy["placed"] else summary


def taxonomy_accuracies(rows: list[dict], mode: str, taxonomy: Taxonomy, seed: int = 0) -> dict:
    """The share met of the decided constraints of each type and dimension of `taxonomy`, and how many
    constraints it placed and did not place."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    by_dimension: dict[str, list[bool]] = defaultdict(list)
    placed = unplaced = 0
    for row in rows:
        for check in row["checks"]:
            dimension = taxonomy.classify(check["id"].removeprefix(JUDGE_PREFIX))
            placed, unplaced = placed + (dimension is not None), unplaced + (dimension is None)
            if dimension is not None and check[mode] in DECIDED:
                by_type[dimension.type].append(check[mode] == MET)
                by_dimension[dimension.name].append(check[mode] == MET)
    order = {dimension.name: index for index, dimension in enumerate(taxonomy.dimensions)}
    return {"name": taxonomy.name, "placed": placed, "unplaced": unplaced,
            "types": {name: accuracy(by_type[name], seed) for name in taxonomy.types if name in by_type},
            "dimensions": {name: accuracy(by_dimension[name], seed) for name in sorted(by_dimension, key=order.get)}}


def prompt_scores(rows: list[dict], mode: str) -> list[tuple[int, int, bool | None]]:
    """Per response: the constraints met, the constraints decided (an error is decided, not met), and whether
    every constraint is met (None when one has no verdict): what the prompt and instruction levels add up."""
    verdicts = [[check[mode] for check in row["checks"]] for row in rows]
    return [(sum(verdict == MET for verdict in row), sum(verdict in DECIDED for verdict in row), _prompt_outcome(row))
            for row in verdicts]


def _prompt_outcome(verdicts: list[str]) -> bool | None:
    """Whether every constraint is met; None when one has no verdict."""
    if not all(verdict in DECIDED for verdict in verdicts):
        return None
    return all(verdict == MET for verdict in verdicts)


def _distribution(values: list[int]) -> dict:
    """Mean and quartiles of `values` (None without any)."""
    if not values:
        return {"mean": None, "quartiles": None}
    return {"mean": float(np.mean(values)), "quartiles": [float(q) for q in np.percentile(values, [25, 50, 75])]}


def accuracy(values: list[bool], seed: int = 0) -> dict:
    """The share of true `values`, with its 95% bootstrap interval."""
    return _accuracy(values, np.random.default_rng(seed))


def _accuracy(values: list[bool], rng: np.random.Generator) -> dict:
    return _ratio_of_sums([int(value) for value in values], [1] * len(values), rng)


def _ratio_of_sums(hits: list[int], totals: list[int], rng: np.random.Generator) -> dict:
    """sum(hits) / sum(totals), with a percentile bootstrap interval over the units (resampled with replacement)."""
    hits_array, totals_array = np.asarray(hits, dtype=float), np.asarray(totals, dtype=float)
    if totals_array.sum() == 0:
        return {"accuracy": None, "low": None, "high": None, "count": 0}
    draws = rng.integers(0, len(hits_array), size=(RESAMPLES, len(hits_array)))
    resampled_totals = totals_array[draws].sum(axis=1)
    ratios = hits_array[draws].sum(axis=1) / np.where(resampled_totals > 0, resampled_totals, np.nan)
    low, high = np.nanpercentile(ratios, [2.5, 97.5])
    return {"accuracy": float(hits_array.sum() / totals_array.sum()), "low": float(low), "high": float(high),
            "count": int(totals_array.sum())}


def format_table(summaries: dict[str, dict[str, dict]]) -> str:
    """A printable table: one row per (model or stage, benchmark, mode), prompt- and instruction-level."""
    lines = [f"{'':<28} {'prompt-level':>26} {'instruction-level':>26}  no verdict  checker errors  cut at limit"]
    for label, by_mode in summaries.items():
        for mode, summary in by_mode.items():
            missing = sum(summary["constraints_without_verdict"].values())
            # Absent from summaries written before they were counted.
            errors, cut = summary.get("constraints_with_error", 0), summary.get("responses_cut_at_limit")
            cut = "-" if cut is None else f"{cut}/{summary['prompts']}"
            lines.append(f"{label + ' ' + mode:<28} {_cell(summary['prompt_level']):>26} "
                         f"{_cell(summary['instruction_level']):>26}  {missing:>10}  {errors:>14}  {cut:>12}")
    return "\n".join(lines)


def _cell(accuracy: dict) -> str:
    if accuracy["accuracy"] is None:
        return "n/a (0)"
    return (f"{100 * accuracy['accuracy']:.1f} [{100 * accuracy['low']:.1f}, {100 * accuracy['high']:.1f}] "
            f"n={accuracy['count']}")


def format_family_floor(floor: dict) -> str:
    """One line: the family's highest accuracies, in %, and the members that reach them."""
    def cell(level: dict) -> str:
        return "n/a" if level["accuracy"] is None else f"{100 * level['accuracy']:.1f} ({level['member']})"

    levels = (f"{mode} prompt-level {cell(floor[mode]['prompt_level'])}, "
              f"instruction-level {cell(floor[mode]['instruction_level'])}" for mode in MODES)
    return f"floor, the highest of {floor['members']} trivial answers: " + "; ".join(levels)
