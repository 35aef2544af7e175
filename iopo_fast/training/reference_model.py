"""The reference model of the preference losses: a live model, a table of its scores computed before
training, or none (reference-free).

`reference: precomputed` scores every example once with the initial policy (the reference model by
definition; with LoRA, the policy with its adapters disabled) before training starts, and caches the
`[num_examples, num_roles]` table in `<output_dir>/reference_scores/`, keyed by everything that
changes the scores or what its columns mean (`cache_path`): training then holds no second model and runs
no reference forward.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data.examples import Example
from ..data.sampling import examples_fingerprint
from ..distributed import all_reduce, is_main, rank_batches
from ..model.fast_paths import liger_runs, resolved_paths
from ..model.loading import model_fingerprint, resolve_model_path
from ..model.packing import Batch, pack_examples
from ..utils import replaced_atomically
from .engine import partitions_parameters, reference_engine

# Bump when the table's layout changes: a table of an older layout is then never read.
TABLE_FORMAT = 1


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
        with replaced_atomically(cache_file) as temporary:
            torch.save(table, temporary)
    return PrecomputedReference(table)


def cache_path(output_dir: str | Path, model_path: str, examples: Sequence[Example], settings: dict) -> Path:
    """`<output_dir>/reference_scores/<key>.pt`, the key a digest of the model's files, the token ids, the table's
    format, the meaning of its columns (the objective's roles: names, sequences, signs) and `settings`:
    everything else that changes the scores (dtype, attention backend, log-prob implementation, model
    kernels, LoRA)."""
    objective = examples[0].objective
    digest = hashlib.sha256(f"{model_path}:{model_fingerprint(model_path)}".encode())
    digest.update(json.dumps({"format": TABLE_FORMAT, "roles": objective.roles, "pairs": objective.pairs,
                              "signs": objective.signs, **settings}, sort_keys=True).encode())
    digest.update(examples_fingerprint(examples).encode())
    return Path(output_dir) / "reference_scores" / f"{digest.hexdigest()[:20]}.pt"


def live_reference(config: TrainConfig, policy_engine, load_reference, ds_config: dict,
                   device: torch.device) -> LiveReference | None:
    """What scores a batch with the reference model (None when reference-free).

    With LoRA, the policy with its adapters disabled; before the first step (`precomputed`), the policy
    itself; else a frozen second model (`load_reference()`, a `PreferenceModel` without a loss),
    partitioned like the policy under ZeRO-3.
    """
    if config.reference_mode == "none":
        return None
    lora = config.finetuning_type == "lora"
    if lora or config.reference_mode == "precomputed":
        return LiveReference(policy_engine.module, disable_adapter=lora)
    model = load_reference().requires_grad_(False).eval()
    return LiveReference(reference_engine(model, ds_config) if partitions_parameters(ds_config) else model.to(device))


def precompute_references(config: TrainConfig, live: LiveReference, example_sets: list[Sequence[Example]],
                          device: torch.device, log) -> list[PrecomputedReference | None]:
    """Tables of the initial policy's scores of each set of examples (None for an empty one), cached in
    output_dir under a key of everything that changes them."""
    attention, logprobs = resolved_paths(device, config.model_dtype, config.attention_backend, config.logprob_impl)
    settings = {"dtype": str(config.model_dtype), "attention": attention, "logprobs": logprobs,
                "liger": liger_runs(config.liger_kernels), "finetuning": config.finetuning_type}
    model_path = resolve_model_path(config.model_name_or_path)
    policy = live.model
    policy.eval()
    tables = []
    for examples in example_sets:
        if not examples:
            tables.append(None)
            continue
        cache_file = cache_path(config.output_dir, model_path, examples, settings)
        tables.append(precompute(live, examples, cache_file, config.per_device_eval_batch_size, device))
        log(f"reference log-probs of {len(examples)} examples: {cache_file}")
    policy.train()
    return tables
