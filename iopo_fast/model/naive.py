"""The naive implementation: the ground truth that every fast path is tested against, and that no
production code runs.

Each (prompt, response) sequence of an example goes through the unmodified Hugging Face model on its
own, with full logits, `log_softmax` and a gather, as the original LLaMA-Factory-based IOPO code does
(DESIGN.md, "Naive paths and CPU testing"). It is slow and memory-hungry on purpose: it is simple.
"""

from __future__ import annotations

import torch
from torch import nn

from ..compat import attention_implementation
from ..data.examples import Example
from .hf_attention import ATTENTION_NAME


def sequence_logps(model: nn.Module, examples: list[Example]) -> torch.Tensor:
    """Summed response log-probs, `[len(examples), num_roles]` in role order, one sequence at a time
    (fp32, or float64 for a float64 model). `model` is a model as loaded, not one a `PreferenceModel` took over."""
    if attention_implementation(model.config) == ATTENTION_NAME:
        raise ValueError("naive.sequence_logps needs the model as loaded: this one runs iopo-fast's packed "
                         "attention (a PreferenceModel took it over); score a copy made before")
    rows = []
    for example in examples:
        scores = []
        for prompt, response in example.sequences():
            input_ids = torch.tensor([prompt + response], device=model.device)
            logits = model(input_ids=input_ids).logits[0]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 models stay exact
            logps = logits[len(prompt) - 1 : -1].log_softmax(-1)
            scores.append(logps.gather(-1, input_ids[0, len(prompt) :, None]).sum(dtype=torch.float64))
        rows.append(torch.stack(scores))
    return torch.stack(rows).to(torch.promote_types(logits.dtype, torch.float32))
