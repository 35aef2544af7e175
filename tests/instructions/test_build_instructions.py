"""`build-instructions`: TRACE's construction from simple instructions. Every stage against a deterministic
OpenAI-compatible judge and generator (the `openai` client on an in-process transport), its malformed answers at
every stage, the outputs that `train`, `build-pairs` and `eval` read, a kill and a resume, the errors of the
command line, and the mechanics with a local model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import completion, scripted_endpoint, write_lines

from iopo_fast.cli import main
from iopo_fast.data.records import load_examples
from iopo_fast.endpoints.client import EndpointSettings
from iopo_fast.evaluation.benchmarks import load_benchmark
from iopo_fast.evaluation.taxonomy import load_taxonomy
from iopo_fast.generation.local_chat import LocalModel
from iopo_fast.instructions.build import build_instructions
from iopo_fast.evaluation.checks import make_check
from iopo_fast.instructions.builder import Constraint, InstructionBuilder, _check_by_program
from iopo_fast.instructions.plan import PlanError, load_plan
from iopo_fast.instructions.prompts import PROMPTS
from iopo_fast.data.sources import DataError
from iopo_fast.pairs.pipeline import build_pairs
from iopo_fast.pairs.records import read_task
from iopo_fast.pairs.streaming import Dropped

ENDPOINT = EndpointSettings("http://generator.test/v1", "generator", concurrency=4)
TAXONOMY = load_taxonomy()
PLAN = load_plan(None, TAXONOMY)
GOOD = [f"Describe item {number}." for number in range(12)]
# Seed instructions that go wrong at one stage each: the tag in the text tells the oracle what to answer.
BROKEN = {
    "EMPTY": ("expand", "the expanded instruction is empty or unchanged"),
    "NOTJSON": ("structure", "not a JSON object with a task and its constraints"),
    "OUTSIDE": ("structure", "a constraint outside the taxonomy"),
    "BADCHECK": ("structure", "a check that does not exist or does not take its arguments"),
    "DUPLICATE": ("quality", "duplicated constraints"),
    "CONTRADICTION": ("quality", "contradictory length bounds"),
    "REJECT": ("quality", "rejected by the review"),
    "GARBLED": ("quality", "the review's answer is not usable"),
    "STUBBORN": ("judging", "no response met every constraint within the tries"),
    "BADJUDGE": ("judging", "the judge's answer cannot be read"),
}
SEEDS = [{"prompt": text} for text in GOOD] + [{"instruction": f"Describe a {tag} thing."} for tag in BROKEN] + [
    {"messages": [{"role": "user", "content": "Describe a REVISED thing."}]}, {"prompt": ""}, "not JSON"]
NICE = "Tea is lovely, friend!"


def structure(task: str) -> dict:
    """The oracle's structure of an expanded instruction: a checked keyword and a tone, plus what a tag asks."""
    keyword = {"constraint": "Include the keyword tea.", "dimension": "Inclusion",
               "check": {"id": "keywords:existence", "kwargs": {"keywords": ["tea"]}}}
    tone = {"constraint": "Use a friendly tone.", "dimension": "Tone and Style", "check": None}
    constraints = [keyword, tone]
    if "OUTSIDE" in task:
        constraints.append({"constraint": "Make it blue.", "dimension": "Colour", "check": None})
    if "BADCHECK" in task:
        constraints.append({"constraint": "Sing.", "dimension": "Emotion", "check": {"id": "no:such", "kwargs": {}}})
    if "DUPLICATE" in task:
        constraints.append({"constraint": "use a friendly tone", "dimension": "Tone and Style", "check": None})
    if "CONTRADICTION" in task:
        constraints += [{"constraint": "Answer in at least 50 words.", "dimension": "Numerical", "check": None},
                        {"constraint": "Write at most 10 words.", "dimension": "Numerical", "check": None}]
    return {"task": task, "input": None, "constraints": constraints}


