"""`iopo_loss` and `dpo_loss` against the original formulas, written out independently here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iopo_fast import SFTLoss, dpo_loss, iopo_loss
from iopo_fast.loss import LOSS_TYPES


def original_iopo_loss(policy, reference, lengths, beta, loss_type, eps, ftx):
    """The original IOPO implementation's arithmetic (LLaMA-Factory style), per example."""
    if loss_type == "ipo":  # the original averages log-probs over the response for IPO
        policy, reference = policy / lengths, reference / lengths
    chosen_v1, rejected_v1, chosen_v2, rejected_v2 = (policy - reference).unbind(-1)
    logits = 0.5 * ((2 * chosen_v1 - rejected_v1 - rejected_v2) + (2 * chosen_v2 - rejected_v2 - rejected_v1))
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * logits) * (1 - eps) + F.logsigmoid(-beta * logits) * eps) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        losses = (logits - 1 / (2 * beta)) ** 2
    return losses


def random_scores(generator, batch=7, roles=4):
    policy = -50 * torch.rand(batch, roles, generator=generator, dtype=torch.float64) - 1
    reference = policy.detach() + torch.randn(batch, roles, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, 40, (batch, roles), generator=generator)
    return policy.requires_grad_(), reference, lengths


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("eps", [0.0, 0.15])
@pytest.mark.parametrize("reference_free", [False, True])
def test_iopo_loss_matches_original_formula(generator, loss_type, eps, reference_free):
    policy, reference, lengths = random_scores(generator)
    beta = 0.05 + float(torch.rand(1, generator=generator))
    losses, _ = iopo_loss(policy, None if reference_free else reference, beta, loss_type, eps, response_lengths=lengths)
    expected = original_iopo_loss(policy.float(), torch.zeros_like(reference).float() if reference_free else reference.float(),
                                  lengths.float(), beta, loss_type, eps, 0.0)
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(losses.sum(), policy)
    (expected_grad,) = torch.autograd.grad(expected.sum(), policy)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


# One IOPO example worked by hand: s = (-1, -2, -3, -4), reference 0, so d = s and z = d0 + d2 - d1 - d3 = 2;
# lengths (2, 1, 1, 2) for ipo and the SFT term: d / |y| = (-0.5, -2, -3, -2), z = 0.5; sft = 0.5 + 3 = 3.5.
# log(1 + e^-1) = 0.3132617, log(1 + e^1) = 1.3132617.
@pytest.mark.parametrize("settings, expected", [
    (dict(beta=0.5), 0.3132617),  # -log sigmoid(1)
    (dict(beta=0.5, label_smoothing=0.1), 0.4132617),  # 0.9 * 0.3132617 + 0.1 * 1.3132617
    (dict(beta=0.5, loss_type="robust", label_smoothing=0.1), 0.1882617),  # (0.9 * 0.3132617 - 0.1 * 1.3132617) / 0.8
    (dict(beta=0.25, loss_type="hinge"), 0.5),  # relu(1 - 0.5)
    (dict(beta=0.5, loss_type="hinge"), 0.0),  # relu(1 - 1)
    (dict(beta=0.5, loss_type="ipo"), 0.25),  # (0.5 - 1 / (2 * 0.5))^2
    (dict(beta=0.5, ftx=0.5), 2.0632617),  # 0.3132617 + 0.5 * 3.5
])
def test_iopo_loss_fixed_values(settings, expected):
    policy = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    losses, metrics = iopo_loss(policy, torch.zeros_like(policy), response_lengths=torch.tensor([[2, 1, 1, 2]]),
                                **settings)
    assert abs(float(losses) - expected) < 1e-6
    assert float(metrics["loss"]) == float(losses)


def test_dpo_loss_fixed_value():
    # d = (-1 + 2, -3 + 2) = (1, -1): z = 2, beta z = 1.
    losses, metrics = dpo_loss(torch.tensor([[-1.0, -3.0]]), torch.tensor([[-2.0, -2.0]]), beta=0.5)
    assert abs(float(losses) - 0.3132617) < 1e-6
    assert float(metrics["accuracies/pair"]) == 1.0 and abs(float(metrics["rewards/margin"]) - 1.0) < 1e-6


