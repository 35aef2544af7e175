"""Micro-batches filled to a token budget: the examples of a step, bin-packed by their packed length."""

from __future__ import annotations

from ..data.examples import Example, packed_length


def micro_batches(examples: list[Example], max_tokens: int, batch_size: int) -> list[list[int]]:
    """Index groups of a step's examples: bin-packed to `max_tokens` packed tokens when it is set (> 0),
    else consecutive groups of `batch_size` examples."""
    if max_tokens:
        return plan_micro_batches(examples, max_tokens)
    return [list(range(start, min(start + batch_size, len(examples)))) for start in range(0, len(examples), batch_size)]


def plan_micro_batches(examples: list[Example], max_tokens: int) -> list[list[int]]:
    """Indices of `examples` grouped into micro-batches of at most `max_tokens` packed tokens.

    First-fit decreasing: the longest example first, each into the first micro-batch with room. It
    uses at most 11/9 of the optimal number of micro-batches (plus one).
    """
    lengths = [packed_length(example) for example in examples]
    too_long = [i for i, length in enumerate(lengths) if length > max_tokens]
    if too_long:
        raise ValueError(f"an example takes {lengths[too_long[0]]} tokens, over max_tokens_per_micro_batch={max_tokens}")
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(examples)), key=lambda i: -lengths[i]):
        target = next((b for b, free in enumerate(room) if free >= lengths[index]), None)
        if target is None:
            bins.append([])
            room.append(max_tokens)
            target = len(bins) - 1
        bins[target].append(index)
        room[target] -= lengths[index]
    return [sorted(b) for b in bins]


def fill_ratio(examples: list[Example], plan: list[list[int]], max_tokens: int) -> float:
    """Packed tokens over the token budget of the micro-batches used."""
    return sum(packed_length(example) for example in examples) / (len(plan) * max_tokens)
