"""Micro-batches: the token-budget packer places every example once, none over budget, in few micro-batches."""

from __future__ import annotations

import math

import pytest
from conftest import random_iopo_examples

from iopo_fast.model.micro_batch_plan import fill_ratio, micro_batches, plan_micro_batches
from iopo_fast.data.examples import packed_length


def test_plan_respects_the_budget_and_places_every_example_once(generator):
    examples = random_iopo_examples(40, 50, generator)
    budget = 2 * max(packed_length(e) for e in examples)
    plan = plan_micro_batches(examples, budget)
    assert sorted(i for group in plan for i in group) == list(range(len(examples)))
    assert all(sum(packed_length(examples[i]) for i in group) <= budget for group in plan)
    total = sum(packed_length(e) for e in examples)
    lower_bound = math.ceil(total / budget)
    assert len(plan) <= math.ceil(11 / 9 * lower_bound) + 1  # first-fit decreasing's guarantee
    assert fill_ratio(examples, plan, budget) == pytest.approx(total / (len(plan) * budget))


def test_an_example_over_budget_is_an_error(generator):
    examples = random_iopo_examples(3, 50, generator)
    longest = max(packed_length(e) for e in examples)
    with pytest.raises(ValueError, match=f"takes {longest} tokens, over max_tokens_per_micro_batch={longest - 1}"):
        plan_micro_batches(examples, longest - 1)


def test_without_a_budget_micro_batches_are_consecutive_groups(generator):
    examples = random_iopo_examples(7, 50, generator)
    assert micro_batches(examples, 0, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    budget = max(packed_length(example) for example in examples)
    assert micro_batches(examples, budget, 3) == plan_micro_batches(examples, budget)
