"""Verdicts of `iopo_fast.evaluation.checks`: the same in every process, whatever the official checkers draw."""

from __future__ import annotations

import json
import string
import subprocess
import sys

from conftest import fresh_process_env

from iopo_fast.evaluation.checks import FAILED, MET

SPAN_PROMPT = ("The walls are solid but the stones are cracked and cold. The windows reflect the dead landscape before you "
               "with small plants growing on the walls. \n\nAdd a sentence to make this description of a house "
               "\"appealing\". It can be humurous or sarcastic. ")
# The official checkers replace these stated arguments by a random draw: a random letter, a random start index.
HASHES = ("keywords:letter_frequency", {"letter": "#", "let_frequency": 4, "let_relation": "at least"})  # IFEval's 1122
BANGS = ("keywords:letter_frequency", {"letter": "!", "let_frequency": 6, "let_relation": "at least"})  # IFEval's 1129
SPAN = ("repeat:repeat_span", {"prompt_to_repeat": SPAN_PROMPT, "n_start": 0, "n_end": 7})  # IFBench's 286
CONSTRAINTS = [
    HASHES, BANGS, SPAN,
    # An argument the official checker rejects, and draws: here from the seeded generator.
    ("keywords:letter_frequency", {"letter": "", "let_frequency": 6, "let_relation": "at least"}),
    # Decided by langdetect.
    ("language:response_language", {"language": "mr"}),
    ("change_case:english_lowercase", {}),
    # Ordinary ones.
    ("keywords:existence", {"keywords": ["stones"]}),
    ("punctuation:no_comma", {}),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5}),
    ("count:word_count_range", {"min_words": 3, "max_words": 8}),
]
# Devanagari word lists that unseeded langdetect reads as Marathi in about half its runs and as Nepali in the others.
BORDERLINE = ["गणपती सरकार", "समाज मोरया देश भाषा", "घर भाषा राष्ट्र", "छ महाराष्ट्र", "महाराष्ट्र भाषा र छ",
              "र छ मराठी विकास", "छ घर मराठी विकास"]
RESPONSES = [
    # One letter six times each: which of them a letter-frequency check meets shows which letter it counts.
    *(letter * 6 for letter in string.ascii_lowercase),
    "## Plan\n# One\n# Two", "A plan with no hash sign at all.", "Wow! Great! Yes! Really! Sure! Done!", "Only one!",
    "The walls are solid but the stones", "the walls are solid, but the stones are cracked and cold.",
    *BORDERLINE, "माझे नाव राहुल आहे आणि मी पुण्यात राहतो.",
]
VERDICTS = """
import json, sys
from iopo_fast.evaluation.checks import make_check
constraints, responses = json.load(sys.stdin)
checks = [make_check(instruction_id, kwargs, prompt="") for instruction_id, kwargs in constraints]
print(json.dumps([[check.verdicts(response) for response in responses] for check in checks]))
"""


def verdicts_in_fresh_processes(hash_seeds: tuple[str, ...]) -> list[list]:
    """Every (strict, loose) verdict of every constraint on every response, from one new process per hash seed."""
    cases = json.dumps([CONSTRAINTS, RESPONSES])
    processes = [subprocess.Popen([sys.executable, "-c", VERDICTS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env={**fresh_process_env(), "PYTHONHASHSEED": seed})
                 for seed in hash_seeds]
    outputs = [process.communicate(cases) for process in processes]
    assert all(process.returncode == 0 for process in processes), [stderr[-3000:] for _, stderr in outputs]
    return [json.loads(stdout) for stdout, _ in outputs]


def test_verdicts_are_the_same_in_every_process_and_count_what_the_prompt_names():
    """Two new processes, with different hash seeds, give every verdict alike; without the seeds and the kept
    arguments, the drawn letter, start index and langdetect's reading of a borderline text differ between them."""
    first, second = verdicts_in_fresh_processes(("1", "2"))
    for (instruction_id, kwargs), verdicts, again in zip(CONSTRAINTS, first, second):
        assert verdicts == again, (instruction_id, kwargs)

    def expected(meets):
        return [[MET, MET] if meets(response) else [FAILED, FAILED] for response in RESPONSES]

    assert first[CONSTRAINTS.index(HASHES)] == expected(lambda text: text.count("#") >= 4)
    assert first[CONSTRAINTS.index(BANGS)] == expected(lambda text: text.count("!") >= 6)
    assert first[CONSTRAINTS.index(SPAN)] == expected(lambda text: text == "The walls are solid but the stones")
