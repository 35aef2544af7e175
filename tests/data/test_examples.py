"""What each role of each loss mode is (DESIGN.md, "The IOPO objective"), pinned on concrete examples: its
(prompt, response) sequence, the shared prompt it is laid out under, and its sign in the margin z."""

from __future__ import annotations

import pytest
import torch

from iopo_fast import DPO, IOPO, SFT, DPOExample, IOPOExample, PreferenceLoss, SFTExample
from iopo_fast.data.examples import packed_length, unpacked_length

X1, X2, Y1, Y2 = [1], [2, 2], [3, 3, 3], [4, 4, 4, 4]


def test_iopo_roles_are_the_design_table():
    example = IOPOExample(X1, X2, Y1, Y2)
    # k: 0 (x1, y1) chosen_v1, 1 (x1, y2) rejected_v1, 2 (x2, y2) chosen_v2, 3 (x2, y1) rejected_v2.
    assert IOPO.roles == ("chosen_v1", "rejected_v1", "chosen_v2", "rejected_v2")
    assert example.sequences() == [(X1, Y1), (X1, Y2), (X2, Y2), (X2, Y1)]
    # [x1 | y1 | y2] and [x2 | y2 | y1].
    assert example.shared_prompts() == [(X1, ((Y1, 0), (Y2, 1))), (X2, ((Y2, 2), (Y1, 3)))]
    assert packed_length(example) == 1 + 2 + 2 * (3 + 4) and unpacked_length(example) == 2 * (1 + 2) + 2 * (3 + 4)


def test_dpo_and_sft_roles():
    assert DPOExample(X1, Y1, Y2).sequences() == [(X1, Y1), (X1, Y2)]
    assert DPOExample(X1, Y1, Y2).shared_prompts() == [(X1, ((Y1, 0), (Y2, 1)))]
    assert SFTExample(X1, Y1).sequences() == [(X1, Y1)] and SFTExample(X1, Y1).shared_prompts() == [(X1, ((Y1, 0),))]


@pytest.mark.parametrize("objective, signs", [(IOPO, (1, -1, 1, -1)), (DPO, (1, -1))])
def test_each_role_takes_its_sign_in_the_margin(objective, signs):
    """z = d_0 + d_2 - d_1 - d_3 for IOPO, d_w - d_l for DPO: raising one role's score moves the margin by its sign."""
    beta = 0.5
    loss = PreferenceLoss(objective, beta=beta)
    for role, sign in enumerate(signs):
        policy = torch.zeros(1, objective.num_roles)
        policy[0, role] = 2.0
        _, metrics = loss(policy, torch.zeros_like(policy))
        assert metrics["rewards/margin"].item() == pytest.approx(beta * 2.0 * sign), objective.roles[role]
        assert metrics[objective.accuracy].item() == (sign > 0)


def test_iopo_comparisons_and_the_sft_term_read_the_roles():
    """Output preference: each instruction prefers its own response (d_0 > d_1, d_2 > d_3); input preference:
    each response prefers its own instruction (d_0 > d_3, d_2 > d_1); the SFT term is on (x1, y1) and (x2, y2)."""
    assert IOPO.comparisons == {"accuracies/output_v1": (0, 1), "accuracies/output_v2": (2, 3),
                                "accuracies/input_y1": (0, 3), "accuracies/input_y2": (2, 1)}
    assert [IOPOExample(X1, X2, Y1, Y2).sequences()[k] for k in IOPO.preferred] == [(X1, Y1), (X2, Y2)]
    assert SFT.preferred == (0,) and DPO.preferred == (0,)
