"""TRACE's judging protocol (`trace_judge`): the answer's scores read or refused, the whole path against a
deterministic judge (IF-S, IF-M, the taxonomy's types and dimensions, the evaluation code's overall-score rule,
the cache), against the embedded model behind `transformers serve`, and the taxonomy file."""

from __future__ import annotations

import json
import re

import pytest
from conftest import completion, scripted_endpoint, write_lines
from test_judge import RELEASED_TRACE_SAMPLE, judged_checks, trace_record

from iopo_fast.endpoints.client import EndpointSettings
from iopo_fast.evaluation.checks import FAILED, MET
from iopo_fast.evaluation.judge import UNJUDGED, JudgedConstraint
from iopo_fast.evaluation.run import evaluate_model
from iopo_fast.evaluation.taxonomy import DEFAULT_TAXONOMY, TaxonomyError, load_taxonomy
from iopo_fast.evaluation.trace_judge import TraceJudge, numbered, read_scores
from iopo_fast.generation.settings import GenerationSettings

# The dimensions' labels in TRACE's released evaluation file (levels2), all 26 that it uses for more than one
# constraint (it also holds one 输入格式约束 and one "·").
TRACE_LABELS = {
    "主题约束", "排除约束", "包含约束", "价值观约束", "隐私约束", "数值约束", "角色扮演约束", "受众目标约束", "先验条件约束",
    "自然语言流程背景信息约束", "markdown流程背景信息约束", "表格背景信息约束", "文本背景信息约束", "语气风格约束", "情感情绪约束",
    "语言特征约束", "多语言约束", "输出格式约束", "文本样式约束", "语法结构约束", "引用和参考约束", "编号和列表约束",
    "层次化结构约束", "模版约束", "正例约束", "负例约束",
}

PAPER_FORMAT = 'Explanation: ...\nFine Grained Score: [{"Keep it calm": 10, "Mention waves": 0}]\n' \
               'Constraints Overall Score: [[5]]'


@pytest.mark.parametrize("answer, scores, overall, problem", [
    (PAPER_FORMAT, [10, 0], 5, None),
    ('Fine Grained Score: {"a": 10, "b": 10}\nConstraints Overall Score: [[10]]', [10, 10], 10, None),
    ("Fine grained scores: [7, 10.0]", [7, 10], None, None),
    ('Fine Grained Score:\n```json\n[{"a": "10"}, {"b": 9}]\n```\nConstraints Overall Score: [[9.5]]', [10, 9], 9.5, None),
    ('Fine Grained Score: [{"same": 10, "same": 3}]', [10, 3], None, None),  # two constraints named alike
    ('Fine Grained Score: [{"a": 3, "b": 3}]\nOn reflection:\nFine Grained Score: [{"a": 10, "b": 10}]', [10, 10],
     None, None),
    ('<think>Fine Grained Score: [10, 10]</think>\nFine Grained Score: [0, 10]', [0, 10], None, None),
    ('Fine Grained Score: [{"Use the word "eco"": 10, "b": 0}]', [10, 0], None, None),  # a quote inside a key
    ("Fine Grained Score: [{'a': 10, 'b': 3,}]\nConstraints Overall Score: [[6]]", [10, 3], 6, None),
    ('Fine Grained Score:\nHere are the scores:\n```json\n{"1": 10, "2": "10/10"}\n```', [10, 10], None, None),
    ('Fine Grained Score (JSON): [10, 0]\nNote: the fine grained scores above are strict.', [10, 0], None, None),
    ('{"fine_grained_scores": {"1": 0, "2": 10}, "overall": 5}', [0, 10], None, None),
    ('Fine Grained Score: [9, 10]\nOverall score: 9/10', [9, 10], 9, None),
    ('Fine Grained Score: [{"a": 10}]\nConstraints Overall Score: [[10]]', None, 10, "1 fine-grained scores for 2"),
    ("Fine Grained Score: [10, 10, 10]", None, None, "3 fine-grained scores for 2"),
    ('Fine Grained Score: [{"a": 11, "b": 10}]', None, None, "not a number from 0 to 10"),
    ('Fine Grained Score: [{"a": "ten", "b": 10}]', None, None, "not a number from 0 to 10"),
    ('Fine Grained Score: [{"a": "11/10", "b": 10}]', None, None, "not a number from 0 to 10"),
    ('Fine Grained Score: [true, 10]', None, None, "not a number from 0 to 10"),
    ("Fine Grained Score: a: 10, b: 0", None, None, "not JSON"),
    ("Fine Grained Score: none given.\nConstraints Overall Score: [[2]] [10, 10]", None, 2, "not JSON"),
    ("Constraints Overall Score: [[3]]", None, 3, "no fine-grained scores"),
    ("Constraints Overall Score: [[12]]", None, None, "no fine-grained scores"),
    ("", None, None, "no fine-grained scores"),
])
def test_scores_are_read_by_position_and_anything_else_leaves_the_response_unjudged(answer, scores, overall, problem):
    judged = read_scores(answer, 2)
    assert judged.answer == answer and judged.overall == overall
    if problem is None:
        assert judged.problem is None and [judgment.score for judgment in judged.judgments] == scores
        assert [judgment.verdict for judgment in judged.judgments] == [MET if s == 10 else FAILED for s in scores]
    else:
        assert problem in judged.problem and [judgment.verdict for judgment in judged.judgments] == [UNJUDGED] * 2


