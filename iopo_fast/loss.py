"""The group Bradley-Terry loss of IOPO and, with the same conventions, DPO (DESIGN.md, "The IOPO objective"),
and the SFT baseline's negative log-likelihood.

An `Objective` says, once, what the roles of a loss mode mean: their names in role order, the (prompt,
response) sequence of each, each role's sign in the margin z, which roles hold the preferred responses
(the SFT term's), and the accuracies reported. `PreferenceLoss` turns per-sequence scores `s_k` in that
role order (`[B, num_roles]`) into per-example losses `[B]` and per-example metrics `[B]` (detached, the
loss among them), which the caller averages over whatever it aggregates: micro-batches, accumulation
steps, ranks. `SFTLoss` does the same for the SFT baseline, whose examples hold one role: a preferred
response given its own instruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


@dataclass(frozen=True)
class Objective:
    """What the roles of one loss mode mean."""

    name: str
    roles: tuple[str, ...]  # role names, in role order
    # Each role's sequence: (prompt, response) as indices into an example's prompts and responses.
    pairs: tuple[tuple[int, int], ...]
    signs: tuple[float, ...]  # each role's sign in z: z = sum_k signs[k] * d_k
    preferred: tuple[int, ...]  # roles whose response follows its own instruction: the SFT term's
    accuracy: str | None  # the metric [z > 0]; None without a preference (SFT)
    comparisons: dict[str, tuple[int, int]] = field(default_factory=dict)  # further metrics [d_a > d_b]

    @property
    def num_roles(self) -> int:
        return len(self.roles)

    def preferred_sequences(self) -> list[tuple[int, int]]:
        """(prompt, response) of each preferred role: the SFT examples an example of this objective holds."""
        return [self.pairs[role] for role in self.preferred]

    def preference_pairs(self) -> list[tuple[int, int, int]]:
        """(prompt, preferred response, other response): the DPO pairs an example of this objective holds, each
        preferred role against the role with its prompt and another response (IOPO: x1 with y1 over y2, x2
        with y2 over y1)."""
        return [(prompt, response, other) for prompt, response in self.preferred_sequences()
                for other_prompt, other in self.pairs if other_prompt == prompt and other != response]


# z = d_0 + d_2 - d_1 - d_3: the group {(x1,y1), (x2,y2)} against {(x1,y2), (x2,y1)}. Output preference:
# each instruction prefers its own response; input preference: each response prefers its own instruction.
# The role names are the original implementation's: chosen_v<i> is x_i with its own response, rejected_v<i>
# x_i with the other one; y2 is "rejected" only for x1 (the release's files call it "rejected" outright).
IOPO = Objective(
    name="iopo", roles=("chosen_v1", "rejected_v1", "chosen_v2", "rejected_v2"),
    pairs=((0, 0), (0, 1), (1, 1), (1, 0)),  # (x1, y1), (x1, y2), (x2, y2), (x2, y1)
    signs=(1.0, -1.0, 1.0, -1.0), preferred=(0, 2), accuracy="accuracies/group",
    comparisons={"accuracies/output_v1": (0, 1), "accuracies/output_v2": (2, 3),
                 "accuracies/input_y1": (0, 3), "accuracies/input_y2": (2, 1)},
)
# z = d_w - d_l.
DPO = Objective(name="dpo", roles=("chosen", "rejected"), pairs=((0, 0), (0, 1)), signs=(1.0, -1.0), preferred=(0,),
                accuracy="accuracies/pair")
# No preference: the response that follows its own instruction, (x1, y1) or (x2, y2), or (x, y_w).
SFT = Objective(name="sft", roles=("response",), pairs=((0, 0),), signs=(1.0,), preferred=(0,), accuracy=None)
OBJECTIVES = {objective.name: objective for objective in (IOPO, DPO, SFT)}


@dataclass(frozen=True)
class PreferenceLoss:
    """The loss of an `Objective` with its hyper-parameters; call it on the scores of a batch."""

    objective: Objective
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    ftx: float = 0.0

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")

    @property
    def needs_lengths(self) -> bool:
        """ipo scores mean log-probs, and the SFT term divides by the response lengths."""
        return self.loss_type == "ipo" or self.ftx > 0

    def __call__(self, policy_scores: torch.Tensor, reference_scores: torch.Tensor | None,
                 response_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-example losses `[B]` (differentiable in `policy_scores`) and metrics `[B]` (detached).

        `reference_scores=None` is reference-free; `response_lengths` `[B, num_roles]` is needed when
        `needs_lengths`.
        """
        roles = self.objective.roles
        if policy_scores.dim() != 2 or policy_scores.shape[1] != len(roles):
            raise ValueError(f"expected scores (summed response log-probs) of shape [B, {len(roles)}], got {list(policy_scores.shape)}")
        if reference_scores is not None and reference_scores.shape != policy_scores.shape:
            raise ValueError(f"reference scores {list(reference_scores.shape)} != policy {list(policy_scores.shape)}")
        if self.needs_lengths and response_lengths is None:
            raise ValueError("response_lengths is required for loss_type='ipo' and for ftx > 0")

        policy = policy_scores.float()
        reference = torch.zeros_like(policy) if reference_scores is None else reference_scores.float().detach()
        d = policy - reference
        if self.loss_type == "ipo":  # IPO compares length-averaged log-probs, as the original does.
            d = d / response_lengths.to(d)
        z = d @ d.new_tensor(self.objective.signs)
        losses = _bradley_terry(z, self.beta, self.loss_type, self.label_smoothing)
        if self.ftx > 0:  # SFT term on the preferred responses: -(s_0/|y1|) - (s_2/|y2|) for IOPO.
            preferred = list(self.objective.preferred)
            losses = losses - self.ftx * (policy[:, preferred] / response_lengths[:, preferred].to(policy)).sum(-1)

        d = d.detach()
        metrics = {"loss": losses.detach()}
        for k, name in enumerate(roles):
            metrics[f"rewards/{name}"] = self.beta * d[:, k]
            metrics[f"logps/{name}"] = policy[:, k].detach()
        metrics["rewards/margin"] = self.beta * z.detach()
        metrics[self.objective.accuracy] = (z > 0).float().detach()
        for name, (a, b) in self.objective.comparisons.items():
            metrics[name] = (d[:, a] > d[:, b]).float()
        return losses, metrics


