"""The demo data's length checks at their boundaries: a limit of N words counts N words as within it."""

from __future__ import annotations

import pytest

from iopo_fast.evaluation.demo_constraints import Constraint, count_words

WORDS = "one two three four five six seven".split()


def words(count: int) -> str:
    return " ".join(WORDS[:count]) + "."


@pytest.mark.parametrize("kind, met_at, missed_at", [
    ("max_words", (4, 5), (6,)),
    ("min_words", (5, 6), (4,)),
    ("exact_words", (5,), (4, 6)),
])
def test_word_limits_at_their_boundary(kind, met_at, missed_at):
    constraint = Constraint(kind, (5,))
    assert count_words(words(5)) == 5
    assert all(constraint.check(words(count)) for count in met_at), constraint.describe()
    assert not any(constraint.check(words(count)) for count in missed_at), constraint.describe()
