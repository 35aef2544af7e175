"""`build-pairs`: quadruples from instructions with constraints. The rule-based path end to end without any
model; the generator and judge through the `openai` client on an in-process transport (scripted answers,
for the paths a real model rarely takes); and against a real `transformers serve` on localhost, killed and
resumed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from conftest import DEMO_DATA, completion, completions_served, fresh_process_env, scripted_endpoint, write_lines

from iopo_fast.data.records import RejectionLog, load_examples
from iopo_fast.endpoints.client import EndpointError, EndpointSettings
from iopo_fast.evaluation.checks import FAILED, MET, make_check
from iopo_fast.evaluation.demo_constraints import broken, parse_constraints
from iopo_fast.generation.generators import TransformersGenerator
from iopo_fast.generation.local_chat import LocalModel
from iopo_fast.pairs.changes import rule_changes, rule_response
from iopo_fast.pairs import pipeline
from iopo_fast.pairs.pipeline import STAGES, build_pairs
from iopo_fast.pairs.prompts import PromptError, load_prompts
from iopo_fast.pairs.records import Requirement, read_task
from iopo_fast.data.sources import DataError

SCRIPTED = EndpointSettings("http://generator.test/v1", "generator", concurrency=4)


def demo_sft_records(count: int) -> list[dict]:
    """(x1, y1) of the first `count` demo records, as SFT records: instructions whose constraints their text states."""
    lines = (DEMO_DATA / "train.jsonl").read_text().splitlines()[:count]
    return [{"prompt": r["conversations"][0]["value"], "response": r["chosen"]["value"]} for r in map(json.loads, lines)]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def quiet(*args):
    pass


def test_rule_based_pairs_without_any_model_are_valid_quadruples_the_trainer_reads(tmp_path, smollm2_tokenizer):
    source = write_lines(tmp_path / "sft.jsonl", demo_sft_records(60))

    report = build_pairs(str(source), tmp_path / "out", log=quiet)

    pairs, dropped = read_lines(tmp_path / "out" / "pairs.jsonl"), read_lines(tmp_path / "out" / "dropped.jsonl")
    assert report["records"] == 60 and report["kept"]["pairs"] == len(pairs) >= 20
    assert sorted(int(r["source"].rsplit(":", 1)[1]) for r in pairs + dropped) == list(range(1, 61))
    assert report["reached"][STAGES[0]] == 60 and list(report["reached"].values()) == sorted(
        report["reached"].values(), reverse=True)
    assert sum(sum(reasons.values()) for reasons in report["dropped"].values()) == len(dropped)
    for record in pairs:
        (x1, x2), y1, y2 = [turn["value"] for turn in record["conversations"]], record["chosen"]["value"], \
            record["rejected"]["value"]
        first, second = parse_constraints(x1), parse_constraints(x2)
        assert not broken(y1, first) and not broken(y2, second)
        assert broken(y1, second) and broken(y2, first)
        assert len(set(first) - set(second)) == 1 == len(set(second) - set(first))  # one constraint changed
        verdicts = record["verdicts"]
        assert all(v["verdict"] == MET and v["by"] == "program" for v in verdicts["y1|x1"] + verdicts["y2|x2"])
        assert verdicts["y1|x2"][record["change"]["index"]]["verdict"] == FAILED
        assert verdicts["y2|x1"][record["change"]["index"]]["verdict"] == FAILED
    rejected = RejectionLog()
    examples, _ = load_examples(str(tmp_path / "out" / "pairs.jsonl"), smollm2_tokenizer, "iopo", 512, rejected)
    assert len(examples) == len(pairs) and rejected.count == 0


@pytest.mark.parametrize("instruction_id, kwargs, response, expected", [
    ("demo:include", {"args": ["tea"]}, "I like tea.", ("demo:exclude", {"args": ["tea"]})),
    ("demo:lowercase", {}, "i like tea.", ("demo:uppercase", {"args": []})),
    ("demo:bullets", {"args": ["2"]}, "- one\n- two", ("demo:bullets", {"args": [1]})),
    ("demo:max_words", {"args": [20]}, "Tea is good.", ("demo:min_words", {"args": [21]})),  # no answer meets both
    ("demo:min_words", {"args": [2]}, "Tea is good and warm.", ("demo:max_words", {"args": [1]})),
    ("length_constraints:number_words", {"num_words": 10, "relation": "less than"}, "Tea is good.",
     ("length_constraints:number_words", {"num_words": 10, "relation": "at least"})),
    ("change_case:english_lowercase", {}, "tea is good.", ("change_case:english_capital", {})),
])
def test_rule_changes_are_ones_the_response_fails(instruction_id, kwargs, response, expected):
    check = make_check(instruction_id, kwargs, "Talk about tea.")
    instruction = "Talk about tea. " + check.description
    assert check.verdicts(response)[0] == MET

    changes = rule_changes(instruction, (Requirement(check.description, check),), response)

    assert (expected[0], expected[1]) in [(change.new.check.id, change.new.check.kwargs) for change in changes]
    assert all(change.new.check.verdicts(response)[0] == FAILED for change in changes)
    for change in changes:
        if instruction_id.startswith("demo:"):
            assert change.instruction == "Talk about tea. " + change.new.text
        written = rule_response(Requirement(check.description, check), change.new, response)
        if written is not None:
            assert change.new.check.verdicts(written)[0] == MET and check.verdicts(written)[0] == FAILED


def test_a_demo_constraint_listed_and_stated_is_one_requirement():
    record = {"prompt": "Describe tea. Write entirely in lowercase.", "instruction_id_list": ["demo:lowercase"],
              "kwargs": [{}]}
    assert [r.check.id for r in read_task("in.jsonl:1", record).requirements] == ["demo:lowercase"]


def test_a_killed_run_resumes_and_keeps_every_record_once(tmp_path):
    source = write_lines(tmp_path / "sft.jsonl", demo_sft_records(60))
    build_pairs(str(source), tmp_path / "whole", log=quiet)
    build_pairs(str(source), tmp_path / "killed", limit=40, log=quiet)
    pairs = tmp_path / "killed" / "pairs.jsonl"
    data = pairs.read_bytes()
    pairs.write_bytes(data[:len(data) - 40])  # killed while writing the last kept record

    report = build_pairs(str(source), tmp_path / "killed", log=quiet)

    def by_source(folder):
        return sorted(read_lines(tmp_path / folder / "pairs.jsonl"), key=lambda record: record["source"])

    assert by_source("killed") == by_source("whole") and report["records"] == 60
    assert report["this_run"]["records"] == 60 - 40 + 1  # the record cut off is built again
    assert report == {**json.loads((tmp_path / "whole" / "report.json").read_text()), "this_run": report["this_run"]}


def test_a_folder_is_resumed_only_from_the_input_it_was_built_from(tmp_path, monkeypatch):
    source = write_lines(tmp_path / "sft.jsonl", demo_sft_records(10))
    first = build_pairs(str(source), tmp_path / "out", log=quiet)
    monkeypatch.chdir(tmp_path)
    again = build_pairs("sft.jsonl", tmp_path / "out", log=quiet)  # spelled another way: the same input
    assert again["this_run"]["records"] == 0 and again["kept"] == first["kept"]
    other = write_lines(tmp_path / "other.jsonl", demo_sft_records(3))
    with pytest.raises(DataError, match="other settings: seed"):
        build_pairs(str(source), tmp_path / "out", seed=1, log=quiet)
    with pytest.raises(DataError, match=f"^{tmp_path / 'out'}: holds records built from {source} \\(another input\\)"):
        build_pairs(str(other), tmp_path / "out", log=quiet)
    write_lines(source, demo_sft_records(11))
    with pytest.raises(DataError, match="the input has changed since"):
        build_pairs(str(source), tmp_path / "out", log=quiet)


def test_bad_records_are_counted_and_reported_with_their_line(tmp_path):
    good = demo_sft_records(1)[0]
    source = write_lines(tmp_path / "in.jsonl", [
        good,
        '{"prompt": "cut',
        [1, 2],
        {"prompt": "Say hello.", "response": "Hello."},
        {"prompt": "Say hello.", "instruction_id_list": ["no:such_check"], "kwargs": [{}]},
        {"messages": [{"role": "assistant", "content": "Hi"}], "constraints": ["Be brief."]},
        {"prompt": "Say hello.", "response": "Hello.", "constraints": ["Be brief."]},
    ])

    report = build_pairs(str(source), tmp_path / "out", log=quiet)

    dropped = {int(entry["source"].rsplit(":", 1)[1]): (entry["stage"], entry["reason"], entry["detail"])
               for entry in read_lines(tmp_path / "out" / "dropped.jsonl")}
    assert dropped[2][:2] == ("read", "invalid JSON") and dropped[2][2].startswith("invalid JSON: Unterminated string")
    assert dropped[3] == ("constraints", "not a usable record", "not a JSON object")
    assert dropped[4][:2] == ("constraints", "not a usable record") and dropped[4][2].startswith("no constraints")
    assert dropped[5][2].startswith("unknown constraint id 'no:such_check'")
    assert dropped[6][2] == "a conversation must be one user turn, optionally followed by one assistant turn"
    assert dropped[7][:2] == ("y1 meets x1", "constraints in words need a judge (--judge-url, or --generator-url)")
    assert set(dropped) == {2, 3, 4, 5, 6, 7} and report["kept"]["pairs"] == 1
    assert report["dropped"]["constraints"] == {"not a usable record": 4}


def scripted_generator_and_judge(monkeypatch, verdicts: dict[tuple[str, str], str], answers: dict[str, str]):
    """A generator that answers by the request's text (`answers`, by instruction or by a phrase of the
    prompt), and a judge that answers by (constraint, response) (`verdicts`); returns the requests sent."""
    judge_request = re.compile(r"\[Constraint\]\n(.*)\n\n\[Response\]\n(.*)\n\nJudge only", re.DOTALL)

    def answer(message):
        judged = judge_request.search(message)
        if judged:
            return completion(verdicts.get(judged.groups(), "I cannot tell."))
        for phrase, text in answers.items():
            if message == phrase or (phrase.startswith("...") and phrase[3:] in message):
                return completion(text)
        return completion("I do not know.")

    return scripted_endpoint(monkeypatch, answer)


CHANGE = {"index": 1, "constraint": "Use a casual tone.", "instruction": "Describe tea. Use a casual tone."}


def test_constraints_in_words_are_changed_by_the_generator_and_confirmed_by_the_judge(tmp_path, monkeypatch):
    formal, casual = "Tea is an infusion of cured leaves.", "Tea's just leaves in hot water, mate."
    verdicts = {("Use a formal tone.", formal): "Verdict: YES", ("Use a casual tone.", formal): "Verdict: NO",
                ("Use a casual tone.", casual): "**Verdict:** YES", ("Use a formal tone.", casual): "Verdict: NO"}
    answers = {"Describe tea. Use a formal tone.": formal, "...Change exactly one constraint": json.dumps(CHANGE),
               "Describe tea. Use a casual tone.": casual}
    sent = scripted_generator_and_judge(monkeypatch, verdicts, answers)
    record = {"prompt": "Describe tea. Use a formal tone.", "constraints": ["Use a formal tone."]}

    report = build_pairs(str(write_lines(tmp_path / "in.jsonl", [record])), tmp_path / "out", SCRIPTED, log=quiet)

    [pair] = read_lines(tmp_path / "out" / "pairs.jsonl")
    assert [turn["value"] for turn in pair["conversations"]] == [record["prompt"], CHANGE["instruction"]]
    assert (pair["chosen"]["value"], pair["rejected"]["value"]) == (formal, casual)
    assert pair["change"] == {"index": 0, "from": {"text": "Use a formal tone."}, "to": {"text": "Use a casual tone."},
                              "by": "generator"}
    assert [v["verdict"] for v in pair["verdicts"]["y1|x2"] + pair["verdicts"]["y2|x1"]] == [FAILED, FAILED]
    assert pair["verdicts"]["y2|x2"][0]["judge_answer"] == "**Verdict:** YES"
    # The check, y1, y1|x1, the change, y1|x2, y2, y2|x2 and y2|x1: every request once.
    assert len(sent) == 8 and report["this_run"]["requests"] == {"generator (asked)": 3,
                                                                         "judge (asked)": 4}

    sent.clear()
    (tmp_path / "out" / "pairs.jsonl").unlink()  # killed before the record was written: its answers are cached
    build_pairs(str(tmp_path / "in.jsonl"), tmp_path / "out", SCRIPTED, log=quiet)
    assert sent == [] and read_lines(tmp_path / "out" / "pairs.jsonl") == [pair]  # all cached: not even the check


@pytest.mark.parametrize("change, verdict, stage, reason", [
    ("Sure! Here it is.", "Verdict: NO", "x2", "the generator's change is not usable"),
    (json.dumps({**CHANGE, "index": 2}), "Verdict: NO", "x2", "the generator's change is not usable"),
    (json.dumps(CHANGE), "Verdict: YES", "x2", "y1 meets the changed constraint"),
    (json.dumps(CHANGE), "Maybe.", "x2", "the judge gave no verdict"),
])
def test_unusable_generator_and_judge_answers_are_counted(tmp_path, monkeypatch, change, verdict, stage, reason):
    answers = {"Describe tea. Be formal.": "Tea is an infusion.", "...Change exactly one constraint": change}
    verdicts = {("Be formal.", "Tea is an infusion."): "Verdict: YES", ("Use a casual tone.", "Tea is an infusion."): verdict}
    scripted_generator_and_judge(monkeypatch, verdicts, answers)
    record = {"prompt": "Describe tea. Be formal.", "constraints": ["Be formal."]}

    report = build_pairs(str(write_lines(tmp_path / "in.jsonl", [record])), tmp_path / "out", SCRIPTED, log=quiet)

    assert report["dropped"] == {stage: {reason: 1}}
    [entry] = read_lines(tmp_path / "out" / "dropped.jsonl")
    assert entry["detail"] in (change, verdict, None)


CALM_TEA = "green tea leaves steep slowly in hot water, and the whole kitchen fills with a calm and gentle smell."


def test_failed_requests_and_internal_errors_are_retried_by_a_rerun_not_dropped(tmp_path, monkeypatch):
    down = {"Describe tea. Be formal."}
    answers = {"Describe tea. Be formal.": "Tea is an infusion.", "...Change exactly one constraint": json.dumps(
        {"index": 1, "constraint": "Be casual.", "instruction": "Describe tea. Be casual."}),
        "Describe tea. Be casual.": "Tea's just leaves, mate."}
    verdicts = {("Be formal.", "Tea is an infusion."): "Verdict: YES", ("Be casual.", "Tea is an infusion."): "Verdict: NO",
                ("Be casual.", "Tea's just leaves, mate."): "Verdict: YES",
                ("Be formal.", "Tea's just leaves, mate."): "Verdict: NO"}
    judge_request = re.compile(r"\[Constraint\]\n(.*)\n\n\[Response\]\n(.*)\n\nJudge only", re.DOTALL)

    def answer(message):
        if message in down:
            return httpx2.Response(503, json={"error": {"message": "overloaded"}})
        judged = judge_request.search(message)
        if judged:
            return completion(verdicts[judged.groups()])
        return completion(next((text for phrase, text in answers.items()
                                if message == phrase or (phrase.startswith("...") and phrase[3:] in message)), "OK"))

    scripted_endpoint(monkeypatch, answer)
    records = [{"prompt": "Describe tea. Be formal.", "constraints": ["Be formal."]}, demo_sft_records(1)[0]]
    source = write_lines(tmp_path / "in.jsonl", records)
    with pytest.MonkeyPatch.context() as broken:
        broken.setattr(pipeline, "rule_changes", lambda *args: 1 / 0)  # a fault of the program, on one record
        report = build_pairs(str(source), tmp_path / "out", SCRIPTED, log=quiet)

    assert report["to_retry"] == {"unknown": {"an internal error (ZeroDivisionError)": 1},
                                  "y1": {"a generator request failed": 1}}
    assert report["this_run"]["retry_examples"]["a generator request failed"].startswith("HTTP 503")
    assert not (tmp_path / "out" / "dropped.jsonl").exists() and report["kept"]["pairs"] == 0
    down.clear()
    again = build_pairs(str(source), tmp_path / "out", SCRIPTED, log=quiet)
    assert again["this_run"]["records"] == 2 and again["to_retry"] == {} and again["kept"]["pairs"] >= 1


def test_ifeval_constraints_are_changed_by_rule_and_restated_by_the_generator(tmp_path, monkeypatch):
    prompt = "Write a haiku about tea, all in lowercase."
    answers = {"...becomes \"Your entire response should be in English, and in all capital letters.\"":
               "Write a haiku about tea, all in capital letters.",
               "Write a haiku about tea, all in capital letters.": CALM_TEA.upper()}
    sent = scripted_generator_and_judge(monkeypatch, {}, answers)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text('restate: "Make the requirement \\"{old}\\" becomes \\"{new}\\" in: {instruction}"\n')
    record = {"prompt": prompt, "response": CALM_TEA, "instruction_id_list": ["change_case:english_lowercase"],
              "kwargs": [{}]}

    build_pairs(str(write_lines(tmp_path / "in.jsonl", [record])), tmp_path / "out", SCRIPTED,
                prompts=load_prompts(prompts), log=quiet)

    [pair] = read_lines(tmp_path / "out" / "pairs.jsonl")
    assert pair["conversations"][1]["value"] == "Write a haiku about tea, all in capital letters."
    assert pair["change"]["to"]["id"] == "change_case:english_capital"
    assert pair["change"]["by"] == "rule, restated by the generator"
    assert any(message.startswith("Make the requirement") for message in sent)  # the prompt from the file


def test_prompt_files_with_errors_name_the_file_and_the_reason(tmp_path):
    cases = {"bad.json": ('{"answer": ', ":1: invalid JSON: Expecting value"),
             "unknown.json": ('{"rewrite": "{instruction}"}', ": unknown step 'rewrite'"),
             "missing.yaml": ("modify: 'Change {instruction}'", ": the 'modify' prompt must contain {constraints}, {response}"),
             "list.yaml": ("- a\n- b\n", ": expected a mapping from step names"),
             "bad.yaml": ("answer: [unclosed\n", ":2: invalid YAML")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(PromptError, match="^" + re.escape(f"{tmp_path / name}{message}")):
            load_prompts(tmp_path / name)


def build_pairs_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iopo_fast.cli", "build-pairs", *args], capture_output=True, text=True,
                          env=fresh_process_env())


def test_cli_errors_are_one_line_before_any_work(tmp_path):
    source = str(write_lines(tmp_path / "in.jsonl", demo_sft_records(2)))
    output = str(tmp_path / "out")
    cases = {
        (source, output, "--generator-url", "http://127.0.0.1:9/v1", "--generator-model", "m", "--generator-retries",
         "0"): "http://127.0.0.1:9/v1: the endpoint cannot be reached (Connection error.)",
        (source, output, "--generator-model", "/no/such/model"): "/no/such/model: no such model directory",
        (source, output, "--judge-url", "http://127.0.0.1:9/v1"): "--judge-url and --judge-model go together",
        (str(tmp_path / "missing.jsonl"), output): f"{tmp_path / 'missing.jsonl'}: no such data file or folder",
        (source, output, "--prompts", str(tmp_path / "none.yaml")): f"{tmp_path / 'none.yaml'}: No such file",
        (source, output, "--limit", "0"): "--limit must be positive, got 0",
    }
    for args, message in cases.items():
        result = build_pairs_cli(*args)
        assert result.returncode == 2 and result.stderr.startswith(f"iopo-fast: error: {message}"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out" / "pairs.jsonl").exists()
    with pytest.raises(EndpointError):
        build_pairs(source, tmp_path / "out", EndpointSettings("http://127.0.0.1:9/v1", "m", retries=0))


SERVER_RECORDS = [
    {"prompt": "Describe a quiet morning. Write entirely in lowercase.",
     "response": "the kettle hums, the street is still, and the light comes in slowly."},
    {"prompt": "Give one tip for sleeping better. Include the word 'dark'.", "response": "Keep your bedroom dark and cool."},
    {"prompt": "Name a fruit. Answer in at most 5 words."},
    {"prompt": "Describe the sea.", "response": "The sea is wide and blue.", "constraints": ["Mention a colour."]},
    {"prompt": "Say hello to a colleague. Write entirely in UPPERCASE."},
    {"prompt": "Describe rain. Answer in at least 3 words.", "response": "Rain falls softly on the roofs."},
]


def test_against_a_local_server_a_killed_run_resumes_without_asking_again(tmp_path, chat_server):
    url, model, log = chat_server
    source = write_lines(tmp_path / "in.jsonl", SERVER_RECORDS)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "iopo_fast.cli", "build-pairs", str(source), str(output), "--generator-url", url,
               "--generator-model", model, "--generator-max-tokens", "24", "--generator-concurrency", "2"]
    served = completions_served(log)

    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=fresh_process_env())
    deadline = time.monotonic() + 300
    while not (output / "cache.jsonl").exists() or len((output / "cache.jsonl").read_bytes().splitlines()) < 3:
        assert first.poll() is None and time.monotonic() < deadline, "the run ended before three answers"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    cached_at_kill = len((output / "cache.jsonl").read_bytes().splitlines())
    result = subprocess.run(command, capture_output=True, text=True, env=fresh_process_env())
    assert result.returncode == 0, result.stderr[-3000:]

    pairs, dropped = read_lines(output / "pairs.jsonl"), read_lines(output / "dropped.jsonl")
    assert sorted(int(r["source"].rsplit(":", 1)[1]) for r in pairs + dropped) == list(range(1, 7))
    answers = len((output / "cache.jsonl").read_text().splitlines())
    assert answers > cached_at_kill
    # One reachability check per run, and one request per answer, except those in flight at the kill (at most
    # the concurrency), whose answers were not cached yet and are asked again.
    assert answers + 2 <= completions_served(log) - served <= answers + 2 + 2
    report = json.loads((output / "report.json").read_text())
    assert report["records"] == 6 and report["kept"]["pairs"] == len(pairs)
    asked = sum(count for role, count in report["this_run"]["requests"].items() if role.endswith("(asked)"))
    assert asked == answers - cached_at_kill  # the generator's endpoint is the judge too; nothing asked twice
    assert any(entry["stage"] not in ("read", "constraints", "y1") for entry in dropped) or pairs

    served = completions_served(log)
    again = subprocess.run(command, capture_output=True, text=True, env=fresh_process_env())
    assert again.returncode == 0 and completions_served(log) - served == 0  # nothing to ask, not even the check
    assert read_lines(output / "pairs.jsonl") == pairs and read_lines(output / "dropped.jsonl") == dropped


def test_a_local_model_generates_in_batches_and_its_answers_are_cached(tmp_path, tiny_model_dir, monkeypatch):
    batches = []
    generate = TransformersGenerator.__call__

    def counted(self, prompts):
        batches.append(len(prompts))
        return generate(self, prompts)

    monkeypatch.setattr(TransformersGenerator, "__call__", counted)
    records = [{"prompt": record["prompt"]} for record in demo_sft_records(5)]
    source = write_lines(tmp_path / "in.jsonl", records)
    local = LocalModel(str(tiny_model_dir), max_tokens=4, batch_size=4, backend="transformers")

    report = build_pairs(str(source), tmp_path / "out", local, log=quiet)

    assert sorted(batches) == [1, 4]  # five requests for y1, made at once: two batches
    assert report["records"] == 5 and report["this_run"]["requests"] == {"generator (asked)": 5}
    assert len((tmp_path / "out" / "cache.jsonl").read_text().splitlines()) == 5
    batches.clear()
    for name in ("pairs.jsonl", "dropped.jsonl"):
        (tmp_path / "out" / name).unlink(missing_ok=True)
    again = build_pairs(str(source), tmp_path / "out", local, log=quiet)
    assert batches == [] and again["this_run"]["requests"] == {"generator (cached)": 5}
    assert again["dropped"] == report["dropped"]


def test_an_endpoint_that_answers_garbage_is_one_error_before_any_record_is_lost(tmp_path, monkeypatch):
    scripted_endpoint(monkeypatch, lambda message: httpx2.Response(200, json={"status": "ok"}))
    source = write_lines(tmp_path / "in.jsonl", demo_sft_records(3))
    with pytest.raises(EndpointError, match="not an OpenAI-compatible chat endpoint"):
        build_pairs(str(source), tmp_path / "out", SCRIPTED, log=quiet)
    assert not (tmp_path / "out" / "pairs.jsonl").exists() and not (tmp_path / "out" / "dropped.jsonl").exists()
