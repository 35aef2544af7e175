"""Reference scores: a precomputed table equals live scoring, and a LoRA policy's reference is its base model."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import permuted_roles, random_iopo_examples, tiny_llama

from iopo_fast import IOPO, IOPOExample, PreferenceModel, pack_examples
from iopo_fast.model import naive
from iopo_fast.model.loading import apply_lora
from iopo_fast.training import reference_model
from iopo_fast.training.reference_model import LiveReference, cache_path, precompute

SETTINGS = {"dtype": "torch.float32", "attention": "per_segment_sdpa", "logprobs": "chunked", "liger": False,
            "finetuning": "full"}


def test_precomputed_reference_equals_live_scores_and_is_read_back_from_its_cache(generator, tmp_path):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model, examples = PreferenceModel(tiny_llama()), random_iopo_examples(7, 96, generator)
    live = LiveReference(model)
    cache_file = cache_path(tmp_path, "tiny", examples, SETTINGS)

    table = precompute(live, examples, cache_file, batch_size=3, device=torch.device("cpu"))

    indices = [5, 0, 3]
    batch = pack_examples([examples[i] for i in indices])
    torch.testing.assert_close(table(batch, indices), live(batch, indices), rtol=0, atol=1e-5)
    with torch.no_grad():  # a changed model does not change a cached table
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    cached = precompute(live, examples, cache_file, batch_size=3, device=torch.device("cpu"))
    assert torch.equal(cached.table, table.table)


@pytest.mark.parametrize("setting, value", [
    ("dtype", "torch.bfloat16"), ("attention", "flash_attn"), ("logprobs", "triton"), ("liger", True),
    ("finetuning", "lora"),
])
def test_cache_key_covers_what_changes_the_scores(generator, tmp_path, setting, value):
    examples = random_iopo_examples(3, 96, generator)
    cache_file = cache_path(tmp_path, "tiny", examples, SETTINGS)
    assert cache_path(tmp_path, "tiny", examples, {**SETTINGS, setting: value}) != cache_file
    assert cache_path(tmp_path, "tiny", examples[1:], SETTINGS) != cache_file
    assert cache_path(tmp_path, "other", examples, SETTINGS) != cache_file
    assert cache_path(tmp_path, "tiny", examples, dict(SETTINGS)) == cache_file


def test_cache_key_covers_what_the_columns_mean_and_the_table_format(generator, tmp_path, monkeypatch):
    examples = random_iopo_examples(3, 96, generator)
    cache_file = cache_path(tmp_path, "tiny", examples, SETTINGS)
    with monkeypatch.context() as patch:  # the same sequences, scored in another role order
        patch.setattr(IOPOExample, "objective", permuted_roles(IOPO, (2, 3, 0, 1)))
        assert cache_path(tmp_path, "tiny", examples, SETTINGS) != cache_file
    monkeypatch.setattr(reference_model, "TABLE_FORMAT", reference_model.TABLE_FORMAT + 1)
    assert cache_path(tmp_path, "tiny", examples, SETTINGS) != cache_file


def test_lora_reference_is_the_base_model_with_its_adapters_disabled(generator):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    base, examples = tiny_llama(), random_iopo_examples(5, 96, generator)
    policy = apply_lora(copy.deepcopy(base), rank=4, alpha=8.0, dropout=0.0, target="all")
    with torch.no_grad():  # trained adapters: LoRA's B starts at zero, which would hide the difference
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    adapted_scores = naive.sequence_logps(policy, examples)
    preference_model = PreferenceModel(policy)

    reference_scores = LiveReference(preference_model, disable_adapter=True)(pack_examples(examples),
                                                                             list(range(len(examples))))

    torch.testing.assert_close(reference_scores, naive.sequence_logps(base, examples), rtol=0, atol=1e-5)
    assert (adapted_scores - reference_scores).abs().max() > 1e-2
    assert sum(p.numel() for p in policy.parameters() if p.requires_grad) < sum(p.numel() for p in base.parameters())
