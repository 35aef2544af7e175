"""The benchmark scripts on CPU: bench_logprob.py's and bench_throughput.py's smoke runs print every row,
fit_8b.py refuses in one line or runs its tiny smoke search, trace_memory.py traces every system and
agrees with a real step, and compare_methods.py's smoke trains and evaluates every method. No speed, and
no winner, is asserted; CUDA is hidden from the scripts."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import fresh_process_env, permuted_roles, random_iopo_examples

from iopo_fast import DPO, IOPO, DPOExample, IOPOExample

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=600, env={**fresh_process_env(), "CUDA_VISIBLE_DEVICES": "", **env})


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of every markdown table row printed, header and separator left out."""
    rows = [line.strip().strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:] if not row[0].startswith("-")]


def assert_finite_and_positive(cells: list[str]) -> None:
    for cell in cells:
        value = float(cell.removesuffix("x"))
        assert math.isfinite(value) and value > 0, cells


def test_throughput_smoke_prints_all_five_systems_and_writes_no_results():
    results = BENCHMARKS / "results"
    before = sorted(results.iterdir()) if results.is_dir() else []

    run = run_script("bench_throughput.py")

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rows = table_rows(run.stdout)
    assert [row[2].split(".")[0] for row in rows] == ["1", "2", "3", "4", "5"], run.stdout
    for row in rows:
        assert row[:2] == ["tiny", "short"]
        # tokens/s, s/step, ms/example, peak memory, ratios to systems 1 and 2; MFU is GPU-only.
        assert_finite_and_positive(row[3:9])
        assert row[9] == "-"
    sweep_points = [line for line in run.stdout.splitlines() if "useful tokens per micro-batch:" in line]
    assert len(sweep_points) == 2 and all(line.endswith(": ok") for line in sweep_points), sweep_points
    assert (sorted(results.iterdir()) if results.is_dir() else []) == before


def test_logprob_smoke_measures_every_iopo_fast_method_to_the_same_scores():
    """Under the Triton interpreter, so that the Triton rows run too."""
    run = run_script("bench_logprob.py", TRITON_INTERPRET="1")

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rows = {row[3]: row for row in table_rows(run.stdout)}
    ours = [name for name in rows if name.startswith("iopo-fast")]
    assert sorted(ours) == sorted(f"iopo-fast {algorithm} ({impl})" for algorithm in ("two-pass", "example chunks")
                                  for impl in ("triton", "chunked")), run.stdout
    for name in ours:
        assert_finite_and_positive(rows[name][4:5])
        assert float(rows[name][8]) < 1e-5, rows[name]  # the same fp32 scores from the same bf16 inputs


def test_logprob_benchmark_reads_the_roles_from_its_objective(monkeypatch):
    """Its examples, sequence sums and losses follow OBJECTIVE's roles: with DPO's two every method runs to the
    same scores."""
    sys.path.insert(0, str(BENCHMARKS))
    import bench_logprob

    monkeypatch.setattr(bench_logprob, "OBJECTIVE", DPO)
    cpu = torch.device("cpu")
    assert bench_logprob.random_examples(64, 8, cpu, torch.Generator()).reference_scores.shape[1] == 2
    args = argparse.Namespace(tokens=[64], hidden=32, vocab=[300], sequence_tokens=8, chunk_logits=[None],
                              dtype=torch.float32, peak_tflops=None, warmup=1, repeats=1)
    rows = table_rows("\n".join(bench_logprob.HEADER + bench_logprob.run(args, cpu)))
    measured = [row for row in rows if not row[4].startswith("skipped")]
    assert {"iopo-fast two-pass (chunked)", "iopo-fast example chunks (chunked)", "full logits"} <= {
        row[3] for row in measured}, rows
    for row in measured:
        assert_finite_and_positive(row[4:5])
        assert float(row[8]) < 1e-5, row


