"""How much work can one 80 GB GPU do with full-parameter training of Llama-3.1-8B, with iopo-fast and with TRL?

With `--optimizer offload` (the default), both run with ZeRO-3 and the optimizer offloaded to host memory,
gradient checkpointing and a precomputed reference, in bf16:
  - system 4 of bench_throughput.py: iopo-fast IOPO with packing, the fused log-prob kernel and
    Liger's layer kernels;
  - system 2 of bench_throughput.py: TRL's DPOTrainer in its fastest configuration, on the two DPO
    pairs that carry each IOPO example's sequences.
The useful tokens per micro-batch (the four unpacked sequences of every example) grow through
--budgets, one micro-batch per step, examples of fixed length (the `trace` medians: prompts 300,
responses 400 tokens), each budget in a fresh process, until one runs out of memory. Columns: step
time, useful tokens per second, peak GPU memory (`torch.cuda.max_memory_allocated`) and peak host
memory (the process's resident set); the largest budget that fit is stated per system (within the
factor between two budgets: refine with --budgets).

Host memory comes first: the offloaded optimizer keeps, for every parameter, its fp32 master
weight, Adam's two fp32 moments and DeepSpeed's fp32 gradient partition, 16 bytes (docs/performance.md,
"Host memory"). The script compares that with the
host's available memory and stops (exit status 2) when it does not fit, unless --force.

The one-GPU optimizers without offload run iopo-fast alone (system 4), without ZeRO (docs/performance.md,
"One GPU without offload"): `--optimizer 8bit-in-backward` (8-bit AdamW states stepped inside the
backward, fp32 master weights: examples/llama3.1-8b-full-1gpu-8bit.yaml) and `--optimizer pure-bf16` (the
same without masters, stochastic rounding: examples/llama3.1-8b-full-1gpu-pure-bf16.yaml). Their results
files are named after the setting.

Without CUDA it refuses in one line with exit status 2. `--smoke` runs the same search on the
`tiny` configuration on CPU instead (where nothing runs out of memory), to exercise the code; its
results are only printed, or written to --output-dir.

    python benchmarks/fit_8b.py [--budgets 8192 16384 ...] [--systems 4 2] [--force] [--output-dir DIR]
    python benchmarks/fit_8b.py --optimizer 8bit-in-backward
    python benchmarks/fit_8b.py --smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import psutil
import torch

from iopo_fast.model.preference_model import ALGORITHMS

MODEL = "llama-3.1-8b"
# Host bytes per parameter under ZeRO-3 optimizer offload: fp32 master weight, Adam's exp_avg and
# exp_avg_sq, and the fp32 gradient partition.
OFFLOAD_BYTES_PER_PARAMETER = 16
FIT_SYSTEMS = (4, 2)
# --optimizer: (ZeRO stage, optimizer offload, iopo-fast's optimizer keys, the header's words)
IN_BACKWARD = {"optim": "adamw_torch_8bit", "optimizer_in_backward": True, "max_grad_norm": 0.0,
               "max_tokens_per_micro_batch": 0}
OPTIMIZERS = {
    "offload": (3, True, {}, "ZeRO-3 with optimizer offload"),
    "8bit-in-backward": (0, False, IN_BACKWARD,
                         "no ZeRO and no offload, 8-bit AdamW states stepped inside the backward, fp32 master weights"),
    "pure-bf16": (0, False, {**IN_BACKWARD, "pure_bf16": True},
                  "no ZeRO and no offload, 8-bit AdamW states stepped inside the backward, pure bf16 weights with "
                  "stochastic rounding"),
}
REFUSAL_EXIT_STATUS = 2


def check_host_memory(model: str, parameters: int, force: bool) -> str:
    """A line about host memory; exits with status 2 when the offloaded optimizer cannot fit and not `force`."""
    needed = parameters * OFFLOAD_BYTES_PER_PARAMETER / 2**30
    available = psutil.virtual_memory().available / 2**30
    line = (f"host memory: {available:.0f} GiB available; ZeRO-3 optimizer offload of {model} needs about "
            f"{needed:.0f} GiB ({OFFLOAD_BYTES_PER_PARAMETER} bytes per parameter)")
    if available < needed and not force:
        print(f"{line}: not enough, stopping (--force runs anyway)")
        sys.exit(REFUSAL_EXIT_STATUS)
    return line


def summary(points: list[dict], systems: dict[int, str]) -> list[str]:
    """Per system: the largest useful tokens per micro-batch that fit, and the first that did not."""
    lines = []
    for system in sorted({p["system"] for p in points}, reverse=True):
        ran = [p for p in points if p["system"] == system]
        fit = [p for p in ran if p["status"] == "ok"]
        failed = next((p for p in ran if p["status"] != "ok"), None)
        largest = f"{fit[-1]['useful_tokens_per_micro_batch']}" if fit else "none of the budgets"
        beyond = f"; {failed['useful_tokens_per_micro_batch']}: {failed['status']}" if failed else ""
        lines.append(f"- system {system} ({systems[system]}): largest that fit: {largest}{beyond}")
    return lines


TABLE_HEADER = [
    "| system | useful tokens per micro-batch | status | s/step | useful tokens/s | peak GPU GiB | peak host GiB |",
    "|---|---|---|---|---|---|---|",
]


def table_rows(points: list[dict], systems: dict[int, str]) -> list[str]:
    rows = []
    for point in points:
        cells = [f"{point['system']}. {systems[point['system']]}", str(point["useful_tokens_per_micro_batch"]),
                 point["status"]]
        if point["status"] == "ok":
            cells += [f"{point['seconds_per_step']:.2f}", f"{point['tokens_per_second']:.0f}",
                      f"{point['peak_memory_gib']:.1f}" if torch.cuda.is_available() else "-",
                      f"{point['peak_host_gib']:.1f}"]
        else:
            cells += ["", "", "", ""]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="without CUDA: the tiny configuration on CPU")
    parser.add_argument("--budgets", type=int, nargs="+", default=None,
                        help="useful tokens per micro-batch (default 8192 to 262144, doubling; smoke: 256 512)")
    parser.add_argument("--systems", type=int, nargs="+", choices=FIT_SYSTEMS, default=None,
                        help="default: 4 and 2 with --optimizer offload, else 4 (iopo-fast alone)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="offload")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per budget, after one warm-up step")
    parser.add_argument("--logprob-algorithm", choices=ALGORITHMS, default="recompute", help="iopo-fast's")
    parser.add_argument("--force", action="store_true", help="run even when host memory looks too small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where to write the results (default on GPU: benchmarks/results; smoke: nowhere)")
    args = parser.parse_args()
    if args.systems is None:
        args.systems = list(FIT_SYSTEMS) if args.optimizer == "offload" else [4]
    elif args.optimizer != "offload" and args.systems != [4]:
        parser.error(f"--optimizer {args.optimizer} is iopo-fast's: --systems 4")
    return args


def main() -> None:
    args = parse_args()
    on_cuda = torch.cuda.is_available()
    if not on_cuda and not args.smoke:
        print("fit_8b.py measures GPU memory and needs CUDA; --smoke runs the tiny configuration on CPU")
        sys.exit(REFUSAL_EXIT_STATUS)
    # Imported once the run goes on: it imports DeepSpeed, which logs its accelerator detection.
    from bench_throughput import (
        RESULTS_DIR, SCENARIOS, SYSTEMS, Job, Scenario, budget_series, device_slug, model_parameters, versions,
    )

    model = MODEL if on_cuda else "tiny"
    budgets = args.budgets or ([8192 * 2**k for k in range(6)] if on_cuda else [256, 512])
    scenario = dataclasses.replace(SCENARIOS["trace"], sigma=0.0) if on_cuda else Scenario(24, 32, 0.0)
    device_name = torch.cuda.get_device_name() if on_cuda else "CPU (smoke run)"
    command = "python " + shlex.join(sys.argv)
    zero_stage, offload, optimizer, described = OPTIMIZERS[args.optimizer]
    header = [
        f"- device: {device_name}",
        f"- versions: {versions()}",
        f"- command: `{command}`",
        *([f"- {check_host_memory(model, model_parameters(model), args.force)}"] if offload else []),
        f"- {model}, full parameters, {'bf16' if on_cuda else 'fp32'}, {described}, gradient "
        f"checkpointing, precomputed reference, log-prob algorithm {args.logprob_algorithm}; prompts {scenario.prompt_tokens} and responses "
        f"{scenario.response_tokens} tokens; one micro-batch per step, median of {args.steps} timed steps",
    ]
    print("\n".join(header), flush=True)
    base = Job(system=0, model=model, scenario=scenario,
               global_batch=1, warmup=1, steps=args.steps, tokens_per_micro_batch=0, trl_pairs_per_micro_batch=None,
               logprob_algorithm=args.logprob_algorithm,
               gradient_checkpointing=True, zero_stage=zero_stage, offload_optimizer=offload, seed=args.seed,
               optimizer={**optimizer, "bf16": True} if optimizer.get("pure_bf16") else optimizer)
    points = [point for system in args.systems
              for point in budget_series(dataclasses.replace(base, system=system), budgets)]
    lines = [*TABLE_HEADER, *table_rows(points, SYSTEMS), "", *summary(points, SYSTEMS)]
    print("\n".join(lines), flush=True)
    output_dir = args.output_dir or (RESULTS_DIR if on_cuda else None)
    if output_dir is not None:
        record = {"device": device_name, "versions": versions(), "command": command, "points": points}
        setting = "" if args.optimizer == "offload" else f"{args.optimizer}-"
        write_results(output_dir / f"fit-8b-{setting}{device_slug(device_name)}", [*header, "", *lines], record)


def write_results(stem: Path, markdown: list[str], record: dict) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    title = "# The most work one GPU does with full-parameter Llama-3.1-8B: iopo-fast and TRL DPOTrainer"
    stem.with_suffix(".md").write_text("\n".join([title, "", *markdown, ""]))
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
