"""The family of answers that ignore the task, and the floor it sets under a score."""

from __future__ import annotations

from iopo_fast.evaluation.benchmarks import EvalItem
from iopo_fast.evaluation.checks import make_check
from iopo_fast.evaluation.report import format_family_floor
from iopo_fast.evaluation.run import trivial_floors
from iopo_fast.evaluation.trivial_answers import CASINGS, TRIVIAL_ANSWERS, TRIVIAL_FAMILY

PROMPT = 'Write a short poem about the "Northern Lights". Include the keywords "aurora" and \'sky\'. Keep it brief.'


def test_the_named_answers_are_members_of_the_family():
    assert len(TRIVIAL_FAMILY) == 94  # as the results files say, and the docs render from them
    for name, respond in TRIVIAL_ANSWERS.items():
        assert TRIVIAL_FAMILY[name](PROMPT) == respond(PROMPT)


def test_members_answer_by_a_rule_of_the_prompt_in_every_casing():
    answers = {name: respond(PROMPT) for name, respond in TRIVIAL_FAMILY.items()}
    assert answers["quoted phrases"] == "Northern Lights\naurora\nsky"
    assert answers["quoted phrases upper"] == "NORTHERN LIGHTS\nAURORA\nSKY"
    assert answers["echo lower"] == PROMPT.lower() and answers["echo title"] == PROMPT.title()
    assert answers["echo's first sentence"] == 'Write a short poem about the "Northern Lights".'
    assert (answers["first word"], answers["last word"], answers["longest word"]) == ("Write", "brief", "Northern")
    assert answers["letter q"] == "q" and answers["letter Q"] == "Q" and answers["yes upper"] == "YES"
    for name in ("echo", "generic", "quoted phrases", "ok", "longest word"):
        assert all(f"{name} {casing}".strip() in TRIVIAL_FAMILY for casing in CASINGS)
    assert TRIVIAL_FAMILY["last word"]("") == "" and TRIVIAL_FAMILY["quoted phrases"]("no quotes") == ""


def item(key: str, prompt: str, *checks: tuple[str, dict]) -> EvalItem:
    return EvalItem(key, prompt, tuple(make_check(name, kwargs, prompt) for name, kwargs in checks))


def test_the_family_floor_is_its_best_member_in_each_mode_and_level():
    items = [
        # Met by any answer in capitals: every UPPER member, and the capital letters.
        item("1", "Shout it.", ("change_case:english_capital", {})),
        # Met by the quoted phrases alone (and, loosely, by answers that hold the word in a line).
        item("2", 'Say "hello" in lowercase.', ("keywords:existence", {"keywords": ["hello"]}),
             ("change_case:english_lowercase", {})),
        # Met by nothing the family says: a response of at least 300 words.
        item("3", "Write an essay.", ("length_constraints:number_words", {"num_words": 300, "relation": "at least"})),
    ]
    named, family = trivial_floors(items)
    assert set(named) == set(TRIVIAL_ANSWERS) and named["empty"]["strict"]["prompt_level"]["accuracy"] == 0.0
    assert family["members"] == len(TRIVIAL_FAMILY)
    for mode in ("strict", "loose"):
        # No member meets both prompt 1 (capitals) and prompt 2 (lowercase): one prompt in three at most.
        assert family[mode]["prompt_level"]["accuracy"] == 1 / 3
        assert family[mode]["instruction_level"]["accuracy"] == 2 / 4
    # The first member to reach it, in the family's order: a capital letter that langdetect reads as English.
    assert family["strict"]["prompt_level"]["member"] == "letter C"
    assert family["strict"]["instruction_level"]["member"] == "echo lower"  # both of prompt 2's
    line = format_family_floor(family)
    assert line.startswith(f"floor, the highest of {len(TRIVIAL_FAMILY)} trivial answers: strict prompt-level 33.3")