def oracle(message: str):
    """A deterministic generator and judge, answering each step of the pipeline by its prompt."""
    if message == "Reply with OK.":
        return completion("OK")
    if message.startswith("You make instructions more complex"):
        simple = re.search(r"\[Simple instruction\]\n(.*?)\n\n\[Dimensions", message, re.DOTALL).group(1)
        return completion(simple if "EMPTY" in simple else f"{simple}\n1. Include the keyword tea.\n2. Be friendly.")
    if message.startswith("Split the instruction"):
        task = re.search(r"\[Instruction\]\n(.*?)\n1\. ", message, re.DOTALL).group(1)
        return completion("Sure, here it is." if "NOTJSON" in task else json.dumps(structure(task)))
    if message.startswith("You check the quality"):
        if "GARBLED" in message:
            return completion("Looks fine to me.")
        return completion(json.dumps({"acceptable": "REJECT" not in message, "problems": []}))
    if message.startswith("You are a strict and fair judge"):
        if "BADJUDGE" in message:
            return completion("A fine answer.")
        count = len(re.findall(r"^\d+\. ", message.split("[Constraints]\n")[-1].split("\n\n[Response]")[0], re.M))
        return completion(f"Fine Grained Score: {json.dumps([{f'c{n}': 10 for n in range(count)}])}\n"
                          "Constraints Overall Score: [[10]]")
    if message.startswith("Your response below does not meet"):  # a revision
        return completion("Hello, friend!" if "STUBBORN" in message else NICE)
    # The instruction itself: a first response, which misses the keyword for some.
    return completion("Hello, friend!" if "STUBBORN" in message or "REVISED" in message else NICE)


def quiet(*args):
    pass


def splitter(seed: int) -> InstructionBuilder:
    return InstructionBuilder(PROMPTS, None, None, TAXONOMY, PLAN, seed=seed, eval_fraction=0.25)


def seed_text(seed: dict | str) -> str:
    return next(iter(seed.values())) if isinstance(seed, dict) and "messages" not in seed else \
        "Describe a REVISED thing."


# The first seed that sets some of the good instructions apart for evaluation, and none of the others.
SEED = next(seed for seed in range(1000) if 0 < sum(map(splitter(seed).in_evaluation_split, GOOD)) < len(GOOD)
            and not any(splitter(seed).in_evaluation_split(seed_text(record)) for record in SEEDS[len(GOOD):-2]))


def build(folder: Path, monkeypatch, **settings) -> tuple[dict, list[str]]:
    sent = scripted_endpoint(monkeypatch, oracle)
    source = folder / "seeds.jsonl"
    if not source.exists():
        write_lines(source, SEEDS)
    report = build_instructions(str(source), folder / "out", ENDPOINT, log=quiet,
                                **{"seed": SEED, "eval_fraction": 0.25, **settings})
    return report, sent


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_stage_keeps_or_drops_with_its_reason(tmp_path, monkeypatch):
    report, sent = build(tmp_path, monkeypatch)

    evaluated = [text for text in GOOD if splitter(SEED).in_evaluation_split(text)]
    assert report["records"] == len(SEEDS) and report["kept"] == {"train": len(GOOD) - len(evaluated) + 1,
                                                                   "eval": len(evaluated)}
    expected = {}
    for stage, reason in BROKEN.values():
        expected.setdefault(stage, {})[reason] = 1
    expected |= {"read": {"invalid JSON": 1}, "instruction": {"not a usable instruction": 1}}
    assert report["dropped"] == expected and report["to_retry"] == {}
    # The evaluation split stops after quality control: only the training split's records reach the responses.
    assert report["reached"]["response"] == report["kept"]["train"] + 2  # and STUBBORN and BADJUDGE

    dropped = read_lines(tmp_path / "out" / "dropped.jsonl")
    assert next(drop for drop in dropped if drop["reason"] == "the judge's answer cannot be read")["detail"] == \
        "A fine answer."  # every unusable answer is kept with its drop
    # Each expansion asks for the constraints the plan draws for that record, the same in every run.
    expansions = [message for message in sent if message.startswith("You make instructions")]
    first = next(message for message in expansions if "Describe item 0." in message)
    planned = PLAN.draw(f"{SEED}:{tmp_path / 'seeds.jsonl'}:1")
    assert f"Add {len(planned)} constraints" in first and all(dimension.name in first for dimension in planned)

    train = {record["seed_instruction"]: record for record in read_lines(tmp_path / "out" / "instructions.jsonl")}
    kept = train["Describe item 1." if "Describe item 1." in train else "Describe item 2."]
    user, assistant = kept["messages"]
    assert user["content"] == f"{kept['structure']['task']}\n1. Include the keyword tea.\n2. Use a friendly tone.\n"
    assert assistant["content"] == NICE and kept["tries"] == 1
    assert kept["constraints"] == ["Use a friendly tone."] and kept["instruction_id_list"] == ["keywords:existence"]
    assert [(verdict["by"], verdict["verdict"]) for verdict in kept["verdicts"]] == [("program", "met"), ("judge", "met")]
    revised = train["Describe a REVISED thing."]
    assert revised["tries"] == 2 and revised["messages"][-1]["content"] == NICE  # the first missed "tea"
    assert sum("Include the keyword tea." in message for message in sent
               if message.startswith("Your response below does not meet")) == 1 + 1  # REVISED, and STUBBORN: it answers
    # the same again, which ends its tries rather than ask the same request again
    assert "generator (cached)" not in report["this_run"]["requests"]
    assert report["distribution"]["train"]["constraints_per_record"]["counts"] == {"2": len(train)}
    assert report["distribution"]["train"]["types"] == {"Content": len(train), "Style": len(train)}


