"""Reference scores: a precomputed table equals live scoring, and a LoRA policy's reference is its base model."""

from __future__ import annotations

import copy

import torch
from conftest import random_iopo_examples, tiny_llama

from iopo_fast import pack_examples, sequence_logps
from iopo_fast.model import apply_lora
from iopo_fast.reference_logps import LiveReference, cache_path, precompute


def test_precomputed_reference_equals_live_scores_and_is_read_back_from_its_cache(generator, tmp_path):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model, examples = tiny_llama(), random_iopo_examples(7, 96, generator)
    live = LiveReference(model, sequence_logps)
    cache_file = cache_path(tmp_path, "tiny", examples)

    table = precompute(live, examples, cache_file, batch_size=3, device=torch.device("cpu"))

    indices = [5, 0, 3]
    batch = pack_examples([examples[i] for i in indices])
    torch.testing.assert_close(table(batch, indices), live(batch, indices), rtol=0, atol=1e-5)
    with torch.no_grad():  # a changed model does not change a cached table
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    cached = precompute(live, examples, cache_file, batch_size=3, device=torch.device("cpu"))
    assert torch.equal(cached.table, table.table)
    assert cache_path(tmp_path, "tiny", examples[1:]) != cache_file
    assert cache_path(tmp_path, "other", examples) != cache_file


def test_lora_reference_is_the_base_model_with_its_adapters_disabled(generator):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    base, examples = tiny_llama(), random_iopo_examples(5, 96, generator)
    policy = apply_lora(copy.deepcopy(base), rank=4, alpha=8.0, dropout=0.0, target="all")
    with torch.no_grad():  # trained adapters: LoRA's B starts at zero, which would hide the difference
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    batch = pack_examples(examples)

    with torch.no_grad():
        base_scores = sequence_logps(base, batch)
        adapted_scores = sequence_logps(policy, batch)
    reference_scores = LiveReference(policy, sequence_logps, disable_adapter=True)(batch, list(range(len(examples))))

    torch.testing.assert_close(reference_scores, base_scores, rtol=0, atol=1e-5)
    assert (adapted_scores - base_scores).abs().max() > 1e-2
    assert sum(p.numel() for p in policy.parameters() if p.requires_grad) < sum(p.numel() for p in base.parameters())
