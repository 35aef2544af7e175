"""Does IOPO beat DPO and SFT at following constraints? The IOPO paper's comparison, on the embedded model.

From SmolLM2-135M-Instruct on the bundled train set (examples/data/train.jsonl), with the same steps,
learning-rate schedule and seeds:

- `sft`: the responses that follow their own instruction, (x1, y1) and (x2, y2) (`loss: sft`);
- `dpo`: the two pairs of each record, (x1: y1 over y2) and (x2: y2 over y1) (`loss: dpo`);
- `iopo`: the quadruples (`loss: iopo`);
- `dpo-tokens`: DPO given as many training tokens as IOPO (twice the pairs per step: a DPO step on 2k
  pairs carries the sequences of an IOPO step on k records), the paper's control.

The learning rate and beta come from a small sweep on DPO alone (seed 0; held-out pair accuracy, then
held-out loss, on examples/data/eval.jsonl), and are then used for every method, so that no method is
tuned alone. Only the sweep's runs compute a held-out loss: the study's runs are judged by their
responses. The base model and every trained model are evaluated with `iopo-fast eval` (greedy) on
`demo` (in-domain: the first 48 of the 80 held-out instructions by default) and `ifbench` (out-of-domain:
the first 32 of its 294 prompts).

Each finished run (training and evaluation) is recorded in its folder of the work directory
(`outcome.json`, with the settings it ran under): a study that is stopped and started again with the
same settings goes on from the first unfinished run.

Written to --output: methods-<device>.md, .json and .png: per method and benchmark, the mean over
seeds of the strict prompt- and instruction-level accuracies with a 95% t-interval over the seeds
(the base model: its bootstrap interval over prompts), the tokens trained and the wall time. Run it
alone: the wall times are only comparable within one run on an unloaded machine.

    python benchmarks/compare_methods.py                       # the full study, about two hours on 2 CPU cores
    python benchmarks/compare_methods.py --smoke --output DIR  # one seed, two steps, five prompts per benchmark
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _results import RESULTS_DIR, device_slug, versions

from iopo_fast.utils import write_atomically
from iopo_fast.config import TrainConfig
from iopo_fast.endpoints.generation import GenerationSettings, TransformersGenerator
from iopo_fast.evaluation.run import evaluate_model
from iopo_fast.model.loading import DEFAULT_MODEL
from iopo_fast.training.loop import train

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
METHODS = ("sft", "dpo", "iopo", "dpo-tokens")
BENCHMARKS = ("demo", "ifbench")
LEVELS = ("prompt_level", "instruction_level")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def training_config(method: str, seed: int, learning_rate: float, beta: float, args, output_dir: Path,
                    held_out: Path | None = None) -> TrainConfig:
    """The run of `method`: demo.yaml's schedule, everything but the loss (and dpo-tokens' batch) shared; the
    held-out loss and accuracy before and after training on `held_out`, if given."""
    batch = args.batch_size * (2 if method == "dpo-tokens" else 1)
    return TrainConfig(
        model_name_or_path=args.model, dataset=str(DATA / "train.jsonl"),
        eval_dataset=str(held_out) if held_out is not None else None,
        output_dir=str(output_dir), loss=method.removesuffix("-tokens"), pref_beta=beta, learning_rate=learning_rate,
        lr_scheduler_type="cosine", warmup_ratio=0.1, max_steps=args.steps, per_device_train_batch_size=batch,
        cutoff_len=512, seed=seed, logging_steps=1, resume="never", save_steps=0,
    )


def finished(config: TrainConfig, settings: dict, run: Callable[[], dict]) -> dict:
    """`run()`'s outcome, recorded in the run's folder; read back instead of run again when it was recorded
    under the same settings (training and evaluation)."""
    record = Path(config.output_dir) / "outcome.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved["settings"] == settings:
            return saved["outcome"]
    outcome = run()
    write_atomically(record, json.dumps({"settings": settings, "outcome": outcome}, indent=2) + "\n")
    return outcome


def run_settings(config: TrainConfig, args=None) -> dict:
    """What decides a run's outcome: its training config, and the evaluation settings (`args`) of a run that
    is evaluated (the sweep's runs are not)."""
    settings = {"training": dataclasses.asdict(config)}
    if args is not None:
        settings["evaluation"] = {key: getattr(args, key) for key in ("demo_prompts", "ifbench_prompts",
                                                                      "max_new_tokens", "eval_batch_size")}
    return json.loads(json.dumps(settings))


def run_training(config: TrainConfig) -> dict:
    """Train from scratch; the held-out metrics after training, the tokens trained and the wall time."""
    shutil.rmtree(config.output_dir, ignore_errors=True)  # what an unfinished earlier run of it left
    start = time.perf_counter()
    results = train(config)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    return {"held_out": results.get("after", {}), "tokens_trained": sum(record["tokens"] for record in records),
            "steps": len(records), "seconds": seconds}


def sweep(args, work: Path, log) -> tuple[float, float, list[dict]]:
    """(learning rate, beta) of the best DPO run on seed 0: held-out pair accuracy, then loss."""
    rows = []
    for learning_rate in args.sweep_learning_rates:
        for beta in args.sweep_betas:
            config = training_config("dpo", 0, learning_rate, beta, args, work / f"sweep-lr{learning_rate}-beta{beta}",
                                     held_out=args.held_out)

            def sweep_run(config=config):
                outcome = run_training(config)
                shutil.rmtree(Path(config.output_dir) / "model")  # only the held-out metrics are kept
                return outcome

            outcome = finished(config, run_settings(config), sweep_run)
            rows.append({"learning_rate": learning_rate, "beta": beta, "held_out_accuracy":
                         outcome["held_out"]["accuracies/pair"], "held_out_loss": outcome["held_out"]["loss"]})
            log(f"sweep: {rows[-1]}")
    best = max(rows, key=lambda row: (row["held_out_accuracy"], -row["held_out_loss"]))
    return best["learning_rate"], best["beta"], rows


def evaluate(model: str, name: str, args, work: Path) -> dict:
    """{benchmark: strict summary} of `model`, greedy, each benchmark with its own prompt limit."""
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size)
    limits = {"demo": args.demo_prompts, "ifbench": args.ifbench_prompts}
    summaries = {}
    for benchmark in BENCHMARKS:
        result = evaluate_model(model, [benchmark], work / "eval" / name, settings, limit=limits[benchmark],
                                make_generator=TransformersGenerator, log=lambda _: None)
        summaries[benchmark] = result[benchmark]["strict"]
    return summaries


