"""The embedded default model: converted from its GGUF file once, cached, loadable, and scored right."""

from __future__ import annotations

import copy

import pytest
import torch

from iopo_fast import IOPOExample, PreferenceModel, pack_examples
from iopo_fast.model import naive
from iopo_fast.model.loading import DEFAULT_MODEL, ModelError, load_model, load_tokenizer, resolve_model_path


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2 converted into a fresh cache, so that the conversion path itself runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IOPO_FAST_CACHE", str(tmp_path_factory.mktemp("cache")))
        model = load_model(DEFAULT_MODEL)
        path = resolve_model_path(DEFAULT_MODEL)
    return model, path


def test_default_model_is_smollm2_converted_to_safetensors(smollm2):
    model, path = smollm2
    assert (model.config.model_type, model.config.vocab_size, model.config.num_attention_heads,
            model.config.num_key_value_heads, model.config.tie_word_embeddings) == ("llama", 49152, 9, 3, True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert not hasattr(model.config, "quantization_config")
    assert path.endswith("SmolLM2-135M-Instruct")


def test_preference_model_matches_reference_on_smollm2(smollm2, smollm2_tokenizer, generator):
    """Packed scores and the gradients of every parameter against the four-sequence naive path, in fp32."""
    model = copy.deepcopy(smollm2[0])
    encode = lambda text: smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    examples = [IOPOExample(encode("Say hi in lowercase:"), encode("Say hi in UPPERCASE:"), encode(" hi there"),
                            encode(" HI THERE")),
                IOPOExample(encode("Name a color."), encode("Name a color in French."), encode(" Blue."),
                            encode(" Bleu."))]
    weights = torch.randn(len(examples), 4, generator=generator)
    expected, expected_grads = scores_and_grads(model, lambda: naive.sequence_logps(model, examples), weights)
    preference_model = PreferenceModel(model)
    scores, grads = scores_and_grads(model, lambda: preference_model(pack_examples(examples)).scores, weights)

    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4)
    # Relative error of each parameter's gradient, as a norm: SmolLM2's outlier channels make single
    # entries large, and fp32 sums in another order differ there. Through 30 pretrained layers either
    # fp32 path is 0.7-1.1e-4 away from the other (and under 1e-4 from a float64 one), hence 5e-4,
    # beside DESIGN.md's 1e-4 for the kernel alone.
    for name, grad in grads.items():
        error = (grad - expected_grads[name]).norm() / expected_grads[name].norm()
        assert error <= 5e-4, f"{name}: relative gradient error {error:.2e}"
    # Pretrained weights, not random ones: a random model scores about -log(49152) = -10.8 per token.
    per_token = scores / pack_examples(examples).response_lengths
    assert per_token.max() > -6


def scores_and_grads(model, score, weights):
    model.zero_grad(set_to_none=True)
    scores = score()
    (scores * weights).sum().backward()
    return scores.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_missing_local_model_is_a_one_line_error(tmp_path):
    with pytest.raises(ModelError, match="no such model directory"):
        load_tokenizer(str(tmp_path / "absent"))


def test_lora_on_the_lm_head_is_refused():
    from conftest import tiny_llama

    from iopo_fast.model.loading import apply_lora

    with pytest.raises(ModelError, match="the LM head .*lm_head.* cannot take adapters"):
        apply_lora(tiny_llama(), rank=4, alpha=8.0, dropout=0.0, target="q_proj,lm_head")
