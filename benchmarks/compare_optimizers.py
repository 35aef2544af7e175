"""Do the one-GPU optimizers train as well as AdamW? The IOPO demo with each, on the embedded model.

The demo's training (examples/demo.yaml: SmolLM2-135M-Instruct, 40 steps of 4 records) with each
optimizer setting, and the held-out loss and group accuracy (the share of records whose matched pairs
outscore the crossed ones, DESIGN.md) on examples/data/valid.jsonl, records of the training topics that
are not trained on, before and after. Every setting trains with max_grad_norm 0, which the step inside the
backward needs, so that they differ in the optimizer alone:

- `adamw`: PyTorch's AdamW, fp32 weights: the baseline; also at a second seed (another data order), for
  the size of a difference that an incidental change makes;
- `adamw-8bit`: torchao's AdamW8bit, fp32 weights;
- `8bit-in-backward-bf16`: bf16 weights with fp32 masters, stepped inside the backward;
- `8bit-in-backward-pure-bf16`: bf16 weights without masters, stochastic rounding.

Each finished setting is kept in its folder of the work directory (comparison.json): a comparison that is
stopped and started again goes on from the first unfinished one. Written to --output: optimizers-cpu.md and
.json. The times are those of a machine that may be loaded: the quality figures are the result.

    python benchmarks/compare_optimizers.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from _results import RESULTS_DIR, cpu_name, versions, write_results

from iopo_fast.config import load_config
from iopo_fast.training.loop import train
from iopo_fast.utils import write_atomically

REPOSITORY = Path(__file__).resolve().parents[1]
SETTINGS = {
    "adamw": {},
    "adamw-seed43": {"seed": 43},
    "adamw-8bit": {"optim": "adamw_torch_8bit"},
    "8bit-in-backward-bf16": {"optim": "adamw_torch_8bit", "optimizer_in_backward": True, "bf16": True},
    "8bit-in-backward-pure-bf16": {"optim": "adamw_torch_8bit", "optimizer_in_backward": True, "bf16": True,
                                   "pure_bf16": True},
}
METRICS = ("loss", "accuracies/group")


def run(name: str, overrides: dict, work: Path, log) -> dict:
    """The held-out metrics before and after training with `overrides`, and the wall time."""
    output_dir = work / name
    done = output_dir / "comparison.json"
    if done.is_file():
        return json.loads(done.read_text())
    settings = {"eval_dataset": str(REPOSITORY / "examples/data/valid.jsonl"), "eval_benchmarks": "null",
                "max_grad_norm": 0.0, "output_dir": str(output_dir), "resume": "never", **overrides}
    config = load_config(REPOSITORY / "examples/demo.yaml", [f"{key}={value}" for key, value in settings.items()])
    started = time.perf_counter()
    results = train(config)
    outcome = {"settings": overrides, "seconds": time.perf_counter() - started,
               **{when: {metric: results[when][metric] for metric in METRICS} for when in ("before", "after")}}
    write_atomically(done, json.dumps(outcome, indent=2) + "\n")  # a kill never leaves half of it
    log(f"{name}: after {outcome['after']}")
    return outcome


def report_lines(outcomes: dict[str, dict], command: str) -> list[str]:
    baseline = outcomes["adamw"]["after"]
    lines = ["# The one-GPU optimizers on the IOPO demo", "",
             f"Command: `{command}`", f"Device: {cpu_name()} (CPU; the machine may have been loaded: the times are "
             "not comparable)", f"Versions: {versions()}", "",
             "Held-out: examples/data/valid.jsonl (40 records). Before training, every setting starts from the same "
             f"weights: loss {outcomes['adamw']['before']['loss']:.4f}, group accuracy "
             f"{100 * outcomes['adamw']['before']['accuracies/group']:.1f}%.", "",
             "| setting | held-out loss | - adamw | group accuracy, % | - adamw, points | minutes |",
             "|---|---|---|---|---|---|"]
    for name, outcome in outcomes.items():
        after = outcome["after"]
        lines.append(f"| {name} | {after['loss']:.4f} | {after['loss'] - baseline['loss']:+.4f} | "
                     f"{100 * after['accuracies/group']:.1f} | "
                     f"{100 * (after['accuracies/group'] - baseline['accuracies/group']):+.1f} | "
                     f"{outcome['seconds'] / 60:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/compare-optimizers"))
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    outcomes = {name: run(name, overrides, args.work_dir, log) for name, overrides in SETTINGS.items()}
    command = "python " + " ".join(shlex.quote(part) for part in ["benchmarks/compare_optimizers.py", *(argv or sys.argv[1:])])
    lines = report_lines(outcomes, command)
    print("\n".join(lines))
    write_results(args.output, "optimizers-cpu", lines, {"command": command, "device": cpu_name(),
                                                          "versions": versions(), "settings": outcomes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