def mean_interval(values: list[float]) -> dict:
    """Mean over seeds and its 95% t-interval (none for a single seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None, "n": len(values)}
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}


def aggregate(runs: list[dict], base: dict) -> dict:
    """Per method (and the base model) and benchmark: accuracies over seeds, tokens trained, wall time."""
    table = {"base": {benchmark: {level: {"mean": base[benchmark][level]["accuracy"], "low": base[benchmark][level]["low"],
                                          "high": base[benchmark][level]["high"], "n": 1} for level in LEVELS}
                      for benchmark in BENCHMARKS}}
    for method in METHODS:
        mine = [run for run in runs if run["method"] == method]
        table[method] = {benchmark: {level: mean_interval([run["benchmarks"][benchmark][level]["accuracy"]
                                                            for run in mine]) for level in LEVELS}
                         for benchmark in BENCHMARKS}
        table[method]["tokens_trained"] = statistics.fmean(run["tokens_trained"] for run in mine)
        table[method]["seconds"] = statistics.fmean(run["seconds"] for run in mine)
    return table


PAIRS = (("iopo", "dpo"), ("iopo", "dpo-tokens"), ("iopo", "sft"), ("dpo", "sft"))


def paired_differences(runs: list[dict]) -> dict:
    """For each pair of methods in `PAIRS`, benchmark and level: the difference of accuracies between runs of the
    same seed, with its 95% t-interval over seeds (the seed fixes the data order and the initial state)."""
    by_key = {(run["method"], run["seed"]): run["benchmarks"] for run in runs}
    seeds = sorted({run["seed"] for run in runs})
    return {f"{first} - {second}": {benchmark: {level: mean_interval(
        [by_key[first, seed][benchmark][level]["accuracy"] - by_key[second, seed][benchmark][level]["accuracy"]
         for seed in seeds]) for level in LEVELS} for benchmark in BENCHMARKS} for first, second in PAIRS}


def markdown(report: dict) -> str:
    def cell(value: dict) -> str:
        if value["low"] is None:
            return f"{100 * value['mean']:.1f}"
        return f"{100 * value['mean']:.1f} [{100 * value['low']:.1f}, {100 * value['high']:.1f}]"

    table, settings = report["table"], report["settings"]
    columns = " | ".join(f"{benchmark} {level.replace('_', '-')}" for benchmark in BENCHMARKS for level in LEVELS)
    lines = [
        "# SFT, DPO and IOPO on the embedded SmolLM2-135M-Instruct: instruction following",
        "",
        f"Device: {report['device']}. Versions: {report['versions']}.",
        f"Command: `{report['command']}`",
        "",
        f"Seeds {settings['seeds']}, {settings['steps']} steps of {settings['batch_size']} examples (dpo-tokens: "
        f"{2 * settings['batch_size']}), cosine schedule, learning rate {report['chosen']['learning_rate']} and beta "
        f"{report['chosen']['beta']} from the DPO sweep below. Greedy evaluation, {settings['max_new_tokens']} new "
        f"tokens at most, demo on {settings['demo_prompts'] or 'all'} prompts and ifbench on "
        f"{settings['ifbench_prompts'] or 'all'}. Strict accuracies in %, mean over seeds with a 95% t-interval "
        "over seeds (the base model: its bootstrap interval over prompts).",
        "",
        f"| method | {columns} | tokens trained | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, row in table.items():
        trained = f"{row['tokens_trained']:,.0f}" if method != "base" else "-"
        seconds = f"{row['seconds']:.0f} s" if method != "base" else "-"
        cells = [cell(row[benchmark][level]) for benchmark in BENCHMARKS for level in LEVELS]
        lines.append(f"| {method} | {' | '.join(cells)} | {trained} | {seconds} |")
    lines += ["", "Wall time: each training run's own (the study's runs compute no held-out loss; the sweep's do). A study "
              "that is stopped resumes from its finished runs, so its runs may come from several sessions of the same "
              "machine.",
              "", "Differences between methods, paired by seed (points of strict accuracy, 95% t-interval over seeds):",
              "", f"| difference | {columns} |",
              "|---|---|---|---|---|"]
    for pair, row in paired_differences(report["runs"]).items():
        lines.append(f"| {pair} | {' | '.join(cell(row[benchmark][level]) for benchmark in BENCHMARKS for level in LEVELS)} |")
    lines += ["", "DPO sweep (seed 0, held-out pair accuracy and loss):", "",
              "| learning rate | beta | accuracy | loss |", "|---|---|---|---|"]
    lines += [f"| {row['learning_rate']} | {row['beta']} | {row['held_out_accuracy']:.3f} | {row['held_out_loss']:.4f} |"
              for row in report["sweep"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = report["table"]
    figure, axes = plt.subplots(1, len(BENCHMARKS), figsize=(11, 4), sharey=True)
    for axis, benchmark in zip(axes, BENCHMARKS):
        for offset, level in zip((-0.2, 0.2), LEVELS):
            values = [table[method][benchmark][level] for method in table]
            means = [100 * value["mean"] for value in values]
            errors = [[100 * (value["mean"] - value["low"]) if value["low"] is not None else 0 for value in values],
                      [100 * (value["high"] - value["mean"]) if value["high"] is not None else 0 for value in values]]
            axis.bar([i + offset for i in range(len(values))], means, width=0.4, yerr=errors, capsize=3,
                     label=level.replace("_", " "))
        axis.set_xticks(range(len(table)), list(table))
        axis.set(title=benchmark, ylabel="strict accuracy (%)")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4, help="examples per step (dpo-tokens: twice)")
    parser.add_argument("--sweep-learning-rates", type=float, nargs="+", default=[1e-5, 3e-5])
    parser.add_argument("--sweep-betas", type=float, nargs="+", default=[0.1, 0.3])
    # Evaluation dominates the study's time on CPU: these defaults keep it near two hours on 2 cores.
    parser.add_argument("--demo-prompts", type=int, default=48, help="first N demo prompts (all: 80)")
    parser.add_argument("--ifbench-prompts", type=int, default=32, help="first N IFBench prompts (all: 294)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--held-out-records", type=int, help="first N records of examples/data/eval.jsonl for the "
                        "held-out loss and accuracy, and the sweep's choice (default: all 40)")
    parser.add_argument("--device-name", default="cpu", help="names the results files")
    parser.add_argument("--work-dir", type=Path, help="runs and responses (default: outputs/compare-methods)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep-models", action="store_true", help="keep every trained model in the work directory")
    parser.add_argument("--smoke", action="store_true", help="one seed, two steps, five prompts per benchmark")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.steps, args.sweep_learning_rates, args.sweep_betas = [0], 2, [1e-5], [0.1]
        args.demo_prompts = args.ifbench_prompts = 5
        args.max_new_tokens, args.batch_size, args.held_out_records = 16, 2, 4
    work = args.work_dir or Path("outputs") / ("compare-methods-smoke" if args.smoke else "compare-methods")
    args.held_out = DATA / "eval.jsonl"
    if args.held_out_records:  # the first records only: the held-out loss is computed twice per run
        args.held_out = work / "held-out.jsonl"
        work.mkdir(parents=True, exist_ok=True)
        lines = (DATA / "eval.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        args.held_out.write_text("".join(lines[:args.held_out_records]), encoding="utf-8")

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    learning_rate, beta, sweep_rows = sweep(args, work, log)
    log(f"chosen on DPO: learning rate {learning_rate}, beta {beta}")
    base = evaluate(args.model, "base", args, work)
    runs = []
    for seed in args.seeds:
        for method in METHODS:
            config = training_config(method, seed, learning_rate, beta, args, work / f"{method}-seed{seed}")

            def study_run(config=config, method=method, seed=seed):
                # Responses left by an unfinished earlier run are another model's: this one is trained anew.
                shutil.rmtree(work / "eval" / f"{method}-seed{seed}", ignore_errors=True)
                outcome = run_training(config)
                model = Path(config.output_dir) / "model"
                outcome.update(method=method, seed=seed,
                               benchmarks=evaluate(str(model), f"{method}-seed{seed}", args, work))
                if not args.keep_models:
                    shutil.rmtree(model)  # 0.5 GB each; the responses stay in the work directory
                return outcome

            outcome = finished(config, run_settings(config, args), study_run)
            runs.append(outcome)
            log(f"{method} seed {seed}: {outcome['tokens_trained']} tokens in {outcome['seconds']:.0f} s, "
                + ", ".join(f"{b} {100 * outcome['benchmarks'][b]['prompt_level']['accuracy']:.1f}%"
                            for b in BENCHMARKS))
    report = {
        "device": f"{args.device_name} ({platform.processor() or platform.machine()})", "versions": versions(),
        "command": shlex.join([sys.executable, *sys.argv]), "settings": vars(args) | {"work_dir": str(work),
                                                                                       "output": str(args.output)},
        "chosen": {"learning_rate": learning_rate, "beta": beta}, "sweep": sweep_rows, "base": base, "runs": runs,
        "table": aggregate(runs, base),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / f"methods-{device_slug(args.device_name)}{'-smoke' if args.smoke else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
