"""Does IOPO beat DPO and SFT at following constraints? The IOPO paper's comparison, on the embedded model.

From SmolLM2-135M-Instruct on the bundled train set (examples/data/train.jsonl), with the same steps,
learning-rate schedule and seeds:

- `sft`: the responses that follow their own instruction, (x1, y1) and (x2, y2) (`loss: sft`);
- `dpo`: the two pairs of each record, (x1: y1 over y2) and (x2: y2 over y1) (`loss: dpo`);
- `iopo`: the quadruples (`loss: iopo`);
- `dpo-tokens`: DPO given as many training tokens as IOPO (twice the pairs per step: a DPO step on 2k
  pairs carries the sequences of an IOPO step on k records), the paper's control.

The learning rate and beta come from a small sweep on DPO alone (seed 0; held-out pair accuracy, then
held-out loss, on examples/data/valid.jsonl: records of the train topics that are not in train, and no
evaluated prompt), and are then used for every method, so that no method is tuned alone. Only the
sweep's runs compute a held-out loss: the study's runs are judged by their responses. The base model
and every trained model are evaluated with `iopo-fast eval` (greedy, each benchmark at its own
max_new_tokens) on `demo` (in-domain: the 80 held-out instructions, on which no trivial answer meets
a whole prompt) and `ifeval` (out-of-domain: its first prompts, 64 of 541 by default, one batch of rows), and
`ifbench` if asked.

Each finished run (training and evaluation) is recorded in its folder of the work directory
(`outcome.json`, with the settings it ran under): a study that is stopped and started again with the
same settings goes on from the first unfinished run.

Written to --output: methods-<device>.md, .json and .png: per method and benchmark, the mean over
seeds of the strict prompt- and instruction-level accuracies, the share of responses cut at the token
limit and their mean length in words, what the trivial answers score on the same prompts, the tokens
trained and the wall time. Every interval, of a method, of the base model, or of a difference between
two, is one kind: a 95% bootstrap that draws seeds with replacement and then, within each drawn seed,
prompts with replacement; two methods (or a method and the base model) are compared on the same draws,
so the difference is paired by seed and prompt. Run it alone: the wall times are only comparable within
one run on an unloaded machine.

    python benchmarks/compare_methods.py                       # the full study: hours on 2 CPU cores
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

import numpy as np
from _results import RESULTS_DIR, device_slug, versions

from iopo_fast.utils import write_atomically
from iopo_fast.config import TrainConfig
from iopo_fast.evaluation.report import LEVELS, prompt_scores
from iopo_fast.evaluation.run import evaluate_model
from iopo_fast.evaluation.trivial_answers import FAMILY_DESCRIPTION, TRIVIAL_ANSWERS
from iopo_fast.generation.generators import TransformersGenerator
from iopo_fast.generation.settings import DTYPES, GenerationSettings
from iopo_fast.model.loading import DEFAULT_MODEL
from iopo_fast.training.loop import train

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
METHODS = ("sft", "dpo", "iopo", "dpo-tokens")
RESAMPLES = 2000


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
        settings["evaluation"] = {"prompts": prompt_limits(args), "max_new_tokens": args.max_new_tokens,
                                  "eval_batch_size": args.eval_batch_size, "dtype": args.dtype}
    return json.loads(json.dumps(settings))


def prompt_limits(args) -> dict[str, int | None]:
    """The first prompts of each benchmark evaluated (None: all)."""
    return {benchmark: getattr(args, f"{benchmark}_prompts") or None for benchmark in args.benchmarks}


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
    """{benchmark: {"summary": strict summary, "scores": per-prompt `prompt_scores`}} of `model`, greedy, each
    benchmark with its own prompt limit and max_new_tokens (unless one is given)."""
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size,
                                  dtype=args.dtype)
    results = {}
    for benchmark, limit in prompt_limits(args).items():
        result = evaluate_model(model, [benchmark], work / "eval" / name, settings, limit=limit,
                                make_generator=TransformersGenerator, log=lambda _: None)
        summary = result[benchmark]["strict"]
        # evaluate_model writes the evaluated prompts' rows first, in the benchmark's order.
        lines = (work / "eval" / name / benchmark / "responses.jsonl").read_text(encoding="utf-8").splitlines()
        scored = [json.loads(line) for line in lines[:summary["prompts"]]]
        results[benchmark] = {"summary": summary, "scores": prompt_scores(scored, "strict")}
    return results


def resampled_levels(scores: list[list[tuple]], seed_draws: np.ndarray, prompt_draws: np.ndarray) -> dict:
    """Each level's point value (the mean over seeds) and its values on the bootstrap draws, for the runs of one
    method on one benchmark: `scores[seed][prompt]` as `prompt_scores` gives them. `seed_draws` [resamples,
    seeds] and `prompt_draws` [resamples, seeds, prompts] are shared by every method, which pairs them; a
    single run (the base model) stands for every drawn seed."""
    met, decided, every = (np.array([[score[field] for score in run] for run in scores], dtype=float)
                           for field in range(3))
    # An undecided prompt's None is nan here, and left out of the prompt level.
    seeds = seed_draws[:, :, None] if len(scores) > 1 else 0
    drawn = {"instruction_level": (met[seeds, prompt_draws].sum(-1) / decided[seeds, prompt_draws].sum(-1)),
             "prompt_level": np.nanmean(every[seeds, prompt_draws], axis=-1)}
    point = {"instruction_level": (met.sum(-1) / decided.sum(-1)).mean(), "prompt_level": np.nanmean(every, -1).mean()}
    return {level: {"point": float(point[level]), "draws": drawn[level].mean(-1)} for level in LEVELS}


def interval(point: float, draws: np.ndarray) -> dict:
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return {"mean": point, "low": float(low), "high": float(high)}


def aggregate(runs: list[dict], base: dict, benchmarks: list[str], seed: int = 0) -> tuple[dict, dict]:
    """(table, differences). Table: per method (and the base model) and benchmark, each level's mean over seeds
    with its bootstrap interval, the share of responses cut at the limit, their mean words, and per method the
    tokens trained and the wall time. Differences: for each pair of `PAIRS`, the paired difference on the
    same draws."""
    rng = np.random.default_rng(seed)
    seeds = sorted({run["seed"] for run in runs})
    by_method = {"base": [base]} | {method: [next(run for run in runs if run["method"] == method and run["seed"] == s)
                                             ["benchmarks"] for s in seeds] for method in METHODS}
    table = {method: {} for method in by_method}
    differences = {f"{first} - {second}": {} for first, second in PAIRS}
    for benchmark in benchmarks:
        prompts = len(base[benchmark]["scores"])
        seed_draws = rng.integers(0, len(seeds), size=(RESAMPLES, len(seeds)))
        prompt_draws = rng.integers(0, prompts, size=(RESAMPLES, len(seeds), prompts))
        levels = {method: resampled_levels([run[benchmark]["scores"] for run in method_runs], seed_draws, prompt_draws)
                  for method, method_runs in by_method.items()}
        for method, method_runs in by_method.items():
            summaries = [run[benchmark]["summary"] for run in method_runs]
            table[method][benchmark] = {
                **{level: interval(levels[method][level]["point"], levels[method][level]["draws"]) for level in LEVELS},
                "cut": statistics.fmean(summary["responses_cut_at_limit"] / summary["prompts"] for summary in summaries),
                "words": statistics.fmean(summary["response_words"]["mean"] for summary in summaries)}
        for first, second in PAIRS:
            differences[f"{first} - {second}"][benchmark] = {level: interval(
                levels[first][level]["point"] - levels[second][level]["point"],
                levels[first][level]["draws"] - levels[second][level]["draws"]) for level in LEVELS}
    for method in METHODS:
        mine = [run for run in runs if run["method"] == method]
        table[method]["tokens_trained"] = statistics.fmean(run["tokens_trained"] for run in mine)
        table[method]["seconds"] = statistics.fmean(run["seconds"] for run in mine)
    return table, differences


def trivial_floors(work: Path, benchmarks: list[str]) -> dict:
    """What each named trivial answer, and the best of the trivial family, score (strict) on the evaluated prompts of
    each benchmark: the base model's summaries hold them."""
    summaries = {benchmark: json.loads((work / "eval" / "base" / benchmark / "summary.json").read_text())
                 for benchmark in benchmarks}
    named = {answer: {benchmark: {level: summaries[benchmark]["trivial_floors"][answer]["strict"][level]["accuracy"]
                                  for level in LEVELS} for benchmark in benchmarks} for answer in TRIVIAL_ANSWERS}
    family = {benchmark: {level: summaries[benchmark]["trivial_family_floor"]["strict"][level]["accuracy"]
                          for level in LEVELS} for benchmark in benchmarks}
    return {**named, "the family's highest": family}


