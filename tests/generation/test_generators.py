"""The generators of responses to prompts: the transformers backend's responses, cuts and rows, and the models it
loads (a run's LoRA adapters on their base model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from iopo_fast.generation.generators import TransformersGenerator, _model_directory
from iopo_fast.generation.settings import GenerationSettings
from iopo_fast.model.loading import DEFAULT_MODEL


def test_responses_that_stop_at_the_token_limit_are_marked_cut():
    # Settings that leave the number of new tokens to each benchmark: the call gives it.
    generator = TransformersGenerator(DEFAULT_MODEL, GenerationSettings(batch_size=2))
    short, long = generator(["What is 2+2? Answer with a number.", "Write a long story about a cat."],
                            max_new_tokens=24)
    assert (short, short.cut, long.cut) == ("The answer is 4.", False, True)
    with pytest.raises(ValueError, match="needs a positive max_new_tokens"):
        generator(["Hi."])


def test_generation_is_greedy_and_a_response_does_not_depend_on_the_other_rows(tiny_model_dir):
    settings = GenerationSettings(max_new_tokens=6, batch_size=2)  # fp32 by default: bf16 sums differ by batch
    generator = TransformersGenerator(str(tiny_model_dir), settings, device=torch.device("cpu"))
    prompts = ["Hi.", "Name three rivers of Europe, in lowercase, as a list."]
    batched = generator(prompts)
    assert all(batched) and batched[0] != batched[1]
    assert batched == [generator([prompts[0]])[0], generator([prompts[1]])[0]]


def test_lora_adapters_of_a_run_are_evaluated_on_their_base_model(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "adapter")
    settings = GenerationSettings(max_new_tokens=6, dtype="bfloat16")
    adapted = TransformersGenerator(str(tmp_path / "adapter"), settings, device=torch.device("cpu"))
    merged = model.merge_and_unload()
    # Merged in fp32, then cast to the generator's bf16.
    assert all(torch.equal(value, merged.state_dict()[name].bfloat16())
               for name, value in adapted.model.state_dict().items())
    with _model_directory(str(tmp_path / "adapter")) as directory:  # what the vLLM backend loads
        saved = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).state_dict()
        assert (Path(directory) / "tokenizer_config.json").is_file()
    assert not Path(directory).exists()
    assert all(torch.equal(value, merged.state_dict()[name].bfloat16()) for name, value in saved.items())
    with _model_directory(str(tiny_model_dir)) as directory:
        assert directory == str(tiny_model_dir)
