"""Every shim of `iopo_fast.compat` against the installed PyTorch, transformers, Liger-Kernel, DeepSpeed and TRL,
and the one-line error a missing private API gives."""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch
from conftest import tiny_llama
from deepspeed.utils import safe_get_full_fp32_param

from iopo_fast import compat
from iopo_fast.config import TrainConfig
from iopo_fast.distributed import init_distributed
from iopo_fast.model.hf_attention import SUPPORTED_MODEL_TYPES
from iopo_fast.model.loading import LIGER_KERNELS
from iopo_fast.training.engine import build_engine, deepspeed_config


def test_attention_implementation_reads_the_config():
    assert compat.attention_implementation(tiny_llama().config) == "sdpa"


def test_sdpa_functions_compute_attention_as_the_model_does(generator):
    """The packed attention runs transformers' SDPA forward for unpacked batches: the same logits."""
    sdpa_forward, sdpa_mask = compat.sdpa_functions()
    assert callable(sdpa_forward) and callable(sdpa_mask)
    model = tiny_llama()
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    input_ids = torch.randint(0, 96, (2, 7), generator=generator)
    torch.testing.assert_close(model(input_ids).logits, eager(input_ids).logits, rtol=1e-5, atol=1e-5)


def test_forget_quantization_makes_a_dequantized_model_save_as_a_plain_one(tmp_path):
    model = tiny_llama()
    model.hf_quantizer, model.config.quantization_config = object(), {"quant_method": "gguf"}  # as GGUF loads it
    compat.forget_quantization(model)
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    reloaded = type(model).from_pretrained(tmp_path)
    for name, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name


def test_apply_liger_to_instance_knows_llama_and_not_an_unknown_type():
    model = tiny_llama()
    assert compat.apply_liger_to_instance(model, rms_norm=False, swiglu=False, rope=False, cross_entropy=False,
                                          fused_linear_cross_entropy=False)
    model.config.model_type = "not-a-model"
    assert not compat.apply_liger_to_instance(model)


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_liger_takes_every_kernel_setting_for_each_supported_family(model_type):
    """Liger's instance patcher silently drops the settings its family's function does not name: each one
    iopo-fast passes must be a parameter there (Liger's kernels run on CUDA only; this checks the call)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    parameters = inspect.signature(MODEL_TYPE_TO_APPLY_LIGER_FN[model_type]).parameters
    assert set(LIGER_KERNELS) <= set(parameters), set(LIGER_KERNELS) - set(parameters)


def test_zero3_full_state_dict_gathers_every_weight(generator):
    init_distributed()
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model = tiny_llama()
    expected = {name: value.clone() for name, value in model.state_dict().items()}
    config = TrainConfig(zero_stage=3)
    engine, _ = build_engine(model, config, deepspeed_config(config, world_size=1), total_steps=1)
    assert all(p.numel() == 0 or safe_get_full_fp32_param(p) is not None for p in engine.module.parameters())
    state_dict = compat.zero3_full_state_dict(engine)
    assert state_dict.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(state_dict[name].float(), value, msg=name)


@pytest.mark.parametrize("stage, checks", [(0, False), (2, True)])
def test_optimizer_checks_gradients_under_zero_only_in_fp32(stage, checks):
    init_distributed()
    config = TrainConfig(zero_stage=stage)
    engine, _ = build_engine(tiny_llama(), config, deepspeed_config(config, world_size=1), total_steps=1)
    assert compat.optimizer_checks_gradients(engine) is checks


def test_trl_precompute_hook_exists():
    compat.check_trl_precompute_ref_logps()


def test_a_missing_private_api_is_a_one_line_error_naming_package_and_version():
    with pytest.raises(compat.CompatibilityError, match=r"^deepspeed \d+\.\d+\S* has no DeepSpeedEngine\._zero3_"):
        compat.zero3_full_state_dict(object())


def test_cpu_multiplies_bf16_answers():
    assert compat.cpu_multiplies_bf16() in (True, False)


def test_restate_checker_argument_sets_what_the_official_checker_counts():
    from iopo_fast.evaluation.offline_resources import checker_classes

    checker = checker_classes("IFEval")["keywords:letter_frequency"]("keywords:letter_frequency")
    checker.build_description(letter="a", let_frequency=2, let_relation="at least")
    description = compat.restate_checker_argument(checker, "if-verifiable", "_letter", "z")
    assert "letter z should" in description and checker.get_instruction_args()["letter"] == "z"
    assert checker.check_following("zz top") and not checker.check_following("aa")
    with pytest.raises(compat.CompatibilityError, match=r"^if-verifiable \d\S* has no \w+\._no_such and "):
        compat.restate_checker_argument(checker, "if-verifiable", "_no_such", 1)