PAIRS = (("iopo", "dpo"), ("iopo", "dpo-tokens"), ("iopo", "sft"), ("dpo", "sft"), ("sft", "base"), ("dpo", "base"),
         ("iopo", "base"), ("dpo-tokens", "base"))


def markdown(report: dict) -> str:
    def cell(value: dict) -> str:
        return f"{100 * value['mean']:.1f} [{100 * value['low']:.1f}, {100 * value['high']:.1f}]"

    table, settings, benchmarks = report["table"], report["settings"], settings_benchmarks(report)
    columns = " | ".join(f"{benchmark} {level.replace('_', '-')}" for benchmark in benchmarks for level in LEVELS)
    rule = "|---" * (1 + 2 * len(benchmarks))
    limits = ", ".join(f"{benchmark} on {limit or 'all'} prompts" for benchmark, limit in settings["prompts"].items())
    lines = [
        "# SFT, DPO and IOPO on the embedded SmolLM2-135M-Instruct: instruction following",
        "",
        f"Device: {report['device']}. Versions: {report['versions']}.",
        f"Command: `{report['command']}`",
        "",
        f"Seeds {settings['seeds']}, {settings['steps']} steps of {settings['batch_size']} examples (dpo-tokens: "
        f"{2 * settings['batch_size']}), cosine schedule, learning rate {report['chosen']['learning_rate']} and beta "
        f"{report['chosen']['beta']} from the DPO sweep below (on examples/data/valid.jsonl, no evaluated prompt). "
        f"Greedy evaluation in {settings.get('dtype', 'bfloat16')}, {settings['max_new_tokens'] or 'each benchmark its own'} "
        f"new tokens at most, {settings['eval_batch_size']} rows decoding at once, {limits}. "
        "Strict accuracies in %, mean over seeds, with a 95% bootstrap interval that draws seeds, then prompts within "
        "each drawn seed (the base model, one run, draws prompts the same way).",
        "",
        f"| method | {columns} | tokens trained | wall time |",
        rule + "|---|---|",
    ]
    for method, row in table.items():
        trained = f"{row['tokens_trained']:,.0f}" if method != "base" else "-"
        seconds = f"{row['seconds']:.0f} s" if method != "base" else "-"
        cells = [cell(row[benchmark][level]) for benchmark in benchmarks for level in LEVELS]
        lines.append(f"| {method} | {' | '.join(cells)} | {trained} | {seconds} |")
    for answer, row in report["trivial_floors"].items():
        cells = [f"{100 * row[benchmark][level]:.1f}" for benchmark in benchmarks for level in LEVELS]
        lines.append(f"| trivial answer: {answer} | {' | '.join(cells)} | - | - |")
    lines += ["", "Trivial answers: the empty answer, \".\", the prompt echoed back, one fixed generic paragraph, on the "
              "same prompts; the family's highest: level by level, the best of every answer that ignores the task "
              f"({FAMILY_DESCRIPTION}: `iopo_fast.evaluation.trivial_answers`). Wall time: each training run's own "
              "(the study's runs compute no held-out loss; the sweep's do). A study that is stopped resumes from its "
              "finished runs, so its runs may come from several sessions of the same machine.",
              "", "Responses cut at the token limit, and their mean length in words (mean over seeds):", "",
              "| method | " + " | ".join(f"{benchmark} cut | {benchmark} words" for benchmark in benchmarks) + " |",
              "|---" * (1 + 2 * len(benchmarks)) + "|"]
    for method, row in table.items():
        cells = [f"{100 * row[benchmark]['cut']:.1f}% | {row[benchmark]['words']:.0f}" for benchmark in benchmarks]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    lines += ["", "Differences, paired by seed and prompt (points of strict accuracy, 95% bootstrap interval):",
              "", f"| difference | {columns} |", rule + "|"]
    for pair, row in report["differences"].items():
        lines.append(f"| {pair} | {' | '.join(cell(row[benchmark][level]) for benchmark in benchmarks for level in LEVELS)} |")
    lines += ["", "DPO sweep (seed 0, held-out pair accuracy and loss on examples/data/valid.jsonl):", "",
              "| learning rate | beta | accuracy | loss |", "|---|---|---|---|"]
    lines += [f"| {row['learning_rate']} | {row['beta']} | {row['held_out_accuracy']:.3f} | {row['held_out_loss']:.4f} |"
              for row in report["sweep"]]
    return "\n".join(lines) + "\n"