def test_constraints_are_numbered_once():
    assert numbered((JudgedConstraint("1. Keep it calm;"), JudgedConstraint("2、提及海浪；"))) == "1. Keep it calm;\n2、提及海浪；"
    assert numbered((JudgedConstraint("Keep it calm"), JudgedConstraint("1.5 line spacing"))) == \
        "1. Keep it calm\n2. 1.5 line spacing"


RECORDS = [
    trace_record("s1", "Name a fruit.", ["Mention banana;"], ["包含约束"]),
    trace_record("s2", "Name a colour.", ["Mention teal;"], ["包含约束"]),
    trace_record("m1", "Describe the sea.", ["Keep it calm;", "Mention waves;"], ["语气风格约束", "包含约束"]),
    trace_record("m2", "Describe a harbour.", ["Be brief;", "Mention gulls;", "Write in English;"],
                 ["数值约束", "包含约束", "多语言约束"]),
    trace_record("m3", "Describe the night.", ["Mention stars;", "Mention moon;"], ["包含约束", "包含约束"]),
    trace_record("bad", "Describe a storm.", ["Mention thunder;", "Mention rain;"], ["包含约束", "包含约束"]),
    trace_record("empty", "Describe a field.", ["Mention grass;", "Mention sky;"], ["包含约束", "主题约束"]),
]
ANSWERS = {"s1": "Banana", "s2": "Red", "m1": "Calm waves roll in.", "m2": "Gulls cry.", "m3": "Stars!",
           "bad": "???", "empty": ""}
SECTIONS = re.compile(r"\[Constraints\]\n(.*)\n\n\[Response\]\n(.*)\Z", re.DOTALL)


def oracle(message: str):
    """A deterministic judge: a constraint scores 10 if its last word is in the response, else 0; the overall
    score is their mean, but 10 for a response with "!" (a judge whose two rules disagree); "???" gets an
    answer with no scores."""
    if message == "Reply with OK.":
        return completion("OK")
    constraints, response = SECTIONS.search(message).groups()
    if "???" in response:
        return completion("I cannot score this response.")
    scores = {line: 10 if re.findall(r"\w+", line)[-1].lower() in response.lower() else 0
              for line in constraints.splitlines()}
    overall = 10 if "!" in response else round(sum(scores.values()) / len(scores))
    return completion(f"Explanation: ...\nFine Grained Score: {json.dumps([scores])}\n"
                      f"Constraints Overall Score: [[{overall}]]")


class OracleResponses:
    backend = "fixed responses"

    def __init__(self, model, settings):
        pass

    def __call__(self, prompts, max_new_tokens):
        by_prompt = {record["messages"][1]["content"]: ANSWERS[record["id"]] for record in RECORDS}
        return [by_prompt[prompt] for prompt in prompts]


