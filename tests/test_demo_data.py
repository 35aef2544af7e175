"""The bundled IOPO demo data: up to date, in the release format, and checkably right."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iopo_fast.evaluation import demo_constraints as checks

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "make_demo_data.py"


def import_script():
    spec = importlib.util.spec_from_file_location("make_demo_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


demo = import_script()
Constraint = checks.Constraint


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    """The records of each committed file, by file name."""
    return {name: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            for name, path in demo.SPLIT_PATHS.items()}


def all_records(splits: dict[str, list[dict]]) -> list[dict]:
    return [record for records in splits.values() for record in records]


def test_committed_files_equal_a_fresh_generation():
    for name, content in demo.dataset_files().items():
        assert demo.SPLIT_PATHS[name].read_bytes() == content, f"{name} is stale: rerun examples/make_demo_data.py"


def test_the_demo_benchmark_reads_the_generated_eval_split():
    from iopo_fast.evaluation.benchmarks import DEFAULT_DEMO_EVAL

    assert DEFAULT_DEMO_EVAL == demo.SPLIT_PATHS["eval.jsonl"]


def test_check_flag_passes_on_committed_files_and_fails_on_edited_ones(tmp_path):
    check = [sys.executable, str(SCRIPT), "--check"]
    assert subprocess.run(check, capture_output=True).returncode == 0
    for name, path in demo.SPLIT_PATHS.items():
        (tmp_path / name).write_bytes(path.read_bytes())
    (tmp_path / "eval.jsonl").write_bytes(demo.SPLIT_PATHS["eval.jsonl"].read_bytes()[:-1])
    result = subprocess.run([*check, "--out-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "eval.jsonl" in result.stderr


def test_counts(splits):
    assert {name: len(records) for name, records in splits.items()} == \
        {"train.jsonl": 300, "eval.jsonl": 40, "valid.jsonl": 40}


def test_every_line_is_a_record_in_the_release_format(splits):
    for record in all_records(splits):
        assert list(record) == ["conversations", "chosen", "rejected"]
        first, second = record["conversations"]
        assert first["from"] == second["from"] == "human"
        assert record["chosen"]["from"] == record["rejected"]["from"] == "gpt"
        for message in (first, second, record["chosen"], record["rejected"]):
            assert list(message) == ["from", "value"]
            assert isinstance(message["value"], str) and message["value"].strip()


def test_every_record_passes_verification(splits):
    for record in all_records(splits):
        assert demo.verify_quadruple(record) == [], record


def test_each_response_breaks_the_other_instruction(splits):
    for record in all_records(splits):
        x1, x2, y1, y2 = demo.record_texts(record)
        assert x1 != x2 and y1 != y2
        assert all(c.check(y1) for c in checks.parse_constraints(x1))
        assert not all(c.check(y1) for c in checks.parse_constraints(x2))
        assert all(c.check(y2) for c in checks.parse_constraints(x2))
        assert not all(c.check(y2) for c in checks.parse_constraints(x1))


def test_swapped_or_malformed_records_are_reported(splits):
    for record in splits["eval.jsonl"]:
        swapped = dict(record, chosen=record["rejected"], rejected=record["chosen"])
        assert any("breaks" in problem for problem in demo.verify_quadruple(swapped))
    record = splits["eval.jsonl"][0]
    assert demo.verify_quadruple(dict(record, system="Be brief.")) != []
    assert demo.verify_quadruple({"conversations": record["conversations"]}) != []
    assert demo.verify_quadruple("not a record") != []


def test_no_instruction_pair_is_in_two_splits_and_eval_shares_no_topic(splits):
    pairs = {name: {demo.record_texts(record)[:2] for record in records} for name, records in splits.items()}
    assert sum(map(len, pairs.values())) == len(set().union(*pairs.values())) == 380
    tasks = {name: {record["conversations"][0]["value"].split(".")[0] for record in records}
             for name, records in splits.items()}
    assert not (tasks["train.jsonl"] | tasks["valid.jsonl"]) & tasks["eval.jsonl"]
    assert tasks["valid.jsonl"] <= tasks["train.jsonl"]


def test_every_trivial_answer_fails_every_eval_instruction(splits):
    from iopo_fast.evaluation.benchmarks import load_benchmark
    from iopo_fast.evaluation.run import trivial_floors

    named, family = trivial_floors(load_benchmark("demo"))
    assert {answer: by_mode["strict"]["prompt_level"]["accuracy"] for answer, by_mode in named.items()} == \
        dict.fromkeys(["empty", "dot", "echo", "generic"], 0.0)
    # Every member of the family, in both modes: no answer that ignores the task meets a whole prompt.
    assert family["strict"]["prompt_level"]["accuracy"] == family["loose"]["prompt_level"]["accuracy"] == 0.0
    # The requirement, not chance, gives eval its floor: records of the same kinds fail it without one.
    assert not all(map(demo.trivial_answers_fail, splits["valid.jsonl"]))


def test_case_constraints_need_a_cased_letter():
    for kind in ("lowercase", "uppercase"):
        assert not any(Constraint(kind).check(text) for text in ("", ".", "42!", "- 3\n- 4"))


def test_instructions_and_responses_are_short(splits):
    for record in all_records(splits):
        x1, x2, y1, y2 = demo.record_texts(record)
        assert max(map(checks.count_words, (x1, x2))) <= 40
        assert max(map(checks.count_words, (y1, y2))) <= 35


def test_every_constraint_kind_occurs_in_the_data(splits):
    kinds = {c.kind for record in all_records(splits) for x in demo.record_texts(record)[:2]
             for c in checks.parse_constraints(x)}
    assert kinds == set(checks.KINDS)


RIGHT_AND_WRONG_RESPONSES = [
    (Constraint("max_words", (5,)), "Cycling is cheap and fun.", "Cycling is cheap, fun and healthy."),
    (Constraint("exact_words", (4,)), "Cycling is great fun.", "Cycling is fun."),
    (Constraint("min_words", (5,)), "Cycling is cheap and fun.", "Cycling is fun."),
    (Constraint("include", ("helmet",)), "Always wear a Helmet.", "Always wear gloves."),
    (Constraint("exclude", ("helmet",)), "Always wear gloves.", "Always wear a helmet."),
    (Constraint("lowercase"), "cycling is fun.", "Cycling is fun."),
    (Constraint("uppercase"), "CYCLING IS FUN.", "cYCLING IS FUN."),
    (Constraint("bullets", (2,)), "- Ride.\n- Rest.", "- Ride.\n- Rest.\n- Repeat."),
    (Constraint("json", ("a", "b")), '{"a": "Ride.", "b": "Rest."}', '{"a": "Ride.", "c": "Rest."}'),
    (Constraint("ending", ("Hope this helps!",)), "Ride daily. Hope this helps!", "Hope this helps! Ride daily."),
    (Constraint("language", ("French",)), "Le vélo est bon pour vous.", "Cycling is good for you."),
]


@pytest.mark.parametrize("constraint, right, wrong", RIGHT_AND_WRONG_RESPONSES,
                         ids=[constraint.kind for constraint, _, _ in RIGHT_AND_WRONG_RESPONSES])
def test_each_kind_accepts_a_right_response_and_catches_a_wrong_one(constraint, right, wrong):
    assert constraint.check(right)
    assert not constraint.check(wrong)


def test_the_right_and_wrong_table_covers_every_kind():
    assert {constraint.kind for constraint, _, _ in RIGHT_AND_WRONG_RESPONSES} == set(checks.KINDS)


def test_wrong_responses_built_from_generated_ones_are_caught(splits):
    """Dropping the keyword, flipping the case, or cutting the ending breaks the constraint."""
    spoilers = {
        "include": lambda response, word: re.sub(rf"\b{word}\b", "", response, flags=re.IGNORECASE),
        "lowercase": lambda response: response.upper(),
        "uppercase": lambda response: response.lower(),
        "ending": lambda response, phrase: response.rstrip()[: -len(phrase)],
    }
    spoiled = 0
    for record in all_records(splits):
        x1, _, y1, _ = demo.record_texts(record)
        for constraint in checks.parse_constraints(x1):
            if constraint.kind in spoilers:
                assert not constraint.check(spoilers[constraint.kind](y1, *constraint.args))
                spoiled += 1
    assert spoiled > 100


def test_descriptions_read_back_as_the_same_constraints():
    constraints = [Constraint("exact_words", (12,)), Constraint("json", ("main_point", "example")),
                   Constraint("ending", ("¡Buena suerte!",)), Constraint("include", ("énergie",)),
                   Constraint("language", ("Spanish",)), Constraint("lowercase")]
    instruction = " ".join(["Give tips for saving money.", *(c.describe() for c in constraints)])
    assert checks.parse_constraints(instruction) == constraints


def test_every_topic_sentence_is_recognised_in_its_own_language():
    for topic in demo.TOPICS:
        for language, sentences in topic.sentences.items():
            for sentence in sentences:
                assert checks.detect_language(sentence) == language, sentence


def test_there_are_enough_distinct_topics():
    assert len({topic.task for topic in demo.TOPICS}) >= 60