def test_the_splits_are_read_by_train_build_pairs_and_eval(tmp_path, monkeypatch, smollm2_tokenizer):
    report, _ = build(tmp_path, monkeypatch)
    out = tmp_path / "out"

    examples, _ = load_examples(str(out / "instructions.jsonl"), smollm2_tokenizer, loss="sft")
    assert len(examples) == report["kept"]["train"]
    for number, record in enumerate(read_lines(out / "instructions.jsonl")):
        task = read_task(f"instructions.jsonl:{number}", record)
        assert [requirement.check.id if requirement.check else requirement.text for requirement in task.requirements] \
            == ["keywords:existence", "Use a friendly tone."] and task.response == NICE

    evaluation = read_lines(out / "eval.jsonl")
    judged = load_benchmark(f"judge:{out / 'eval.jsonl'}")
    assert [item.prompt for item in judged] == [record["messages"][1]["content"] for record in evaluation]
    assert all(record["levels2"] == ["包含约束", "语气风格约束"] and record["input"] == "NULL" for record in evaluation)
    checked = load_benchmark(f"jsonl:{out / 'eval-checks.jsonl'}")
    assert [(item.key, [check.id for check in item.checks]) for item in checked] == \
        [(record["id"], ["keywords:existence"]) for record in evaluation]
    seeds = {record["seed_instruction"] for record in read_lines(out / "instructions.jsonl")}
    assert not seeds & {item.prompt.split("\n")[0] for item in judged}  # no instruction in both splits


def test_a_killed_run_resumes_without_asking_again(tmp_path, monkeypatch):
    (tmp_path / "whole").mkdir()
    build(tmp_path / "whole", monkeypatch)
    build(tmp_path, monkeypatch, limit=12)
    train = tmp_path / "out" / "instructions.jsonl"
    data = train.read_bytes()
    train.write_bytes(data[:len(data) - 30])  # killed while writing the last kept record

    report, sent = build(tmp_path, monkeypatch)

    def by_source(folder: Path, name: str) -> list[str]:
        """The records of one output, in the order of their input line, the input's path left out."""
        records = sorted(read_lines(folder / "out" / name), key=lambda record: int(record["source"].split(":")[-1]))
        return [json.dumps(record, ensure_ascii=False).replace(str(folder / "seeds.jsonl"), "IN") for record in records]

    for name in ("instructions.jsonl", "eval.jsonl", "dropped.jsonl"):
        assert by_source(tmp_path, name) == by_source(tmp_path / "whole", name)
    # The record cut off is built again from the cache: only the records not reached before are asked.
    assert report["this_run"]["records"] == len(SEEDS) - 12 + 1
    assert not any("Describe item 3." in message for message in sent)