def test_every_response_scored_in_one_request_reported_as_the_paper_does_and_cached(tmp_path, monkeypatch):
    sent = scripted_endpoint(monkeypatch, oracle)
    benchmark = f"judge:{write_lines(tmp_path / 'trace.jsonl', RECORDS)}"
    judge = TraceJudge(EndpointSettings("http://judge.test/v1", "judge"))

    results = evaluate_model("fixed", [benchmark], tmp_path / "out", GenerationSettings(),
                             make_generator=OracleResponses, judge=judge)

    requests = [message for message in sent if message != "Reply with OK."]
    assert len(requests) == len(RECORDS) - 1  # one per response; the empty one is not sent
    assert "[Constraints]\n1. Be brief;\n2. Mention gulls;\n3. Write in English;\n\n[Response]\nGulls cry." in \
        "".join(requests)
    rows = {row["key"]: row for row in map(json.loads, (tmp_path / "out/trace/responses.jsonl").read_text().splitlines())}
    assert [check["score"] for check in rows["m2"]["checks"]] == [0, 10, 0]
    assert [check["strict"] for check in rows["m1"]["checks"]] == [MET, MET]
    assert rows["m3"]["judge_overall_score"] == 10 and rows["m3"]["judge_answer"].startswith("Explanation")
    assert rows["bad"]["judge_problem"] == "no fine-grained scores"
    assert rows["bad"]["judge_answer"] == "I cannot score this response."
    assert [check["strict"] for check in rows["bad"]["checks"]] == [UNJUDGED] * 2
    assert rows["empty"]["judge_answer"] == "empty response" and rows["empty"]["judge_overall_score"] == 0

    summary = results["trace"]["strict"]
    assert summary["prompt_level"]["accuracy"] == 2 / 6 and summary["undecided_prompts"] == 1  # s1, m1 of all but bad
    assert summary["prompt_level_single_constraint"]["accuracy"] == 1 / 2  # IF-S: s1 of s1, s2
    assert summary["prompt_level_multiple_constraints"]["accuracy"] == 1 / 4  # IF-M: m1 of m1, m2, m3, empty
    taxonomy = summary["taxonomy"]
    assert taxonomy["name"] == "TRACE" and taxonomy["placed"] == 13 and taxonomy["unplaced"] == 0
    assert list(taxonomy["types"]) == ["Content", "Style"]  # in the taxonomy's order
    assert taxonomy["dimensions"]["Inclusion"]["accuracy"] == 4 / 7  # banana, waves, gulls, stars of the 7 decided
    assert taxonomy["dimensions"]["Tone and Style"]["accuracy"] == 1.0
    assert taxonomy["types"]["Style"]["count"] == 2  # calm, and English (Multilingual)
    saved = json.loads((tmp_path / "out/trace/summary.json").read_text())
    assert saved["judge"]["protocol"] == "trace"
    # TRACE's evaluation code counts an overall score of 10: s1, m1 and m3 of the six with one; m3 scored 0 somewhere.
    rule = saved["overall_score_rule"]
    assert rule["accuracy"] == 3 / 6 and rule["responses_without_overall_score"] == 1
    assert rule["disagreements_with_every_constraint_met"] == 1

    sent.clear()
    evaluate_model("fixed", [benchmark], tmp_path / "out", GenerationSettings(), make_generator=OracleResponses,
                   judge=judge)
    assert sent == []  # every answer, the unreadable one too, comes from the cache


def test_the_released_files_labels_are_placed_in_the_papers_types(tmp_path, monkeypatch):
    scripted_endpoint(monkeypatch, oracle)
    records = [json.loads(line) for line in RELEASED_TRACE_SAMPLE.read_text(encoding="utf-8").splitlines()]

    class Echo:
        backend = "echo"

        def __init__(self, model, settings):
            pass

        def __call__(self, prompts, max_new_tokens):
            return prompts

    results = evaluate_model("echo", [f"judge:{RELEASED_TRACE_SAMPLE}"], tmp_path / "out", GenerationSettings(),
                             make_generator=Echo, judge=TraceJudge(EndpointSettings("http://judge.test/v1", "judge")))

    taxonomy = results["trace_evaluation_sample"]["strict"]["taxonomy"]
    assert taxonomy["unplaced"] == 0 and taxonomy["placed"] == sum(len(record["levels2"]) for record in records)
    assert set(taxonomy["types"]) == {"Content", "Style", "Format"}