def test_throughput_dpo_pairs_take_chosen_and_rejected_from_the_objective(monkeypatch, generator):
    """(x1: y1 over y2) and (x2: y2 over y1), also under a role order that puts each rejected role before its
    chosen one, so that every shared prompt lists its rejected response first."""
    sys.path.insert(0, str(BENCHMARKS))
    from bench_throughput import dpo_pairs

    (example,) = random_iopo_examples(1, 96, generator)
    expected = [DPOExample(prompt=example.prompt1, chosen=example.response1, rejected=example.response2),
                DPOExample(prompt=example.prompt2, chosen=example.response2, rejected=example.response1)]
    assert dpo_pairs([example]) == expected
    monkeypatch.setattr(IOPOExample, "objective", permuted_roles(IOPO, (1, 0, 3, 2)))
    assert example.shared_prompts()[0][1][0] == (example.response2, 0)
    assert dpo_pairs([example]) == expected


def test_throughput_smoke_runs_the_example_chunks_algorithm_into_its_own_results(tmp_path):
    run = run_script("bench_throughput.py", "--systems", "4", "5", "--no-sweep", "--logprob-algorithm",
                     "example_chunks", "--output-dir", str(tmp_path))

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "log-prob algorithm example_chunks" in run.stdout
    rows = table_rows(run.stdout)
    assert [row[2].split(".")[0] for row in rows] == ["4", "5"], run.stdout
    for row in rows:
        assert_finite_and_positive(row[3:7])
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "throughput-example-chunks-cpu-smoke-run.json", "throughput-example-chunks-cpu-smoke-run.md"]


def test_fit_8b_refuses_without_cuda_in_one_line():
    run = run_script("fit_8b.py")

    assert run.returncode == 2
    assert run.stdout.strip().splitlines() == [
        "fit_8b.py measures GPU memory and needs CUDA; --smoke runs the tiny configuration on CPU"]


@pytest.mark.parametrize("optimizer", ["8bit-in-backward", "pure-bf16"])
def test_fit_8b_smoke_runs_the_one_gpu_optimizers_on_iopo_fast_alone(optimizer):
    run = run_script("fit_8b.py", "--smoke", "--budgets", "256", "--optimizer", optimizer)

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert [(row[0].split(".")[0], row[2]) for row in table_rows(run.stdout)] == [("4", "ok")], run.stdout
    assert "stepped inside the backward" in run.stdout and "host memory:" not in run.stdout


def test_fit_8b_smoke_searches_both_systems():
    run = run_script("fit_8b.py", "--smoke", "--budgets", "256")

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rows = table_rows(run.stdout)
    assert [(row[0].split(".")[0], row[2]) for row in rows] == [("4", "ok"), ("2", "ok")], run.stdout
    for row in rows:
        assert_finite_and_positive([row[1], row[3], row[4], row[6]])
    assert "largest that fit: 224" in run.stdout


def test_trace_memory_smoke_traces_every_system_and_meets_a_real_step_of_smollm2_within_ten_percent():
    """Traced on fake tensors against the same step run on real ones, in this process's children."""
    sys.path.insert(0, str(BENCHMARKS))
    from bench_throughput import SYSTEMS

    results = BENCHMARKS / "results"
    before = sorted(results.iterdir())

    run = run_script("trace_memory.py", "--smoke", "--validate", "smollm2-135m:1")

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rows = table_rows(run.stdout)
    (validation,) = [row for row in rows if row[0] == "smollm2-135m"]
    assert 0.9 <= float(validation[4]) <= 1.1, validation  # traced / measured peak above the step's start
    assert abs(float(validation[5]) - 1) < 0.01, validation  # decoder FLOPs traced / step_flops
    systems = [row[1] for row in rows if row[0] == "2,048"]
    assert systems == [f"{n}. {name}" for n, name in SYSTEMS.items()] * 2, run.stdout  # full and LoRA
    for row in rows:
        if row[0] == "2,048":
            assert_finite_and_positive([row[3], row[5], row[8]])  # the ratios to TRL (the GiB round to 0 here)
    assert sorted(results.iterdir()) == before


