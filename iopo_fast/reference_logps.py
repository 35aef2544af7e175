"""Where the reference scores come from: a live model, a table computed before training, or nowhere.

`reference: precomputed` scores every example once with the initial policy (the reference model by
definition; with LoRA, the policy with its adapters disabled) before training starts, and caches the
`[num_examples, num_roles]` table in `<output_dir>/reference_logps/`, keyed by everything that
changes the scores (`cache_path`): training then holds no second model and runs no reference forward.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import torch

from .distributed import all_reduce, is_main, rank_batches
from .packing import Batch, Example, pack_examples


class LiveReference:
    """Scores a batch with a frozen `PreferenceModel`, or with the policy's base model (its adapters disabled).

    `model` is the module to call: the `PreferenceModel` itself, or a DeepSpeed engine around it.
    """

    def __init__(self, model: torch.nn.Module, disable_adapter: bool = False):
        self.model, self.disable_adapter = model, disable_adapter

    @torch.no_grad()
    def __call__(self, batch: Batch, indices: list[int]) -> torch.Tensor:
        preference_model = getattr(self.model, "module", self.model)
        with preference_model.model.disable_adapter() if self.disable_adapter else contextlib.nullcontext():
            return self.model(batch, with_loss=False).scores


class PrecomputedReference:
    """Looks up the scores of a table computed before training."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, batch: Batch, indices: list[int]) -> torch.Tensor:
        return self.table[indices].to(batch.targets.device)


def precompute(reference: LiveReference, examples: list[Example], cache_file: Path, batch_size: int,
               device: torch.device) -> PrecomputedReference:
    """The reference table of `examples`, read from `cache_file` or computed (ranks share the work) and saved.

    Every rank takes the same branch (computing runs collectives): the cache is read only if all see it.
    """
    if not all_reduce(torch.tensor(int(not cache_file.is_file())), "max"):
        return PrecomputedReference(torch.load(cache_file))
    num_roles = examples[0].objective.num_roles
    table = torch.zeros(len(examples), num_roles, dtype=torch.float32)
    for indices, own in rank_batches(len(examples), batch_size):
        scores = reference(pack_examples([examples[i] for i in indices]).to(device), indices).float().cpu()
        table[indices[:own]] = scores[:own]
    table = all_reduce(table)
    if is_main():
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        torch.save(table, temporary)
        os.replace(temporary, cache_file)
    return PrecomputedReference(table)


def cache_path(output_dir: str | Path, model_path: str, examples: list[Example], settings: dict) -> Path:
    """`<output_dir>/reference_logps/<key>.pt`, the key a digest of the model's files, the token ids and
    `settings`: everything else that changes the scores (dtype, attention backend, log-prob implementation,
    model kernels, LoRA)."""
    digest = hashlib.sha256(model_path.encode())
    model_dir = Path(model_path)
    if model_dir.is_dir():
        for file in sorted(model_dir.rglob("*")):
            if file.is_file():
                stat = file.stat()
                digest.update(f"{file.relative_to(model_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for example in examples:
        digest.update(repr(example).encode())
    return Path(output_dir) / "reference_logps" / f"{digest.hexdigest()[:20]}.pt"
