"""Examples as token ids: what each role of a loss mode is, and how the roles share prompts.

An IOPO example is scored on four (prompt, response) sequences in the role order of DESIGN.md
("The IOPO objective"): (x1, y1), (x1, y2), (x2, y2), (x2, y1). A DPO example on two: (x, y_w),
(x, y_l). An SFT example on one: (x, y). The objective's `pairs` are the one definition of those
sequences; `shared_prompts()` groups the roles that share a prompt, which the shared-prefix layout
(`iopo_fast.model.packing`) lays out once per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..loss import DPO, IOPO, SFT, Objective

# A shared prompt: a prompt and the responses that follow it, each with its role, which the shared-prefix
# layout lays out as [prompt | first | second ...] ("pack A" and "pack B" of DESIGN.md, "Packing layout").
SharedPrompt = tuple[list[int], tuple[tuple[list[int], int], ...]]


class _Roles:
    """The sequences of an example's roles, as its objective's `pairs` define them."""

    objective: Objective
    prompts: tuple[list[int], ...]
    responses: tuple[list[int], ...]

    def sequences(self) -> list[tuple[list[int], list[int]]]:
        """The (prompt, response) pair of each role, in role order."""
        return [(self.prompts[prompt], self.responses[response]) for prompt, response in self.objective.pairs]

    def shared_prompts(self) -> list[SharedPrompt]:
        """(prompt, ((response, role), ...)) per prompt: the roles that share it, in role order."""
        by_prompt: dict[int, list[tuple[list[int], int]]] = {}
        for role, (prompt, response) in enumerate(self.objective.pairs):
            by_prompt.setdefault(prompt, []).append((self.responses[response], role))
        return [(self.prompts[prompt], tuple(responses)) for prompt, responses in by_prompt.items()]


@dataclass(frozen=True)
class IOPOExample(_Roles):
    """Token ids of one IOPO quadruple: y1 follows x1's constraints, y2 follows x2's."""

    prompt1: list[int]
    prompt2: list[int]
    response1: list[int]
    response2: list[int]

    objective = IOPO

    @property
    def prompts(self) -> tuple[list[int], ...]:
        return self.prompt1, self.prompt2

    @property
    def responses(self) -> tuple[list[int], ...]:
        return self.response1, self.response2


@dataclass(frozen=True)
class DPOExample(_Roles):
    """Token ids of one DPO pair: `chosen` is preferred over `rejected` for `prompt`."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    objective = DPO

    @property
    def prompts(self) -> tuple[list[int], ...]:
        return (self.prompt,)

    @property
    def responses(self) -> tuple[list[int], ...]:
        return self.chosen, self.rejected


@dataclass(frozen=True)
class SFTExample(_Roles):
    """Token ids of one SFT example: `response` follows `prompt`."""

    prompt: list[int]
    response: list[int]

    objective = SFT

    @property
    def prompts(self) -> tuple[list[int], ...]:
        return (self.prompt,)

    @property
    def responses(self) -> tuple[list[int], ...]:
        return (self.response,)


Example = IOPOExample | DPOExample | SFTExample


def packed_length(example: Example) -> int:
    """Tokens of `example` in the shared-prefix layout: P1 + P2 + 2 (L1 + L2) for IOPO."""
    return sum(len(prompt) + sum(len(response) for response, _ in responses) for prompt, responses in example.shared_prompts())


def unpacked_length(example: Example) -> int:
    """Tokens of the example's separate sequences: what a four-sequence (or two-sequence) batch holds."""
    return sum(len(prompt) + len(response) for prompt, response in example.sequences())
