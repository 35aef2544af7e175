"""The LLM judge (`judge:PATH` benchmarks): TRACE's evaluation format, verdict parsing, and the whole path
against a real OpenAI-compatible server, `transformers serve` with the embedded model, started here on
localhost. Its verdicts are poor; what is tested is the protocol, the cache, the resume and the errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx2
import pytest
from conftest import completion, completions_served, scripted_endpoint, write_lines
from test_evaluation import run_cli

from iopo_fast.distributed import free_port
from iopo_fast.endpoints.client import CachedChat, EndpointError, EndpointSettings
from iopo_fast.evaluation.benchmarks import BenchmarkError, load_benchmark
from iopo_fast.evaluation.checks import FAILED, MET
from iopo_fast.evaluation.judge import UNJUDGED, ConstraintJudge, Judge, JudgeError, load_judge_prompt, parse_verdict
from iopo_fast.evaluation.trace_judge import TraceJudge
from iopo_fast.evaluation.run import evaluate_model
from iopo_fast.generation.settings import GenerationSettings

# The embedded 135M model rarely ends with "Verdict: ..." but opens with "No, ..." to this question.
SMALL_MODEL_PROMPT = ('Is it true that the text "{response}" meets the requirement "{constraint}" of the '
                      'instruction "{instruction}"? Answer yes or no.')


def trace_record(record_id: str, task: str, constraints: list[str], types: list[str], task_input: str = "NULL"):
    """A record in the format of TRACE's released evaluation file (202409_trace_evaluation.jsonl)."""
    numbered = [f"{number}. {text}" for number, text in enumerate(constraints, start=1)]
    user = "\n".join([task, *numbered]) + ("" if task_input == "NULL" else f"\n# Inputs:\n{task_input}") + "\n"
    return {"id": record_id, "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                          {"role": "user", "content": user}],
            "type": "trace", "description": task, "constraints": "\n".join(numbered), "input": task_input,
            "constraints_num": len(constraints), "constraints_splits": numbered, "levels2": types,
            "category": "trace1.0"}


TRACE_RECORDS = [
    trace_record("0", "Write a short description of a song.", ["Use a poetic tone;", "Mention the band's name;"],
                 ["tone", "inclusion"], '"Hotel California" by the Eagles.'),
    trace_record("1", "Name a fruit.", ["Answer in one word;"], ["length"]),
    trace_record("2", "Greet a new colleague.", ["Write in lowercase;", "Use at most ten words;"],
                 ["format", "length"]),
]
RESPONSES = {"0": "The Eagles' Hotel California glows like a desert moon.", "1": "Banana", "2": ""}
# See tests/fixtures/README.md.
RELEASED_TRACE_SAMPLE = Path(__file__).parents[1] / "fixtures" / "trace_evaluation_sample.jsonl"


class FixedResponses:
    """Stands in for the model under evaluation (the judge is what is tested): a set answer per prompt."""

    backend = "fixed responses"
    built = 0

    def __init__(self, model, settings):
        type(self).built += 1

    def __call__(self, prompts, max_new_tokens):
        by_prompt = {record["messages"][1]["content"]: RESPONSES[record["id"]] for record in TRACE_RECORDS}
        return [by_prompt[prompt] for prompt in prompts]


def small_model_judge(url: str, model: str, tmp_path: Path, **settings) -> Judge:
    prompt = tmp_path / "judge-prompt.txt"
    prompt.write_text(SMALL_MODEL_PROMPT)
    return ConstraintJudge.with_prompt_file(EndpointSettings(url, model, max_tokens=8, concurrency=3, **settings), prompt)


def judged_checks(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "responses.jsonl").read_text().splitlines()]
    return [check for row in rows for check in row["checks"]]


@pytest.mark.parametrize("answer, verdict", [
    ("The response is poetic.\nVerdict: YES", MET), ("Verdict: no", FAILED), ("**Verdict:** Yes", MET),
    ("Verdict: YES\nOn reflection, no.\nVerdict: NO", FAILED), ("Yes.", MET), ("No", FAILED),
    ("No, the text does not mention it", FAILED), ("No doubt it is poetic.", UNJUDGED),
    ("1 is not an even number.", UNJUDGED), ("yesterday", UNJUDGED), ("", UNJUDGED),
    ("**Verdict**: **YES**", MET), ("Final verdict:\n\n**NO**", FAILED),
    ("<think>Verdict: YES? Not quite.</think>\nVerdict: NO", FAILED), ("<think>cut off here. Verdict: YES", UNJUDGED),
])
def test_verdicts_are_read_from_the_judges_answer(answer, verdict):
    assert parse_verdict(answer) == verdict