def test_causal_pairs_count_the_entries_of_each_segments_bottom_right_mask():
    sys.path.insert(0, str(BENCHMARKS))
    from _tracing import causal_pairs

    query_lengths, key_lengths = [5, 3, 1, 7], [5, 8, 4, 7]
    masks = [torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq) for lq, lk in zip(query_lengths, key_lengths)]
    assert causal_pairs(query_lengths, key_lengths) == sum(int(mask.sum()) for mask in masks)


def test_packed_equivalence_check_passes_the_packed_path_and_would_fail_a_wrong_one(monkeypatch, generator):
    sys.path.insert(0, str(BENCHMARKS))
    import check_packed_equivalence as check

    monkeypatch.setattr(check, "SHAPE", dict(check.SHAPE, vocab_size=96, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    examples = check.random_examples(4, 12, 96, generator)
    weights = torch.randn(4, 4, generator=generator)
    for name in check.MODELS:
        rows, passed = check.check_model(name, examples, weights, torch.float32, torch.device("cpu"), seed=0)
        assert passed and [row[-1] for row in rows] == ["baseline", "not run: attention backend 'flash_attn' "
                                                        "cannot run: it needs a CUDA device, got cpu",
                                                        rows[2][-1], "pass"]

    # A packed path that drops the last response token of every sequence must fail.
    real_pack = check.pack_examples
    monkeypatch.setattr(check, "pack_examples", lambda examples: real_pack(
        [type(e)(e.prompt1, e.prompt2, e.response1[:-1] or e.response1, e.response2[:-1] or e.response2)
         for e in examples]))
    rows, passed = check.check_model("llama (GQA, untied)", examples, weights, torch.float32, torch.device("cpu"), 0)
    assert not passed and rows[-1][-1] == "FAIL"


def test_data_benchmark_smoke_prints_every_row(tmp_path):
    run = run_script("bench_data.py", "--records", "300", "--baseline-records", "50", "--workers", "2",
                     "--output-dir", str(tmp_path))

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rows = table_rows(run.stdout)
    assert len(rows) == 6, run.stdout
    for row in rows:
        assert_finite_and_positive(row[1:3])
    assert "300 examples" in run.stdout and (tmp_path / "data-cpu.md").is_file()
    report = json.loads((tmp_path / "data-cpu.json").read_text())  # what the docs render
    assert report["records"] == 300 and [row["key"] for row in report["rows"]] == [
        "one_process", "first", "cached", "read", "backend", "twin"]


def test_build_pairs_benchmark_smoke_writes_the_figures_the_docs_render(tmp_path):
    run = run_script("bench_build_pairs.py", "--records", "40", "--concurrency", "8", "--latency", "0.01",
                     "--output-dir", str(tmp_path))

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    (result,) = json.loads((tmp_path / "build-pairs-cpu.json").read_text())["results"]
    assert result["records"] == 40 and list(result["runs"]) == [
        "first run", "rerun of the finished folder", "outputs deleted, cache kept"]
    first, rerun, _ = result["runs"].values()
    assert first["requests"] == 2 * 40 and rerun["requests"] == 0 and first["kept"] == rerun["kept"] > 0
    assert [row[1] for row in table_rows(run.stdout)[:3]] == list(result["runs"])  # and printed


def test_build_instructions_benchmark_smoke_takes_every_record_through_every_stage(tmp_path):
    run = run_script("bench_build_instructions.py", "--records", "40", "--concurrency", "8", "--latency", "0.01",
                     "--output-dir", str(tmp_path))

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    report = json.loads((tmp_path / "build-instructions-cpu.json").read_text())
    (result,) = report["results"]
    first, rerun, cached = result["runs"].values()
    assert first["dropped"] == 0 and sum(first["kept"].values()) == 40 and first["kept"] == cached["kept"]
    assert 4 * 40 < first["requests"] <= 5 * 40 and rerun["requests"] == cached["requests"] == 0
    assert report["bound_records_per_second"] == 8 / (0.01 * 5) and 0 < first["share_of_bound"] <= 1
    assert rerun["share_of_bound"] is cached["share_of_bound"] is None  # they ask the endpoint nothing


def test_generation_benchmark_times_both_ways_on_the_same_prompts(tmp_path):
    run = run_script("bench_generation.py", "--prompts", "4", "--max-new-tokens", "6", "--rows", "2", "--dtype",
                     "float32", "--output-dir", str(tmp_path))

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rows = table_rows(run.stdout)
    assert [row[0] for row in rows] == ["generate", "rows"]
    for row in rows:
        assert_finite_and_positive(row[1:5])
    results = json.loads((tmp_path / "generation-cpu.json").read_text())["results"]
    assert {name: result["new_tokens"] <= 4 * 6 for name, result in results.items()} == {"generate": True, "rows": True}


def test_trivial_floors_writes_the_family_s_highest_beside_the_named_answers(tmp_path):
    run = run_script("trivial_floors.py", "--benchmarks", "demo", "--output-dir", str(tmp_path))

    assert run.returncode == 0, run.stderr[-3000:]
    demo = json.loads((tmp_path / "trivial-floors.json").read_text())["results"]["demo"]
    assert demo["prompts"] == 80 and set(demo["named"]) == {"empty", "dot", "echo", "generic"}
    assert demo["family"]["strict"]["prompt_level"]["accuracy"] == demo["family"]["loose"]["prompt_level"]["accuracy"] == 0
    # The family holds the named answers, so its highest is at least theirs.
    assert demo["family"]["strict"]["instruction_level"]["accuracy"] >= max(
        answer["strict"]["instruction_level"] for answer in demo["named"].values()) > 0
    assert (tmp_path / "trivial-floors.md").read_text().count("| demo (80) |") == 2


def test_method_comparison_smoke_trains_and_evaluates_every_method(tmp_path):
    run = run_script("compare_methods.py", "--smoke", "--output", str(tmp_path / "results"),
                     "--work-dir", str(tmp_path / "work"))

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    report = json.loads((tmp_path / "results" / "methods-cpu-smoke.json").read_text())
    assert [(r["method"], r["seed"], r["steps"]) for r in report["runs"]] == [
        ("sft", 0, 2), ("dpo", 0, 2), ("iopo", 0, 2), ("dpo-tokens", 0, 2)]
    assert list(report["table"]) == ["base", "sft", "dpo", "iopo", "dpo-tokens"]
    for run_report in report["runs"]:
        assert run_report["tokens_trained"] > 0
        for benchmark in ("demo", "ifeval"):
            assert run_report["benchmarks"][benchmark]["summary"]["prompts"] == 5
            assert len(run_report["benchmarks"][benchmark]["scores"]) == 5
    for row in report["table"].values():  # one kind of interval for every row, the base model's included
        assert all(value["low"] <= value["mean"] <= value["high"] for benchmark in ("demo", "ifeval")
                   for value in (row[benchmark]["prompt_level"], row[benchmark]["instruction_level"]))
    assert report["trivial_floors"]["empty"]["demo"] == {"prompt_level": 0.0, "instruction_level": 0.0}
    assert report["trivial_floors"]["the family's highest"]["demo"]["prompt_level"] == 0.0
    assert "| trivial answer: the family's highest |" in (tmp_path / "results" / "methods-cpu-smoke.md").read_text()
    assert [row[0] for row in table_rows(run.stdout)][:5] == ["base", "sft", "dpo", "iopo", "dpo-tokens"]
    assert (tmp_path / "results" / "methods-cpu-smoke.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "work" / "iopo-seed0" / "model").exists()  # trained models are not kept

    trained = {path: path.stat().st_mtime_ns for path in (tmp_path / "work").glob("*/metrics.jsonl")}
    again = run_script("compare_methods.py", "--smoke", "--output", str(tmp_path / "results"),
                       "--work-dir", str(tmp_path / "work"))
    assert again.returncode == 0, again.stderr[-5000:]
    assert len(trained) == 5 and {path: path.stat().st_mtime_ns for path in trained} == trained  # nothing retrained
    assert json.loads((tmp_path / "results" / "methods-cpu-smoke.json").read_text())["table"] == report["table"]
    assert "| iopo - dpo |" in (tmp_path / "results" / "methods-cpu-smoke.md").read_text()

    # A run killed before it was recorded left its checkpoints and part of its responses: it starts over.
    (tmp_path / "work" / "dpo-seed0" / "outcome.json").unlink()
    (tmp_path / "work" / "dpo-seed0" / "checkpoints" / "step-000001").mkdir(parents=True)
    (tmp_path / "work" / "eval" / "dpo-seed0" / "demo" / "responses.jsonl").write_text('{"key": "stale"}\n')
    third = run_script("compare_methods.py", "--smoke", "--output", str(tmp_path / "results"),
                       "--work-dir", str(tmp_path / "work"))
    assert third.returncode == 0, third.stderr[-5000:]
    retrained = {path for path in trained if path.stat().st_mtime_ns != trained[path]}
    assert retrained == {tmp_path / "work" / "dpo-seed0" / "metrics.jsonl"}


def test_study_intervals_are_paired_by_seed_and_prompt():
    """The draws are shared by every method: a method that meets more on some prompts and less on none is ahead
    on every draw; a single run (the base model) stands for every drawn seed; seeds that disagree widen the
    interval."""
    sys.path.insert(0, str(BENCHMARKS))
    import numpy as np
    from compare_methods import resampled_levels

    rng = np.random.default_rng(0)
    prompts, seeds = 40, 3
    met = rng.integers(0, 2, prompts)
    base = [[(int(hit), 1, bool(hit)) for hit in met]]
    better = [[(1, 1, True) if index < 5 else score for index, score in enumerate(base[0])]]
    seed_draws = rng.integers(0, seeds, size=(500, seeds))
    prompt_draws = rng.integers(0, prompts, size=(500, seeds, prompts))
    alone = resampled_levels(base, seed_draws, prompt_draws)
    ahead = resampled_levels(better * seeds, seed_draws, prompt_draws)
    for level in ("prompt_level", "instruction_level"):
        assert np.array_equal(resampled_levels(base * seeds, seed_draws, prompt_draws)[level]["draws"],
                              alone[level]["draws"])
        gains = ahead[level]["draws"] - alone[level]["draws"]
        assert gains.min() >= 0 and (gains > 0).mean() > 0.9
        assert ahead[level]["point"] - alone[level]["point"] == pytest.approx((1 - met[:5]).sum() / prompts)
    every, none = [[(1, 1, True)] * prompts], [[(0, 1, False)] * prompts]
    two_thirds = [[(1, 1, True) if index % 3 else (0, 1, False) for index in range(prompts)]]
    spread = resampled_levels(every + none + every, seed_draws, prompt_draws)["prompt_level"]["draws"]
    steady = resampled_levels(two_thirds * seeds, seed_draws, prompt_draws)["prompt_level"]["draws"]
    assert spread.std() > 3 * steady.std()


def test_the_quick_start_report_pairs_before_and_after_by_prompt():
    sys.path.insert(0, str(BENCHMARKS))
    from report_demo_run import paired_change

    def rows(*verdicts: tuple[str, ...]) -> list[dict]:
        return [{"checks": [{"strict": verdict} for verdict in prompt]} for prompt in verdicts]

    before = rows(("failed", "met"), ("met",), ("failed",), ("met", "met"))
    after = rows(("met", "met"), ("failed",), ("met",), ("met", "met"))
    change = paired_change(before, after)
    assert (change["prompts_gained"], change["prompts_lost"]) == (2, 1)
    assert change["prompt_level"]["change"] == pytest.approx(3 / 4 - 2 / 4)
    assert change["instruction_level"]["change"] == pytest.approx(5 / 6 - 4 / 6)
    for level in ("prompt_level", "instruction_level"):
        assert change[level]["low"] <= change[level]["change"] <= change[level]["high"]