@dataclass(frozen=True)
class SFTLoss:
    """The SFT baseline: each response's negative log-likelihood per token, -s / |y| (the `ftx` term of the
    preference losses, alone). No reference model; scores `[B, 1]` and lengths `[B, 1]` of `SFT` examples."""

    def __call__(self, policy_scores: torch.Tensor, reference_scores: torch.Tensor | None,
                 response_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if policy_scores.dim() != 2 or policy_scores.shape[1] != 1:
            raise ValueError(f"expected scores (summed response log-probs) of shape [B, 1], got {list(policy_scores.shape)}")
        if reference_scores is not None:
            raise ValueError("the SFT loss takes no reference scores")
        if response_lengths is None:
            raise ValueError("response_lengths is required for the SFT loss")
        policy = policy_scores.float()[:, 0]
        losses = -policy / response_lengths[:, 0].to(policy)
        return losses, {"loss": losses.detach(), "logps/response": policy.detach()}


def iopo_loss(policy_scores: torch.Tensor, reference_scores: torch.Tensor | None, beta: float = 0.1,
              loss_type: str = "sigmoid", label_smoothing: float = 0.0, ftx: float = 0.0,
              response_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IOPO losses and metrics from `[B, 4]` summed response log-probs (`PreferenceLoss` of `IOPO`)."""
    return PreferenceLoss(IOPO, beta, loss_type, label_smoothing, ftx)(policy_scores, reference_scores, response_lengths)


def dpo_loss(policy_scores: torch.Tensor, reference_scores: torch.Tensor | None, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0, ftx: float = 0.0,
             response_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO losses and metrics from `[B, 2]` (chosen, rejected) summed log-probs (`PreferenceLoss` of `DPO`)."""
    return PreferenceLoss(DPO, beta, loss_type, label_smoothing, ftx)(policy_scores, reference_scores, response_lengths)


def _bradley_terry(z: torch.Tensor, beta: float, loss_type: str, eps: float) -> torch.Tensor:
    """The loss of a margin z under each loss type; eps is the label-smoothing rate."""
    if loss_type == "sigmoid":
        return -(1 - eps) * F.logsigmoid(beta * z) - eps * F.logsigmoid(-beta * z)
    if loss_type == "robust":  # Chowdhury et al. 2024, unbiased under label noise of rate eps.
        return (-(1 - eps) * F.logsigmoid(beta * z) + eps * F.logsigmoid(-beta * z)) / (1 - 2 * eps)
    if loss_type == "hinge":
        return torch.relu(1 - beta * z)
    return (z - 1 / (2 * beta)) ** 2  # ipo