def test_ftx_adds_sft_on_preferred_responses(generator):
    policy, reference, lengths = random_scores(generator)
    gamma = 0.7
    with_sft, _ = iopo_loss(policy, reference, 0.1, ftx=gamma, response_lengths=lengths)
    without, _ = iopo_loss(policy, reference, 0.1, response_lengths=lengths)
    sft = -(policy[:, 0] / lengths[:, 0]) - (policy[:, 2] / lengths[:, 2])
    torch.testing.assert_close(with_sft, without + gamma * sft.float(), rtol=1e-5, atol=1e-6)


def test_group_margin_is_the_bradley_terry_comparison_of_the_two_groups(generator):
    policy, reference, _ = random_scores(generator)
    beta = 0.3
    _, metrics = iopo_loss(policy, reference, beta)
    d = (policy - reference).detach().float()
    z = d[:, 0] + d[:, 2] - d[:, 1] - d[:, 3]
    torch.testing.assert_close(metrics["rewards/margin"], beta * z)
    torch.testing.assert_close(metrics["accuracies/group"], (z > 0).float())
    torch.testing.assert_close(metrics["accuracies/output_v1"], (d[:, 0] > d[:, 1]).float())
    torch.testing.assert_close(metrics["accuracies/output_v2"], (d[:, 2] > d[:, 3]).float())
    torch.testing.assert_close(metrics["accuracies/input_y1"], (d[:, 0] > d[:, 3]).float())
    torch.testing.assert_close(metrics["accuracies/input_y2"], (d[:, 2] > d[:, 1]).float())
    for k, role in enumerate(("chosen_v1", "rejected_v1", "chosen_v2", "rejected_v2")):
        torch.testing.assert_close(metrics[f"rewards/{role}"], beta * d[:, k])
        torch.testing.assert_close(metrics[f"logps/{role}"], policy[:, k].detach().float())
    assert all(not value.requires_grad for value in metrics.values())


def test_reference_gets_no_gradient(generator):
    policy, reference, _ = random_scores(generator)
    reference.requires_grad_()
    losses, _ = iopo_loss(policy, reference)
    losses.sum().backward()
    assert reference.grad is None and policy.grad is not None


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_loss_matches_dpo_formula(generator, eps):
    policy, reference, lengths = random_scores(generator, roles=2)
    beta = 0.2
    losses, metrics = dpo_loss(policy, reference, beta, label_smoothing=eps)
    logits = (policy[:, 0] - policy[:, 1]) - (reference[:, 0] - reference[:, 1])
    expected = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    torch.testing.assert_close(losses, expected.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["accuracies/pair"], (logits > 0).float().detach())


def test_ipo_without_lengths_is_an_error(generator):
    policy, reference, _ = random_scores(generator)
    with pytest.raises(ValueError, match="response_lengths is required"):
        iopo_loss(policy, reference, loss_type="ipo")


def test_wrong_shape_is_an_error(generator):
    policy, reference, _ = random_scores(generator, roles=2)
    with pytest.raises(ValueError, match=r"shape \[B, 4\]"):
        iopo_loss(policy, reference)


def test_sft_loss_is_the_negative_log_likelihood_per_response_token(generator):
    policy = torch.randn(5, 1, generator=generator, requires_grad=True)
    lengths = torch.randint(1, 30, (5, 1), generator=generator)
    losses, metrics = SFTLoss()(policy, None, lengths)
    torch.testing.assert_close(losses, -policy[:, 0] / lengths[:, 0])
    (gradient,) = torch.autograd.grad(losses.sum(), policy)
    torch.testing.assert_close(gradient, -1 / lengths.float())
    assert metrics.keys() == {"loss", "logps/response"} and not metrics["loss"].requires_grad
    with pytest.raises(ValueError, match="takes no reference"):
        SFTLoss()(policy, policy.detach(), lengths)
    with pytest.raises(ValueError, match=r"shape \[B, 1\]"):
        SFTLoss()(policy.expand(5, 2), None, lengths)
    with pytest.raises(ValueError, match="response_lengths is required"):
        SFTLoss()(policy, None)
