"""What answers that ignore the task score on the prompts of each benchmark: the floor under its scores.

For demo, ifeval and ifbench (all their prompts, or the first --limit), strict and loose prompt- and
instruction-level accuracy of the four named trivial answers (empty, ".", the prompt echoed back, one
generic paragraph) and the highest of the whole family (`iopo_fast.evaluation.trivial_answers.TRIVIAL_FAMILY`),
with the member that reaches it: what `iopo-fast eval` writes beside every score (`trivial_floors`,
`trivial_family_floor`).

    python benchmarks/trivial_floors.py [--benchmarks demo ifeval ifbench] [--limit N] [--stem trivial-floors]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from _results import RESULTS_DIR, cpu_name, versions

from iopo_fast.evaluation.benchmarks import load_benchmark
from iopo_fast.evaluation.checks import MODES
from iopo_fast.evaluation.report import LEVELS
from iopo_fast.evaluation.run import trivial_floors
from iopo_fast.evaluation.trivial_answers import FAMILY_DESCRIPTION, TRIVIAL_ANSWERS


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", nargs="+", default=["demo", "ifeval", "ifbench"],
                        help="benchmarks checked by program (a judge is not asked about trivial answers)")
    parser.add_argument("--limit", type=int, help="only the first N prompts of each benchmark")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--stem", default="trivial-floors", help="the results files' name, without .md and .json")
    args = parser.parse_args(argv)
    results = {}
    for benchmark in args.benchmarks:
        items = load_benchmark(benchmark)[:args.limit]
        start = time.perf_counter()
        named, family = trivial_floors(items)
        results[benchmark] = {"prompts": len(items), "seconds": time.perf_counter() - start, "named": {answer: {mode: {
            level: by_mode[mode][level]["accuracy"] for level in LEVELS} for mode in MODES}
            for answer, by_mode in named.items()}, "family": family}

    lines = ["# The floor: what answers that ignore the task score", "",
             f"Versions: {versions()}.", f"Command: `{shlex.join(['python', *sys.argv])}`", "",
             f"{f'The first {args.limit} prompts' if args.limit else 'Every prompt'} of each benchmark; accuracy in %, "
             "prompt-level / instruction-level. The family: "
             f"{next(iter(results.values()))['family']['members']} answers ({FAMILY_DESCRIPTION}); its highest is "
             "taken level by level, and the member that reaches it is named.", ""]
    for mode in MODES:
        lines += [f"{mode.capitalize()}:", "",
                  "| benchmark | " + " | ".join(TRIVIAL_ANSWERS) + " | the family's highest |",
                  "|---" * (len(TRIVIAL_ANSWERS) + 2) + "|"]
        for benchmark, result in results.items():
            cells = [" / ".join(percent(result["named"][answer][mode][level]) for level in LEVELS)
                     for answer in TRIVIAL_ANSWERS]
            highest = result["family"][mode]
            cells.append(" / ".join(f"{percent(highest[level]['accuracy'])} ({highest[level]['member']})"
                                    for level in LEVELS))
            lines.append(f"| {benchmark} ({result['prompts']}) | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Scoring every member took " + ", ".join(
        f"{result['seconds']:.0f} s on {benchmark}" for benchmark, result in results.items()) + f" ({cpu_name()}).")
    report = "\n".join(lines) + "\n"
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{args.stem}.md").write_text(report)
    (args.output_dir / f"{args.stem}.json").write_text(json.dumps(
        {"versions": versions(), "command": shlex.join(["python", *sys.argv]), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