def test_trace_evaluation_file_and_our_format_are_read(tmp_path):
    items = load_benchmark(f"judge:{write_lines(tmp_path / 'trace.jsonl', TRACE_RECORDS)}")
    assert [item.key for item in items] == ["0", "1", "2"]
    assert items[0].prompt == TRACE_RECORDS[0]["messages"][1]["content"] and not items[0].checks
    assert [(c.text, c.id) for c in items[0].judged] == [("1. Use a poetic tone;", "judge:tone"),
                                                         ("2. Mention the band's name;", "judge:inclusion")]
    ours = {"key": "q", "prompt": "Say hi.", "constraints": ["Be brief."]}
    [item] = load_benchmark(f"judge:{write_lines(tmp_path / 'ours.jsonl', [ours])}")
    assert (item.key, item.prompt, [c.id for c in item.judged]) == ("q", "Say hi.", ["judge:constraint"])

    no_user = {**TRACE_RECORDS[0], "messages": TRACE_RECORDS[0]["messages"][:1]}
    cases = [
        ({**ours, "constraints": []}, "needs its constraints as a non-empty list"),
        ({**ours, "constraints": ["ok", " "]}, "needs its constraints as a non-empty list"),
        ({**ours, "constraint_types": ["a", "b"]}, "the constraint types must be as many strings as the constraints"),
        ({**TRACE_RECORDS[0], "levels2": ["tone"]}, "the constraint types must be as many strings as the constraints"),
        (no_user, "no prompt"),
        ([1, 2], "not a JSON object"),
    ]
    for record, message in cases:
        path = write_lines(tmp_path / "bad.jsonl", [TRACE_RECORDS[1], record])
        with pytest.raises(BenchmarkError, match=f"^{path}:2: {message}"):
            load_benchmark(f"judge:{path}")
    with pytest.raises(BenchmarkError, match=f"^{path}:2: key '1' is used twice"):
        load_benchmark(f"judge:{write_lines(path, [TRACE_RECORDS[1], TRACE_RECORDS[1]])}")


def test_trace_evaluation_file_as_released_is_read():
    records = [json.loads(line) for line in RELEASED_TRACE_SAMPLE.read_text(encoding="utf-8").splitlines()]
    items = load_benchmark(f"judge:{RELEASED_TRACE_SAMPLE}")
    assert [item.key for item in items] == [record["id"] for record in records]
    for item, record in zip(items, records):
        assert item.prompt == record["messages"][1]["content"] and len(item.judged) == record["constraints_num"]
        assert [(c.text, c.type) for c in item.judged] == list(zip(record["constraints_splits"], record["levels2"]))


def test_refused_and_empty_answers_are_failures_asked_again_and_identical_requests_are_sent_once(tmp_path, monkeypatch):
    def answer(message):
        if message == "too long":
            return httpx2.Response(400, json={"error": {"message": "the context is too long"}})
        return completion(None if message == "silent" else "Verdict: YES")

    sent = scripted_endpoint(monkeypatch, answer)
    settings = EndpointSettings("http://judge.test/v1", "judge")
    conversations = [[{"role": "user", "content": text}] for text in ("fine", "too long", "silent", "fine")]

    answers = CachedChat(settings, tmp_path / "cache.jsonl").answers(conversations)

    assert [answer.text for answer in answers] == ["Verdict: YES", None, None, "Verdict: YES"]
    assert answers[1].error.startswith("HTTP 400") and answers[2].error == "the endpoint answered with no message text"
    assert sorted(sent) == ["Reply with OK.", "fine", "silent", "too long"]  # the check, then each request once
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 1
    sent.clear()
    CachedChat(settings, tmp_path / "cache.jsonl").answers(conversations)
    assert sorted(sent) == ["Reply with OK.", "silent", "too long"]


@pytest.mark.parametrize("status, message", [
    (401, "the API key was refused (HTTP 401); set it in $OPENAI_API_KEY"), (404, "no model 'judge' there"),
    (400, "a one-token request to 'judge' was refused (HTTP 400"),
])
def test_an_endpoint_that_refuses_the_key_model_or_settings_is_one_error(tmp_path, monkeypatch, status, message):
    scripted_endpoint(monkeypatch, lambda _: httpx2.Response(status, json={"error": {"message": "refused"}}))
    chat = CachedChat(EndpointSettings("http://judge.test/v1", "judge"), tmp_path / "cache.jsonl")
    with pytest.raises(EndpointError, match=f"^http://judge.test/v1: {re.escape(message)}"):
        chat.answers([[{"role": "user", "content": "first"}]])


