"""Whether `iopo-fast eval`'s greedy responses depend on the batch: the same model on the same IFEval prompts
at several batch sizes (rows decoding at once), in bf16 and in fp32.

For each dtype and batch size: the wall time, the responses cut at --max-new-tokens, how many responses
differ from the same dtype's at batch size 1 (each prompt decoded alone), and IFEval's prompt- and
instruction-level accuracies (strict and loose), with how far each moves across the batch sizes. Greedy
decoding picks the largest logit; when two are nearly tied, a difference in the last bits (a matrix
product summed in another order because the batch has another number of rows or other padding) picks
another token, and the response parts from there. Run it alone: the times mean nothing on a loaded
machine (the responses do not depend on the load).

    python benchmarks/bench_batch_invariance.py [--prompts 64] [--max-new-tokens 128] [--batch-sizes 1 8 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import torch
from _results import RESULTS_DIR, cpu_name, versions

from iopo_fast.evaluation.benchmarks import load_benchmark
from iopo_fast.evaluation.checks import MODES
from iopo_fast.evaluation.report import LEVELS, summarize
from iopo_fast.evaluation.run import score
from iopo_fast.generation.generators import TransformersGenerator
from iopo_fast.generation.settings import DTYPES, GenerationSettings
from iopo_fast.model.loading import DEFAULT_MODEL


def measure(model: str, items: list, dtype: str, batch_size: int, max_new_tokens: int) -> dict:
    """The responses of one batch size and dtype, their accuracies and the time they took."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=dtype)
    generator = TransformersGenerator(model, settings, device=torch.device("cpu"))
    start = time.perf_counter()
    responses = generator([item.prompt for item in items])
    seconds = time.perf_counter() - start
    logging.disable(logging.ERROR)  # IFEval's language check logs texts it cannot read
    try:
        rows = [score(item, response) for item, response in zip(items, responses)]
    finally:
        logging.disable(logging.NOTSET)
    return {"seconds": seconds, "cut": sum(response.cut for response in responses), "responses": list(responses),
            "accuracy": {mode: {level: 100 * summarize(rows, mode)[level]["accuracy"] for level in LEVELS}
                         for mode in MODES}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=64, help="IFEval's first prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    items = load_benchmark("ifeval")[:args.prompts]
    runs = {dtype: {size: measure(args.model, items, dtype, size, args.max_new_tokens) for size in args.batch_sizes}
            for dtype in args.dtypes}
    alone = args.batch_sizes[0]
    for by_size in runs.values():
        for run in by_size.values():
            run["changed"] = sum(a != b for a, b in zip(run["responses"], by_size[alone]["responses"]))
    spread = {dtype: {mode: {level: max(run["accuracy"][mode][level] for run in by_size.values())
                             - min(run["accuracy"][mode][level] for run in by_size.values()) for level in LEVELS}
                      for mode in MODES} for dtype, by_size in runs.items()}
    across_dtypes = (sum(a != b for a, b in zip(*(runs[dtype][alone]["responses"] for dtype in args.dtypes)))
                     if len(args.dtypes) == 2 else None)

    lines = [f"# Batch invariance of greedy decoding: {len(items)} IFEval prompts, up to {args.max_new_tokens} "
             f"new tokens", "",
             f"Device: {cpu_name()}, {torch.get_num_threads()} threads. Versions: {versions()}.",
             f"Command: `{shlex.join(['python', *sys.argv])}`", "",
             f"Changed: responses that differ from the same dtype's at batch size {alone}. Accuracies in %, "
             f"IFEval's prompt and instruction levels.", "",
             "| dtype | batch size | seconds | cut at limit | changed | strict prompt | strict instruction "
             "| loose prompt | loose instruction |", "|---|---|---|---|---|---|---|---|---|"]
    for dtype, by_size in runs.items():
        for size, run in by_size.items():
            accuracy = run["accuracy"]
            lines.append(f"| {dtype} | {size} | {run['seconds']:.1f} | {run['cut']} | {run['changed']} | "
                         + " | ".join(f"{accuracy[mode][level]:.1f}" for mode in MODES for level in LEVELS) + " |")
    lines += ["", "Spread (highest minus lowest over the batch sizes), in points:", "",
              "| dtype | strict prompt | strict instruction | loose prompt | loose instruction |",
              "|---|---|---|---|---|"]
    lines += [f"| {dtype} | " + " | ".join(f"{by_mode[mode][level]:.1f}" for mode in MODES for level in LEVELS) + " |"
              for dtype, by_mode in spread.items()]
    if across_dtypes is not None:
        lines += ["", f"At batch size {alone}, {across_dtypes} of {len(items)} responses differ between "
                      f"{args.dtypes[0]} and {args.dtypes[1]}."]
    report = "\n".join(lines) + "\n"
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "batch-invariance-cpu.md").write_text(report)
    (args.output_dir / "batch-invariance-cpu.json").write_text(json.dumps(
        {"device": cpu_name(), "threads": torch.get_num_threads(), "versions": versions(),
         "command": shlex.join(["python", *sys.argv]), "settings": {**vars(args), "output_dir": str(args.output_dir)},
         "runs": {dtype: {str(size): run for size, run in by_size.items()} for dtype, by_size in runs.items()},
         "spread": spread, "changed_across_dtypes": across_dtypes}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
