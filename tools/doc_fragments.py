"""The published numbers, each formatted from the results file that holds it: `tools/render_docs.py` writes
them into the README and docs/.

A fragment is a function of the span's arguments (words, often none) returning Markdown: a table (a block)
or a phrase (inline). It reads `benchmarks/results/<name>.json` through `results(name)`, and formats with the
helpers below, so that every page writes a percentage, an interval or a duration the same way.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the package, and the benchmark scripts' own helpers

from iopo_fast.evaluation.report import LEVELS  # noqa: E402

TRIVIAL_NAMES = {"empty": "empty", "dot": '`"."`', "echo": "prompt echoed", "generic": "generic paragraph"}
FRAGMENTS: dict[str, Callable[[], str]] = {}


def fragment(name: str):
    """Register a fragment under the name the pages' markers use."""
    def register(function: Callable[[], str]) -> Callable[[], str]:
        FRAGMENTS[name] = function
        return function
    return register


@functools.cache
def results(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def pct(fraction: float, sign: bool = False) -> str:
    """A fraction as a percentage with one decimal: 0.3 -> "30.0" (with `sign`, "+30.0")."""
    return f"{100 * fraction:+.1f}" if sign else f"{100 * fraction:.1f}"


def interval(value: dict, key: str = "accuracy", sign: bool = False) -> str:
    """A value with its 95% interval: "30.0 [20.0, 40.0]"."""
    return f"{pct(value[key], sign)} [{pct(value['low'], sign)}, {pct(value['high'], sign)}]"


def duration(seconds: float) -> str:
    """Seconds as a reader says them: "45 s", "17 min 8 s", "2 h 14 min"."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {round(seconds % 3600 / 60)} min"


def span(values: list[float], form: str = "{:.0f}") -> str:
    """The range of `values` as "low-high", or one value when they agree at this precision."""
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low}-{high}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# The map of the documentation: the README's and the home page's, in mkdocs.yml's order.

PAGES = {
    "getting-started.md": ("Getting started", "installing on CPU and GPU, the command line, what a run writes"),
    "training.md": ("Training", "steps and batches, DeepSpeed, the reference, LoRA, checkpoints and resume, monitoring"),
    "configuration.md": ("Configuration", "every config key, its default and meaning"),
    "data.md": ("Data formats", "sources, record forms, chat templates, truncation, bad records, the cache, the demo data"),
    "evaluation.md": ("Evaluation", "`iopo-fast eval`: benchmarks, verdicts, batch-invariant decoding, the floor of "
                                    "trivial answers"),
    "judge.md": ("The LLM judge", "constraints in words, judged by an LLM with TRACE's protocol (IF-S, IF-M, TRACE's 5 types and 26 dimensions) or one question per constraint"),
    "study.md": ("The study", "SFT, DPO and IOPO from the embedded model, evaluated in and out of domain"),
    "building-data.md": ("Building data", "`iopo-fast build-instructions` and `build-pairs`: TRACE-style instructions, responses and an evaluation split from plain prompts, then IOPO quadruples"),
    "models.md": ("Models and fast paths", "supported families, attention backends, log-prob kernels"),
    "performance.md": ("Performance", "the hardware each path needs, host memory, GPU readiness, the 7-8B trace, "
                                      "the CPU path"),
    "benchmarks.md": ("Benchmarks", "one script per question, and how to reproduce each result"),
    "python-api.md": ("Python API", "packing, the preference model, the losses, the kernels, the loop"),
    "layout.md": ("Layout", "where each concern lives, for contributors; how these pages are rendered"),
}


def documentation_map(folder: str) -> str:
    return table(["page", "what it answers"], [[f"[{title}]({folder}{page})", description]
                                              for page, (title, description) in PAGES.items()])


FRAGMENTS["docs.map-from-readme"] = lambda: documentation_map("docs/")
FRAGMENTS["docs.map"] = lambda: documentation_map("")


# Every results file, and the command that wrote it.

@fragment("results.index")
def results_index() -> str:
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        run = results(path.stem)
        # A command run through a virtual environment's interpreter reads as the plain `python ...` it is.
        command = re.sub(r"^\S*/python3?\b", "python", run.get("command") or "the command in its .md")
        device = run.get("device") or run.get("compiled_on") or "-"
        rows.append([f"`{path.stem}`", f"`{command}`" if "command" in run else command, device])
    return table(["results (.md, .json)", "command", "device"], rows)


# The options, from TrainConfig.

@fragment("options.table")
def options_table() -> str:
    from iopo_fast.config import options_markdown
    return options_markdown()


# The quick start (benchmarks/report_demo_run.py).

@fragment("quickstart.timing")
def quickstart_timing() -> str:
    run = results("demo-quickstart-cpu")
    return (f"{duration(run['total_seconds'])} in all: the installation ({duration(run['install_seconds'])}), the "
            f"model's conversion, {run['training_steps']} training steps ({duration(run['step_seconds'])})")


@fragment("quickstart.table")
def quickstart_table() -> str:
    run = results("demo-quickstart-cpu")
    before, after, change = run["strict"]["before"], run["strict"]["after"], run["change"]
    return table(["demo, 80 held-out prompts", "prompt-level", "instruction-level", "cut at 256 tokens"], [
        ["before training", interval(before["prompt_level"]), interval(before["instruction_level"]),
         f"{before['responses_cut_at_limit']} of {before['prompts']}"],
        ["after the IOPO demo", interval(after["prompt_level"]), interval(after["instruction_level"]),
         f"{after['responses_cut_at_limit']} of {after['prompts']}"],
        ["after - before, paired by prompt", interval(change["prompt_level"], "change", sign=True),
         interval(change["instruction_level"], "change", sign=True), ""],
    ])


@fragment("quickstart.reading")
def quickstart_reading() -> str:
    run = results("demo-quickstart-cpu")
    before, after, change = run["strict"]["before"], run["strict"]["after"], run["change"]
    family = floors_of("demo")["family"]["strict"]["instruction_level"]
    return (f"{pct(after['prompt_level']['accuracy'])}% of the held-out prompts ({change['prompts_gained']} prompts "
            f"gained, {change['prompts_lost']} lost), where no answer that ignores the task meets any, and "
            f"{pct(after['instruction_level']['accuracy'])}% of their constraints, where the best such answer meets "
            f"{pct(family['accuracy'])}%. Its responses are as long as before "
            f"({before['response_words']['mean']:.0f} words on average before, "
            f"{after['response_words']['mean']:.0f} after)")


# Trivial answers (benchmarks/trivial_floors.py).

def floors_of(benchmark: str) -> dict:
    return results("trivial-floors")["results"][benchmark]


def family_cell(benchmark: str, level: str) -> str:
    best = floors_of(benchmark)["family"]["strict"][level]
    return f"{pct(best['accuracy'])} ({best['member']})" if best["accuracy"] else pct(best["accuracy"])


@fragment("floors.table")
def floors_table() -> str:
    rows = []
    for benchmark in ("demo", "ifeval", "ifbench"):
        floors = floors_of(benchmark)
        named = [" / ".join(pct(floors["named"][answer]["strict"][level]) for level in LEVELS)
                 for answer in TRIVIAL_NAMES]
        family = " / ".join(family_cell(benchmark, level) for level in LEVELS)
        rows.append([f"{benchmark} ({floors['prompts']} prompts)", *named, family])
    return table(["benchmark", *TRIVIAL_NAMES.values(), "the family's highest"], rows)


@fragment("floors.members")
def floors_members() -> str:
    return str(floors_of("demo")["family"]["members"])


@fragment("floors.ifeval")
def floors_ifeval() -> str:
    return " / ".join(pct(floors_of("ifeval")["family"]["strict"][level]["accuracy"]) for level in LEVELS)


@fragment("floors.ifbench")
def floors_ifbench() -> str:
    return f"{pct(floors_of('ifbench')['family']['strict']['prompt_level']['accuracy'])}%"


def floors_of_file(stem: str) -> dict:
    """The floors of a trivial-floors results file that holds one benchmark."""
    (floors,) = results(stem)["results"].values()
    return floors


@fragment("floors.demo-before-family")
def floors_demo_before_family() -> str:
    return " / ".join(floors_family("trivial-floors-demo-94f5546", level) for level in LEVELS)


# Generation (benchmarks/bench_generation.py, bench_batch_invariance.py).

@fragment("generation.rows")
def generation_rows() -> str:
    run = results("generation-cpu")
    rows, generate = run["results"]["rows"], run["results"]["generate"]
    settings = run["settings"]
    return (f"on {settings['prompts']} IFEval prompts at up to {settings['max_new_tokens']} new tokens, "
            f"{settings['rows']} rows, {settings['dtype']}: {rows['seconds']:.1f} s against {generate['seconds']:.1f} s "
            f"for `generate` on sorted batches of {settings['rows']} ({generate['seconds'] / rows['seconds']:.2f}x; "
            f"{rows['tokens_per_second']:.0f} against {generate['tokens_per_second']:.0f} new tokens/s)")


@fragment("invariance.summary")
def invariance_summary() -> str:
    run = results("batch-invariance-cpu")
    sizes = [str(size) for size in run["settings"]["batch_sizes"]]
    bf16, fp32 = run["runs"]["bfloat16"], run["runs"]["float32"]
    changed = " and ".join(str(bf16[size]["changed"]) for size in sizes[1:])
    fp32_same = all(fp32[size]["changed"] == 0 for size in sizes)
    return (f"in bf16, {changed} of the {run['settings']['prompts']} responses differ from those decoded alone, and "
            f"the strict prompt-level accuracy moves by {run['spread']['bfloat16']['strict']['prompt_level']:.1f} "
            f"points; in fp32 {'every response is the same at every batch size' if fp32_same else 'responses change too'}"
            f", and so is every score")


@fragment("invariance.cost")
def invariance_cost() -> str:
    run = results("batch-invariance-cpu")
    largest = str(run["settings"]["batch_sizes"][-1])
    return (f"{run['runs']['float32'][largest]['seconds']:.0f} s against "
            f"{run['runs']['bfloat16'][largest]['seconds']:.0f} s at {largest} rows")


# IFEval beside the model card (iopo-fast eval's summary.json).

MODEL_CARD_IFEVAL = 29.9  # SmolLM2-135M-Instruct's model card: "IFEval (Average prompt/inst)", strict

@fragment("ifeval.table")
def ifeval_table() -> str:
    summary = results("ifeval-smollm2-cpu")["summary"]
    rows = []
    for mode in ("strict", "loose"):
        levels = [summary[mode][level] for level in LEVELS]
        average = pct(sum(level["accuracy"] for level in levels) / 2)
        rows.append([mode, *(interval(level) for level in levels), average,
                     f"{MODEL_CARD_IFEVAL}" if mode == "strict" else ""])
    return table([f"IFEval, {summary['strict']['prompts']} prompts", "prompt-level", "instruction-level", "average",
                  "model card"], rows)


@fragment("ifeval.gap")
def ifeval_gap() -> str:
    strict = results("ifeval-smollm2-cpu")["summary"]["strict"]
    average = sum(strict[level]["accuracy"] for level in LEVELS) / 2
    return f"{MODEL_CARD_IFEVAL - 100 * average:.1f} points between the strict average and the card's"


@fragment("ifeval.cut")
def ifeval_cut() -> str:
    strict = results("ifeval-smollm2-cpu")["summary"]["strict"]
    return f"{strict['responses_cut_at_limit']} of {strict['prompts']}"


# The study (benchmarks/compare_methods.py).

def study_cell(row: dict, benchmark: str, level: str) -> str:
    value = row[benchmark][level]
    return f"{pct(value['mean'])} [{pct(value['low'])}, {pct(value['high'])}]"


@fragment("study.table")
def study_table() -> str:
    study = results("methods-cpu")
    benchmarks = study["settings"]["benchmarks"]
    header = ["method", *(f"{b}, {level.replace('_', '-')}" for b in benchmarks for level in LEVELS),
              *(f"{b} cut" for b in benchmarks), "tokens trained"]
    rows = [[method, *(study_cell(row, b, level) for b in benchmarks for level in LEVELS),
             *(f"{100 * row[b]['cut']:.1f}%" for b in benchmarks),
             f"{row['tokens_trained']:,.0f}" if method != "base" else "-"] for method, row in study["table"].items()]
    for answer, row in study["trivial_floors"].items():
        name = TRIVIAL_NAMES.get(answer, answer)
        rows.append([f"trivial: {name}", *(pct(row[b][level]) for b in benchmarks for level in LEVELS),
                     *([""] * len(benchmarks)), ""])
    return table(header, rows)


@fragment("study.differences")
def study_differences() -> str:
    study = results("methods-cpu")
    benchmarks = study["settings"]["benchmarks"]
    header = ["difference", *(f"{b}, {level.replace('_', '-')}" for b in benchmarks for level in LEVELS)]
    rows = [[pair, *(interval(values[b][level], "mean", sign=True) for b in benchmarks for level in LEVELS)]
            for pair, values in study["differences"].items()]
    return table(header, rows)


@fragment("study.value")
def study_value(method: str, benchmark: str, level: str) -> str:
    return study_cell(results("methods-cpu")["table"][method], benchmark, level)


@fragment("study.mean")
def study_mean(method: str, benchmark: str, level: str) -> str:
    return pct(results("methods-cpu")["table"][method][benchmark][level]["mean"])


@fragment("study.difference")
def study_difference(first: str, second: str, benchmark: str, level: str) -> str:
    return interval(results("methods-cpu")["differences"][f"{first} - {second}"][benchmark][level], "mean", sign=True)


def over_methods(methods: str, benchmark: str, value: Callable[[dict], float]) -> list[float]:
    """`value` of each of the comma-separated `methods` ("sft,dpo") on `benchmark`, from the study's table."""
    table = results("methods-cpu")["table"]
    return [value(table[method][benchmark]) for method in methods.split(",")]


@fragment("study.cut")
def study_cut(methods: str, benchmark: str) -> str:
    """The share of responses cut at the limit: of one method, or the range over several ("sft,dpo")."""
    return span(over_methods(methods, benchmark, lambda row: 100 * row["cut"]), "{:.1f}") + "%"


@fragment("study.words")
def study_words(methods: str, benchmark: str) -> str:
    return span(over_methods(methods, benchmark, lambda row: row["words"]))


@fragment("study.means")
def study_means(methods: str, benchmark: str, level: str) -> str:
    """The range of the methods' means ("dpo,iopo,dpo-tokens"), in %."""
    return span(over_methods(methods, benchmark, lambda row: 100 * row[level]["mean"]), "{:.1f}") + "%"


@fragment("floors.family")
def floors_family(stem: str, level: str) -> str:
    """The family's highest strict score in a trivial-floors results file of one benchmark, in %."""
    return pct(floors_of_file(stem)["family"]["strict"][level]["accuracy"])


@fragment("study.trivial")
def study_trivial(answer: str, benchmark: str, level: str) -> str:
    """What a named trivial answer scored on the study's prompts, as its file holds it, in %."""
    return pct(results("methods-cpu")["trivial_floors"][answer][benchmark][level])


@fragment("floors.named")
def floors_named(stem: str, answer: str, level: str) -> str:
    """A named trivial answer's strict score in a trivial-floors results file of one benchmark, in %."""
    return pct(floors_of_file(stem)["named"][answer]["strict"][level])


@fragment("study.settings")
def study_settings() -> str:
    study = results("methods-cpu")
    settings = study["settings"]
    return (f"learning rate {study['chosen']['learning_rate']:g} and beta {study['chosen']['beta']:g} from the "
            f"sweep; seeds {', '.join(map(str, settings['seeds']))}; {settings['steps']} steps of "
            f"{settings['batch_size']} examples; greedy, in {settings.get('dtype', 'bfloat16')}, "
            f"{settings['eval_batch_size']} rows decoding at once")


# Kernels compiled for CUDA on CPU (benchmarks/kernels_static.py).

@fragment("kernels.table")
def kernels_table() -> str:
    """Per kernel, dtype and target, over its launch configurations: registers, spilled bytes, shared memory,
    and FLOPs per byte its tiles move."""
    groups: dict[tuple, list[dict]] = {}
    for kernel in results("kernels-static")["kernels"]:
        groups.setdefault((kernel["kernel"], kernel["dtype"], kernel["capability"]), []).append(kernel)

    rows = []
    for (name, dtype, capability), kernels in groups.items():
        intensity = [k["flops_per_byte"] for k in kernels if k["flops_per_byte"]]
        rows.append([f"`{name}`", dtype, f"sm_{capability}", span([k["registers"] for k in kernels]),
                     str(sum(k["spill_stores"] + k["spill_loads"] for k in kernels)),
                     span([k["shared_bytes"] / 1024 for k in kernels]), span(intensity) if intensity else "-"])
    return table(["kernel", "dtype", "target", "registers", "spilled bytes", "shared memory, KiB", "FLOP/B"], rows)


# One step of 7-8B models, traced (benchmarks/trace_memory.py).

SHAPE_NAMES = {"llama-3.1-8b": "Llama-3.1-8B", "qwen2-7b": "Qwen2-7B", "smollm2-135m": "SmolLM2-135M",
               "llama-3.2-1b": "Llama-3.2-1B's shape", "qwen2-0.5b": "Qwen2-0.5B"}
TRACE_SYSTEMS = {1: "TRL defaults, bf16", 2: "TRL, precomputed reference", 3: "original IOPO", 4: "iopo-fast IOPO"}


def traced(shape: str, finetuning: str, tokens: int) -> dict[int, dict]:
    rows = results("trace-8b")["results"]
    return {row["system"]: row for row in rows
            if row["shape"] == shape and row["finetuning"] == finetuning and row["useful_tokens"] == tokens}


def trace_memory():
    """benchmarks/trace_memory.py, whose GPU counts and peaks the trace's fragments state as its report does;
    imported when first needed, as it loads torch and DeepSpeed."""
    import trace_memory
    return trace_memory


def one_gpu_peak_gib(row: dict) -> float:
    """Peak on one GPU as trace_memory.py's report gives it: offloaded optimizer (full), all on the GPU (LoRA)."""
    return trace_memory().one_gpu_peak(row) / 2**30


def fewest_gpus(row: dict) -> int | None:
    return trace_memory().smallest_gpu_count(row, offload_optimizer=False)


@fragment("trace.table")
def trace_table() -> str:
    big, small = traced("llama-3.1-8b", "full", 16384), traced("llama-3.1-8b", "full", 4096)
    ours = big[4]

    def ratio(value: float, baseline: float) -> str:
        return f" ({value / baseline:.2f}x)"

    rows = [
        ["activations and temporaries, GiB", *(f"{big[s]['transient_peak_bytes'] / 2**30:.1f}"
                                               + (ratio(big[s]['transient_peak_bytes'], big[1]['transient_peak_bytes'])
                                                  if s == 4 else "") for s in TRACE_SYSTEMS)],
        ["peak on one GPU, optimizer offloaded, GiB", *(f"{one_gpu_peak_gib(big[s]):.1f}"
                                                        + (ratio(one_gpu_peak_gib(ours), one_gpu_peak_gib(big[1]))
                                                           if s == 4 else "") for s in TRACE_SYSTEMS)],
        ["GFLOP per useful token", *(f"{big[s]['flops_per_useful_token'] / 1e9:.1f}"
                                     + (ratio(ours['flops_per_useful_token'], big[1]['flops_per_useful_token'])
                                        if s == 4 else "") for s in TRACE_SYSTEMS)],
        ["80 GB GPUs at 4K useful tokens, ZeRO-3, optimizer on the GPUs",
         *(str(fewest_gpus(small[s])) for s in TRACE_SYSTEMS)],
    ]
    return table(["Llama-3.1-8B, full-parameter, 16K useful tokens", *TRACE_SYSTEMS.values()], rows)


@fragment("trace.tokens")
def trace_tokens() -> str:
    systems = traced("llama-3.1-8b", "full", 4096)
    packed, padded = (systems[s]["model_tokens"] / systems[s]["examples"] for s in (4, 1))
    return f"{packed:,.0f} tokens where a padded layout runs {padded:,.0f}"


@fragment("host.memory")
def host_memory() -> str:
    """The host memory of the optimizer offloaded to it, by parameter: what it holds, and DeepSpeed's estimate."""
    lines = []
    for shape in ("llama-3.1-8b", "qwen2-7b"):
        row = traced(shape, "full", 4096)[4]
        estimate = trace_memory().model_state_bytes(row, 1, offload_optimizer=True)["host_per_node"]
        lines.append([SHAPE_NAMES[shape], f"{row['trainable'] / 1e9:.2f}B", f"{16 * row['trainable'] / 2**30:.0f}",
                      f"{estimate / 2**30:.0f} ({estimate / row['trainable']:.0f} bytes per parameter)"])
    return table(["model", "parameters", "held: 16 bytes per parameter, GiB",
                  "DeepSpeed's estimate for one GPU, GiB"], lines)


@fragment("trace.validation")
def trace_validation() -> str:
    parts = []
    for check in results("trace-8b")["validation"]:
        parts.append(f"{check['traced']['peak_above_start'] / 2**30:.2f} against "
                     f"{check['measured']['peak_above_start'] / 2**30:.2f} GiB for {SHAPE_NAMES[check['shape']]}")
    worst = max(abs(check["memory_error"]) for check in results("trace-8b")["validation"])
    flops = max(abs(check["decoder_traced_flops"] / check["decoder_step_flops"] - 1)
                for check in results("trace-8b")["validation"])
    return (f"{' and '.join(parts)} (within {100 * worst:.2f}%), and the decoder's FLOPs against `step_flops` "
            f"within {100 * flops:.2f}%")


def ratios_to_trl(shapes: tuple[str, ...], system: int, field: str) -> list[float]:
    """`field` of `system` over TRL's defaults (system 1), at every traced setting of `shapes`."""
    rows = [row for row in results("trace-8b")["results"] if row["shape"] in shapes]
    baseline = {(r["shape"], r["finetuning"], r["useful_tokens"]): r[field] for r in rows if r["system"] == 1}
    return [r[field] / baseline[(r["shape"], r["finetuning"], r["useful_tokens"])] for r in rows if r["system"] == system]


@fragment("trace.reading")
def trace_reading() -> str:
    big, small = ("llama-3.1-8b", "qwen2-7b"), ("qwen2-0.5b", "llama-3.2-1b")
    full, lora = traced("llama-3.1-8b", "full", 16384), traced("llama-3.1-8b", "lora", 16384)
    gpus = traced("llama-3.1-8b", "full", 4096)
    peak = {system: one_gpu_peak_gib(row) for system, row in full.items()}
    fewer = fewest_gpus(gpus[1]) - fewest_gpus(gpus[4])
    return (
        f"against TRL's defaults, iopo-fast takes {peak[4] / peak[1]:.2f}x the peak memory on one GPU and "
        f"{'one GPU' if fewer == 1 else f'{fewer} GPUs'} fewer at full-parameter, but most of that is the second model TRL "
        f"keeps as its reference; TRL with a precomputed reference is within {100 * (peak[2] / peak[4] - 1):.0f}% of "
        f"iopo-fast's peak and needs {fewest_gpus(gpus[2])} GPUs. TRL 1.16 already scores only the completion tokens "
        f"without materializing the logits, so the activations differ by "
        f"{span(ratios_to_trl(big, 4, 'transient_peak_bytes'), '{:.2f}')}x (LoRA and full, Llama and Qwen, 4K to "
        f"16K). The work differs more: per example, shared-prefix packing runs {trace_tokens()}: "
        f"{span(ratios_to_trl(big, 4, 'flops_per_useful_token'), '{:.2f}')}x the FLOPs per useful token at 7-8B "
        f"({span(ratios_to_trl(small, 4, 'flops_per_useful_token'), '{:.2f}')}x at 0.5-1B, where attention and the LM "
        f"head weigh more). The original IOPO computation's fp32 logits of every position cost "
        f"{span(ratios_to_trl(big, 3, 'transient_peak_bytes'), '{:.1f}')} times TRL's activations at 7-8B. With LoRA "
        f"every system fits one GPU at 16K tokens (iopo-fast {one_gpu_peak_gib(lora[4]):.1f} GiB, TRL "
        f"{one_gpu_peak_gib(lora[1]):.1f} GiB)")


# Training on CPU (benchmarks/bench_throughput.py).

@fragment("throughput.cpu")
def throughput_cpu() -> str:
    run = results("throughput-cpu")
    by_system = {row["system"]: row for row in run["results"]}
    ours, trl, dpo = by_system[4], by_system[1], by_system[5]
    return (f"iopo-fast IOPO {ours['tokens_per_second']:.0f} useful tokens/s and {ours['peak_host_gib']:.1f} GiB "
            f"peak resident memory, TRL `DPOTrainer` with its defaults {trl['tokens_per_second']:.0f} tokens/s and "
            f"{trl['peak_host_gib']:.1f} GiB ({ours['tokens_per_second'] / trl['tokens_per_second']:.2f}x the "
            f"throughput at {ours['peak_host_gib'] / trl['peak_host_gib']:.2f}x the memory); iopo-fast DPO "
            f"{dpo['tokens_per_second']:.0f} tokens/s. The packing runs {ours['model_tokens_per_step']:.0f} tokens "
            f"per example where the four sequences hold {ours['useful_tokens_per_step']:.0f}")


# Data preparation and build-pairs at scale (benchmarks/bench_data.py, bench_build_pairs.py).

@fragment("data.summary")
def data_summary() -> str:
    run = results("data-cpu")
    rows = {row["key"]: row for row in run["rows"]}
    return (f"{run['records']:,} TRACE-sized synthetic records (SmolLM2's tokenizer) take "
            f"{rows['first']['seconds']:.3g} s the first time ({rows['first']['records_per_second']:,.0f} records/s; "
            f"the one-process loader does {rows['one_process']['records_per_second']:,.0f}) and "
            f"{rows['cached']['seconds']:.2g} s from the cache, with {run['peak_gib']['process']:.2f} GiB peak resident "
            f"memory in the main process; in the same run, the `tokenizers` backend alone takes "
            f"{rows['backend']['seconds']:.0f} s on both cores for the same texts ({run['device']})")


def oracle_runs(run: dict) -> tuple[dict, dict, tuple[dict, dict, dict]]:
    """An oracle benchmark's largest and smallest sizes, and the largest's three runs: the first, the rerun of
    the finished folder, and the run whose outputs were deleted but whose cache was kept."""
    largest = max(run["results"], key=lambda result: result["records"])
    smallest = min(run["results"], key=lambda result: result["records"])
    return largest, smallest, tuple(largest["runs"][name] for name in (
        "first run", "rerun of the finished folder", "outputs deleted, cache kept"))


@fragment("build-instructions.summary")
def build_instructions_summary() -> str:
    run = results("build-instructions-cpu")
    largest, smallest, (first, rerun, cached) = oracle_runs(run)
    return "\n".join([
        f"The oracle waits {run['latency_seconds'] * 1000:.0f} ms per answer. The input is {largest['records']:,} "
        f"plain prompts at concurrency {run['concurrency']}; each record asks five requests (expand, structure, "
        f"review, answer, judge), so no pipeline passes {run['bound_records_per_second']:.0f} records/s:",
        "",
        f"- {first['records_per_second']:.0f} records/s, {first['share_of_bound']:.2f} of the bound: "
        f"{first['kept']['train']:,} training and {first['kept']['eval']:,} evaluation records in "
        f"{duration(first['seconds'])}, {first['requests']:,} requests. Without requests (the cache run below) a "
        f"record takes {1000 / cached['records_per_second']:.1f} ms; the other "
        f"{1000 / first['records_per_second'] - 1000 / cached['records_per_second']:.0f} ms per record go to "
        f"sending requests and reading answers, the client and the oracle sharing the two cores. A real "
        f"generator answers in seconds, not 50 ms: at 2 s per answer the bound would be "
        f"{run['concurrency'] / (2 * 5):.1f} records/s, far below this.",
        f"- Peak resident memory {largest['peak_rss_mib']:.0f} MiB, against {smallest['peak_rss_mib']:.0f} MiB for "
        f"{smallest['records']:,} records.",
        f"- A rerun of the finished folder takes {duration(rerun['seconds'])}. A run whose outputs were deleted but "
        f"whose cache was kept rebuilds all {largest['records']:,} records in {duration(cached['seconds'])} "
        f"({cached['records_per_second']:,.0f} records/s), without a request.",
    ])


@fragment("build-pairs.summary")
def build_pairs_summary() -> str:
    run = results("build-pairs-cpu")
    largest, smallest, (first, rerun, cached) = oracle_runs(run)
    return "\n".join([
        f"The oracle waits {run['endpoint'].split(', ')[-1]}. The input is {largest['records']:,} distinct "
        f"instructions without responses, at concurrency {run['concurrency']} (two generator requests per record):",
        "",
        f"- {first['records_per_second']:.0f} records/s ({first['requests'] / first['seconds']:.0f} requests/s), "
        f"{first['kept']:,} kept, in {first['seconds']:.0f} s.",
        f"- Peak resident memory {largest['peak_rss_mib']:.0f} MiB, against {smallest['peak_rss_mib']:.0f} MiB for "
        f"{smallest['records']:,} records: the index grows, not the text.",
        f"- Almost all of a record's time is spent waiting for the endpoint, which shares the two cores; the "
        f"programs' checks took {first['checks_seconds']:.0f} s in all.",
        f"- A rerun of the finished folder takes {rerun['seconds']:.1f} s. A run whose outputs were deleted but whose "
        f"cache was kept rebuilds all {largest['records']:,} records in {cached['seconds']:.0f} s "
        f"({cached['records_per_second']:,.0f} records/s), without a request.",
    ])