def test_a_key_refused_during_the_run_stops_it_and_keeps_the_answers_so_far(tmp_path, monkeypatch):
    scripted_endpoint(monkeypatch, lambda message: httpx2.Response(401) if message == "second" else completion("No."))
    chat = CachedChat(EndpointSettings("http://judge.test/v1", "judge", concurrency=1), tmp_path / "cache.jsonl")
    with pytest.raises(EndpointError, match="the API key was refused"):
        chat.answers([[{"role": "user", "content": text}] for text in ("first", "second", "third")])
    [line] = (tmp_path / "cache.jsonl").read_text().splitlines()
    assert json.loads(line)["answer"] == "No."


def test_a_cache_cut_inside_a_character_loses_only_that_line(tmp_path, monkeypatch):
    sent = scripted_endpoint(monkeypatch, lambda message: completion(f"Verdict: YES — {message}"))
    settings = EndpointSettings("http://judge.test/v1", "judge")
    conversations = [[{"role": "user", "content": text}] for text in ("one", "two")]
    CachedChat(settings, tmp_path / "cache.jsonl").answers(conversations)
    data = (tmp_path / "cache.jsonl").read_bytes()
    (tmp_path / "cache.jsonl").write_bytes(data[:data.rindex("—".encode()) + 1])  # killed inside the dash's bytes
    sent.clear()
    answers = CachedChat(settings, tmp_path / "cache.jsonl").answers(conversations)
    assert [answer.text for answer in answers] == ["Verdict: YES — one", "Verdict: YES — two"]
    assert len(sent) == 2 and len((tmp_path / "cache.jsonl").read_text(encoding="utf-8").splitlines()) == 2


@pytest.mark.parametrize("protocol, missing", [(ConstraintJudge, r"\{constraint\}"), (TraceJudge, r"\{constraints\}")])
def test_judge_prompt_file_must_hold_every_placeholder(tmp_path, protocol: type[Judge], missing: str):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Does {response} meet it? {instruction}")
    settings = EndpointSettings("http://judge.test/v1", "judge")
    with pytest.raises(JudgeError, match=rf"prompt.txt: the judge prompt must contain {missing}"):
        protocol.with_prompt_file(settings, prompt)
    with pytest.raises(JudgeError, match="missing.txt: No such file"):
        load_judge_prompt(tmp_path / "missing.txt", protocol.PLACEHOLDERS)


def test_every_constraint_judged_by_a_local_server_cached_and_resumed_after_a_kill(tmp_path, chat_server):
    url, model, log = chat_server
    benchmark = f"judge:{write_lines(tmp_path / 'trace.jsonl', TRACE_RECORDS)}"
    judge = small_model_judge(url, model, tmp_path)
    output = tmp_path / "out"
    served = completions_served(log)

    results = evaluate_model("fixed", [benchmark], output, GenerationSettings(), make_generator=FixedResponses,
                             judge=judge)

    checks = judged_checks(output / "trace")
    assert [check["id"] for check in checks] == ["judge:tone", "judge:inclusion", "judge:length", "judge:format",
                                                 "judge:length"]
    assert [check["constraint"] for check in checks[:2]] == ["1. Use a poetic tone;", "2. Mention the band's name;"]
    asked = checks[:3]  # the last record's response is empty: it meets nothing, and nothing is asked
    # The three constraints with a response, after one-token checks that the judge is up: before the
    # generation, and before the judging.
    assert completions_served(log) - served == 3 + 2
    assert [(check["strict"], check["judge_answer"]) for check in checks[3:]] == [(FAILED, "empty response")] * 2
    assert all(check["strict"] == check["loose"] == parse_verdict(check["judge_answer"]) for check in asked)
    assert any(check["strict"] in (MET, FAILED) for check in asked)  # the server gave real verdicts
    summary = json.loads((output / "trace" / "summary.json").read_text())
    assert summary["judge"]["model"] == model and len(summary["judge"]["prompt_sha256"]) == 16
    assert summary["summary"]["strict"] == json.loads(json.dumps(results["trace"]["strict"]))
    cache = output / "trace" / "judge-cache.jsonl"
    assert len(cache.read_text().splitlines()) == 3

    evaluate_model("fixed", [benchmark], output, GenerationSettings(), make_generator=FixedResponses, judge=judge)
    assert completions_served(log) - served == 5  # a rerun asks nothing again, nor checks
    assert judged_checks(output / "trace") == checks

    kept = cache.read_text().splitlines()[:1]
    cache.write_text("\n".join(kept) + '\n{"key": "5f1e", "ans')  # killed while writing the second answer
    evaluate_model("fixed", [benchmark], output, GenerationSettings(), make_generator=FixedResponses, judge=judge)
    assert completions_served(log) - served == 5 + 1 + 2  # a check, then only the two answers that were lost
    assert judged_checks(output / "trace") == checks
    lines = cache.read_text().splitlines()
    assert lines[0] == kept[0] and len(lines) == 3 and all(json.loads(line)["answer"] for line in lines)