@pytest.mark.parametrize("texts, checks, contradictory", [
    (("Write at least 100 words.", "Write less than 100 words."), (), True),  # "less than" is strict
    (("Use more than 100 words.", "Use fewer than 101 words."), (), True),
    (("Use at least 100 words.", "Use at most 100 words."), (), False),
    (("Write at least 100 words.",), ({"num_words": 100, "relation": "less than"},), True),
    (("Write at least 99 words.",), ({"num_words": 100, "relation": "less than"},), False),
])
def test_word_count_bounds_that_no_response_meets_fail_quality_control(texts, checks, contradictory):
    numerical = TAXONOMY.classify("Numerical")
    constraints = [Constraint(text, numerical) for text in texts] + [
        Constraint("Mind the length.", numerical, make_check("length_constraints:number_words", kwargs, "p"))
        for kwargs in checks]
    if contradictory:
        with pytest.raises(Dropped, match="contradictory length bounds"):
            _check_by_program(tuple(constraints))
    else:
        _check_by_program(tuple(constraints))


def test_a_folder_is_resumed_only_with_the_settings_it_was_built_with(tmp_path, monkeypatch):
    build(tmp_path, monkeypatch, limit=3)
    for settings, changed in (({"eval_fraction": 0.5}, "eval_fraction"), ({"max_tries": 1}, "max_tries")):
        with pytest.raises(DataError, match=rf"\(other settings: {changed}\); choose another output folder"):
            build(tmp_path, monkeypatch, **settings)
    with pytest.raises(DataError, match=r"\(other settings: command, eval_fraction, max_constraints, max_tries, plan, "):
        build_pairs(str(tmp_path / "seeds.jsonl"), tmp_path / "out", log=quiet)


def test_a_dead_endpoint_and_bad_settings_are_one_line_errors(tmp_path, capsys):
    source = write_lines(tmp_path / "seeds.jsonl", SEEDS[:2])
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"constraints_per_instruction": {"2": 1}, "dimensions": {"Colour": 1}}))
    cases = {
        (): "every stage asks a model",
        ("--generator-url", "http://127.0.0.1:9/v1", "--generator-model", "m", "--generator-retries", "0"):
            "http://127.0.0.1:9/v1: the endpoint cannot be reached",
        ("--generator-model", "m", "--generator-url", "http://x/v1", "--plan", str(plan)):
            f"{plan}: 'Colour' is not a dimension of the taxonomy TRACE",
        ("--generator-model", "m", "--generator-url", "http://x/v1", "--eval-fraction", "1"): "--eval-fraction",
    }
    for args, message in cases.items():
        assert main(["build-instructions", str(source), str(tmp_path / "out"), *args]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("iopo-fast: error: ") and message in error[0], error
    assert not (tmp_path / "out" / "instructions.jsonl").exists()


def test_a_plan_file_is_validated_and_drawn_from_the_same_way_every_time(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"constraints_per_instruction": {"3": 1}, "dimensions": {"Inclusion": 1, "语气风格约束": 2}},
                               ensure_ascii=False), encoding="utf-8")
    plan = load_plan(path, TAXONOMY)
    draws = [plan.draw(f"0:seeds.jsonl:{number}") for number in range(50)]
    assert draws == [plan.draw(f"0:seeds.jsonl:{number}") for number in range(50)]
    assert {len(draw) for draw in draws} == {3} and {d.name for draw in draws for d in draw} == {"Inclusion",
                                                                                                  "Tone and Style"}
    path.write_text(json.dumps({"constraints_per_instruction": {"0": 1}, "dimensions": {"Inclusion": 1}}))
    with pytest.raises(PlanError, match="needs at least one count of 1 or more"):
        load_plan(path, TAXONOMY)
    path.write_text(json.dumps({"constraints_per_instruction": {"2": -1}, "dimensions": {"Inclusion": 1}}))
    with pytest.raises(PlanError, match="-1 is not a positive weight"):
        load_plan(path, TAXONOMY)
    default = [len(PLAN.draw(f"0:{number}")) for number in range(2000)]
    assert 4.4 < sum(default) / len(default) < 5.4  # TRACE's evaluation set: 4.88 constraints per instruction


def test_with_a_local_model_the_mechanics_run_and_every_drop_is_counted(tmp_path, tiny_model_dir):
    source = write_lines(tmp_path / "seeds.jsonl", SEEDS[:3])
    local = LocalModel(str(tiny_model_dir), max_tokens=8, batch_size=4, backend="transformers")

    report = build_instructions(str(source), tmp_path / "out", local, log=quiet)

    assert report["records"] == 3 and sum(report["kept"].values()) + sum(
        count for reasons in report["dropped"].values() for count in reasons.values()) == 3
    assert report["this_run"]["requests"]["generator (asked)"] >= 3
