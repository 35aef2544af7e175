"""The group Bradley-Terry loss of IOPO and, with the same conventions, DPO (DESIGN.md, "The IOPO objective").

Both take per-sequence scores `s_k` in role order, `[B, 4]` for IOPO and `[B, 2]` for DPO, and
return per-example losses `[B]` and a dict of per-example metrics `[B]` (detached) that the caller
averages over whatever it aggregates: micro-batches, accumulation steps, ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")

# Role names and each role's sign in the margin z (DESIGN.md): IOPO z = d_0 + d_2 - d_1 - d_3,
# the group {(x1,y1), (x2,y2)} against {(x1,y2), (x2,y1)}; DPO z = d_w - d_l.
IOPO_ROLES = ("chosen_v1", "rejected_v1", "chosen_v2", "rejected_v2")
DPO_ROLES = ("chosen", "rejected")
_SIGNS = {4: (1.0, -1.0, 1.0, -1.0), 2: (1.0, -1.0)}


def iopo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor | None,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    ftx: float = 0.0,
    response_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IOPO loss per example from `[B, 4]` summed response log-probs; `reference_logps=None` is reference-free.

    `response_lengths` `[B, 4]` is needed by `loss_type="ipo"` (which scores mean log-probs) and `ftx > 0`.
    """
    losses, metrics, d = _preference_loss(
        policy_logps, reference_logps, beta, loss_type, label_smoothing, ftx, response_lengths, IOPO_ROLES
    )
    # Output preference: each instruction prefers its own response; input preference: each response
    # prefers its own instruction.
    metrics["accuracies/output_v1"] = (d[:, 0] > d[:, 1]).float()
    metrics["accuracies/output_v2"] = (d[:, 2] > d[:, 3]).float()
    metrics["accuracies/input_y1"] = (d[:, 0] > d[:, 3]).float()
    metrics["accuracies/input_y2"] = (d[:, 2] > d[:, 1]).float()
    return losses, metrics


def dpo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor | None,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    ftx: float = 0.0,
    response_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO loss per example from `[B, 2]` (chosen, rejected) summed log-probs; same conventions as `iopo_loss`."""
    losses, metrics, _ = _preference_loss(
        policy_logps, reference_logps, beta, loss_type, label_smoothing, ftx, response_lengths, DPO_ROLES
    )
    return losses, metrics


def _preference_loss(policy_logps, reference_logps, beta, loss_type, label_smoothing, ftx, response_lengths, roles):
    """Losses, metrics and the detached log-ratios d_k `[B, num_roles]` (in ipo: of mean log-probs)."""
    num_roles = len(roles)
    if policy_logps.dim() != 2 or policy_logps.shape[1] != num_roles:
        raise ValueError(f"expected log-probs of shape [B, {num_roles}], got {list(policy_logps.shape)}")
    if reference_logps is not None and reference_logps.shape != policy_logps.shape:
        raise ValueError(f"reference log-probs {list(reference_logps.shape)} != policy {list(policy_logps.shape)}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    if (loss_type == "ipo" or ftx > 0) and response_lengths is None:
        raise ValueError("response_lengths is required for loss_type='ipo' and for ftx > 0")

    policy = policy_logps.float()
    reference = torch.zeros_like(policy) if reference_logps is None else reference_logps.float().detach()
    d = policy - reference
    if loss_type == "ipo":  # IPO compares length-averaged log-probs, as the original does.
        d = d / response_lengths.to(d)
    z = d @ d.new_tensor(_SIGNS[num_roles])
    losses = _bradley_terry(z, beta, loss_type, label_smoothing)
    if ftx > 0:  # SFT term on the responses of the preferred roles: -(s_0/|y1|) - (s_2/|y2|) for IOPO.
        chosen = [k for k, name in enumerate(roles) if name.startswith("chosen")]
        losses = losses - ftx * (policy[:, chosen] / response_lengths[:, chosen].to(policy)).sum(-1)

    d = d.detach()
    metrics = {}
    for k, name in enumerate(roles):
        metrics[f"rewards/{name}"] = beta * d[:, k]
        metrics[f"logps/{name}"] = policy[:, k].detach()
    metrics["rewards/margin"] = beta * z.detach()
    metrics["accuracies/group" if num_roles == 4 else "accuracies/pair"] = (z > 0).float().detach()
    return losses, metrics, d


def _bradley_terry(z: torch.Tensor, beta: float, loss_type: str, eps: float) -> torch.Tensor:
    """The loss of a margin z under each loss type; eps is the label-smoothing rate."""
    if loss_type == "sigmoid":
        return -(1 - eps) * F.logsigmoid(beta * z) - eps * F.logsigmoid(-beta * z)
    if loss_type == "robust":  # Chowdhury et al. 2024, unbiased under label noise of rate eps.
        return (-(1 - eps) * F.logsigmoid(beta * z) + eps * F.logsigmoid(-beta * z)) / (1 - 2 * eps)
    if loss_type == "hinge":
        return torch.relu(1 - beta * z)
    return (z - 1 / (2 * beta)) ** 2  # ipo