def test_requests_that_time_out_are_unjudged_and_asked_again(tmp_path, chat_server):
    url, model, _ = chat_server
    benchmark = f"judge:{write_lines(tmp_path / 'trace.jsonl', TRACE_RECORDS[:2])}"
    judge = small_model_judge(url, model, tmp_path, timeout=0.01, retries=0)

    results = evaluate_model("fixed", [benchmark], tmp_path / "out", GenerationSettings(),
                             make_generator=FixedResponses, judge=judge)

    checks = judged_checks(tmp_path / "out" / "trace")
    assert [check["strict"] for check in checks] == [UNJUDGED] * 3
    assert all(check["judge_answer"].startswith("APITimeoutError") for check in checks)
    summary = results["trace"]["strict"]
    assert summary["constraints_without_verdict"] == {UNJUDGED: 3} and summary["undecided_prompts"] == 2
    assert summary["prompt_level"]["count"] == 0 and summary["instruction_level"]["count"] == 0
    assert not (tmp_path / "out" / "trace" / "judge-cache.jsonl").exists()  # nothing cached: asked again

    evaluate_model("fixed", [benchmark], tmp_path / "out", GenerationSettings(), make_generator=FixedResponses,
                   judge=small_model_judge(url, model, tmp_path))
    assert all(check["judge_answer"] != checks[0]["judge_answer"] for check in judged_checks(tmp_path / "out" / "trace"))
    assert len((tmp_path / "out" / "trace" / "judge-cache.jsonl").read_text().splitlines()) == 3


def test_a_judge_that_is_down_stops_the_run_before_any_generation(tmp_path):
    closed_port = free_port()
    benchmark = f"judge:{write_lines(tmp_path / 'trace.jsonl', TRACE_RECORDS)}"
    judge = TraceJudge(EndpointSettings(f"http://127.0.0.1:{closed_port}/v1", "judge", retries=1))
    FixedResponses.built = 0
    with pytest.raises(EndpointError, match=f"^http://127.0.0.1:{closed_port}/v1: the endpoint cannot be reached"):
        evaluate_model("fixed", [benchmark], tmp_path / "out", GenerationSettings(), make_generator=FixedResponses,
                       judge=judge)
    assert FixedResponses.built == 0


def test_cli_judges_a_trace_file_and_errors_are_one_line(tmp_path, tiny_model_dir, chat_server):
    url, model, _ = chat_server
    trace = write_lines(tmp_path / "trace.jsonl", TRACE_RECORDS[:2])
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(SMALL_MODEL_PROMPT)
    common = [str(tiny_model_dir), "--benchmarks", f"judge:{trace}", "--output", str(tmp_path / "out"),
              "--max-new-tokens", "3"]

    result = run_cli(*common, "--judge-url", url, "--judge-model", model, "--judge-prompt", str(prompt),
                     "--judge-max-tokens", "8", "--judge-concurrency", "2", "--judge-protocol", "per-constraint")

    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "trace" / "summary.json").read_text())
    assert summary["summary"]["strict"]["constraints"] == 3 and summary["judge"]["concurrency"] == 2
    assert len(judged_checks(tmp_path / "out" / "trace")) == 3
    prompt.write_text("{instruction} {response}")
    cases = {
        (): "constraints in words need an LLM judge (--judge-url and --judge-model)",
        ("--judge-url", url): "--judge-url and --judge-model go together",
        ("--judge-url", url, "--judge-model", model, "--judge-prompt", str(prompt)): "must contain {constraints}",
    }
    for args, message in cases.items():
        result = run_cli(*common, *args)
        assert result.returncode == 2, result.stderr
        error = [line for line in result.stderr.splitlines() if line.startswith("iopo-fast: error:")]
        assert len(error) == 1 and message in error[0], result.stderr