def settings_benchmarks(report: dict) -> list[str]:
    return list(report["settings"]["prompts"])


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, benchmarks = report["table"], settings_benchmarks(report)
    figure, axes = plt.subplots(1, len(benchmarks), figsize=(5.5 * len(benchmarks), 4), sharey=True, squeeze=False)
    for axis, benchmark in zip(axes[0], benchmarks):
        for offset, level in zip((-0.2, 0.2), LEVELS):
            values = [table[method][benchmark][level] for method in table]
            means = [100 * value["mean"] for value in values]
            errors = [[100 * (value["mean"] - value["low"]) for value in values],
                      [100 * (value["high"] - value["mean"]) for value in values]]
            axis.bar([i + offset for i in range(len(values))], means, width=0.4, yerr=errors, capsize=3,
                     label=level.replace("_", " "))
        axis.set_xticks(range(len(table)), list(table))
        axis.set(title=benchmark, ylabel="strict accuracy (%)")
    axes[0][0].legend()
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
    parser.add_argument("--benchmarks", nargs="+", choices=("demo", "ifeval", "ifbench"), default=["demo", "ifeval"])
    # Generation at 1280 new tokens dominates the study's time on CPU: a part of the out-of-domain prompts.
    parser.add_argument("--demo-prompts", type=int, default=0, help="first N demo prompts (0: all 80)")
    parser.add_argument("--ifeval-prompts", type=int, default=64, help="first N IFEval prompts (0: all 541)")
    parser.add_argument("--ifbench-prompts", type=int, default=32, help="first N IFBench prompts (0: all 294)")
    parser.add_argument("--max-new-tokens", type=int, help="for every benchmark (default: each benchmark's own)")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="rows decoding at once")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="of the generation: float32, as `iopo-fast eval` by default, whose responses do not depend "
                             "on the rows decoded together (on CPU); bfloat16's do")
    parser.add_argument("--held-out-records", type=int, help="first N records of examples/data/valid.jsonl for the "
                        "held-out loss and accuracy, and the sweep's choice (default: all 40)")
    parser.add_argument("--device-name", default="cpu", help="names the results files")
    parser.add_argument("--work-dir", type=Path, help="runs and responses (default: outputs/compare-methods)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep-models", action="store_true", help="keep every trained model in the work directory")
    parser.add_argument("--smoke", action="store_true", help="one seed, two steps, five prompts per benchmark")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.steps, args.sweep_learning_rates, args.sweep_betas = [0], 2, [1e-5], [0.1]
        args.demo_prompts = args.ifeval_prompts = args.ifbench_prompts = 5
        args.max_new_tokens, args.batch_size, args.held_out_records = 16, 2, 4
    work = args.work_dir or Path("outputs") / ("compare-methods-smoke" if args.smoke else "compare-methods")
    args.held_out = DATA / "valid.jsonl"
    if args.held_out_records:  # the first records only: the held-out loss is computed twice per run
        args.held_out = work / "held-out.jsonl"
        work.mkdir(parents=True, exist_ok=True)
        lines = (DATA / "valid.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
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
                + ", ".join(f"{b} {100 * outcome['benchmarks'][b]['summary']['prompt_level']['accuracy']:.1f}%"
                            for b in args.benchmarks))
    table, differences = aggregate(runs, base, args.benchmarks)
    report = {
        "device": f"{args.device_name} ({platform.processor() or platform.machine()})", "versions": versions(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": vars(args) | {"work_dir": str(work), "output": str(args.output), "prompts": prompt_limits(args)},
        "chosen": {"learning_rate": learning_rate, "beta": beta}, "sweep": sweep_rows, "base": base, "runs": runs,
        "table": table, "differences": differences, "trivial_floors": trivial_floors(work, args.benchmarks),
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