def test_the_protocol_against_the_embedded_model_keeps_what_it_cannot_read(tmp_path, chat_server):
    url, model, _ = chat_server
    benchmark = f"judge:{write_lines(tmp_path / 'trace.jsonl', RECORDS[2:4])}"
    judge = TraceJudge(EndpointSettings(url, model, max_tokens=24, concurrency=2))

    results = evaluate_model("fixed", [benchmark], tmp_path / "out", GenerationSettings(),
                             make_generator=OracleResponses, judge=judge)

    rows = [json.loads(line) for line in (tmp_path / "out/trace/responses.jsonl").read_text().splitlines()]
    assert all(isinstance(row["judge_answer"], str) and row["judge_answer"] for row in rows)  # its answers, kept
    # A 135M model rarely answers in the format: whatever it said is a verdict for every constraint or for none.
    for row in rows:
        verdicts = {check["strict"] for check in row["checks"]}
        assert verdicts == {UNJUDGED} if "judge_problem" in row else verdicts <= {MET, FAILED}
    summary = results["trace"]["strict"]
    assert sum(summary["constraints_without_verdict"].values()) == sum(
        len(row["checks"]) for row in rows if "judge_problem" in row)
    assert len(judged_checks(tmp_path / "out" / "trace")) == 5


def test_the_taxonomy_is_read_without_the_benchmarks_packages(monkeypatch):
    from iopo_fast.evaluation import offline_resources

    def missing(instruction_id):
        raise offline_resources.MissingEvaluationPackage("IFBench's checkers need ifbench")

    monkeypatch.setattr(offline_resources, "checker_class", missing)  # a demo-only install
    assert len(load_taxonomy().dimensions) == 26


def test_the_taxonomy_has_the_papers_types_and_every_dimension_of_traces_file():
    taxonomy = load_taxonomy()
    assert taxonomy.types == ("Content", "Situation", "Style", "Format", "Example")
    assert len(taxonomy.dimensions) == 26 and {dimension.trace_label for dimension in taxonomy.dimensions} == TRACE_LABELS
    assert taxonomy.classify("数值约束").name == "Numerical" and taxonomy.classify("tone and style").type == "Style"
    assert taxonomy.classify("keywords:forbidden_words").name == "Exclusion"
    assert taxonomy.classify("no such dimension") is None


@pytest.mark.parametrize("change, reason", [
    (lambda data: data["types"][1]["dimensions"][0]["checks"].append(
        {"id": "keywords:forbidden_words", "kwargs": {"forbidden_words": ["x"]}}),
     "'keywords:forbidden_words' belongs to two dimensions, 'Exclusion' and 'Role-playing'"),
    (lambda data: data["types"][0]["dimensions"][1]["checks"][0]["kwargs"].clear(),
     "dimension 'Exclusion': keywords:forbidden_words: arguments forbidden_words are missing"),
    (lambda data: data["types"][0]["dimensions"][0].update(trace_label="排除约束"), "belongs to two dimensions"),
    (lambda data: data["types"][0].pop("dimensions"), "missing 'dimensions'"),
    (lambda data: data["types"][0]["dimensions"][0].update(name=""), "every type and dimension needs a name"),
    (lambda data: data["types"][0]["dimensions"].append("Theme"), "a dimension is an object, got 'Theme'"),
    (lambda data: data["types"][0]["dimensions"][1]["checks"][0].update(kwargs=None), "keywords:forbidden_words"),
])
def test_a_taxonomy_file_that_cannot_be_used_is_one_error_naming_it(tmp_path, change, reason):
    data = json.loads(DEFAULT_TAXONOMY.read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / "taxonomy.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(TaxonomyError, match=f"^{re.escape(str(path))}: .*{re.escape(reason)}"):
        load_taxonomy(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(TaxonomyError, match=f"^{re.escape(str(path))}:1: invalid JSON"):
        load_taxonomy(path)
