"""Responses of a causal LM to evaluation prompts: the chat template, batched `generate`, left padding.

The model is a Hugging Face causal-LM directory, a run's exported `model/` (full weights, or LoRA
adapters, recognised by their `adapter_config.json`), a hub id, or the embedded default model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..model import ModelError, load_model, load_tokenizer


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are sampled; greedy when `temperature` is 0."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self):
        if self.max_new_tokens <= 0 or self.batch_size <= 0:
            raise ValueError(f"max_new_tokens and batch_size must be positive, got {self.max_new_tokens}, {self.batch_size}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")

    def as_dict(self) -> dict:
        return asdict(self)


class TransformersGenerator:
    """Batched greedy or sampled generation with transformers, prompts rendered by the model's chat template."""

    backend = "transformers"

    def __init__(self, model_path: str, settings: GenerationSettings, device: torch.device | None = None):
        self.settings = settings
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        path = Path(model_path).expanduser()
        if path.is_dir() and not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
            raise ModelError(f"{model_path}: not a model directory (no config.json)")
        self.tokenizer = load_tokenizer(model_path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelError(f"{model_path}: the tokenizer has no chat template to render prompts with")
        self.tokenizer.padding_side = "left"  # generated tokens follow every prompt directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = _load_causal_lm(model_path, dtype).to(self.device).eval()
        torch.manual_seed(settings.seed)

    def __call__(self, prompts: list[str]) -> list[str]:
        """One response per prompt: the generated text without special tokens and surrounding whitespace."""
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                    add_generation_prompt=True) for prompt in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling = (dict(do_sample=True, temperature=self.settings.temperature, top_p=self.settings.top_p)
                    if self.settings.temperature > 0 else dict(do_sample=False, temperature=None, top_p=None, top_k=None))
        with torch.inference_mode():
            output = self.model.generate(**batch, max_new_tokens=self.settings.max_new_tokens,
                                         pad_token_id=self.tokenizer.pad_token_id, **sampling)
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _load_causal_lm(model_path: str, dtype: torch.dtype):
    """A causal LM, or a base model with a run's LoRA adapters applied."""
    path = Path(model_path).expanduser()
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        try:
            return AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype).merge_and_unload()
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot load the LoRA model in {model_path}: {str(error).splitlines()[0]}") from None
    return load_model(model_path, dtype)
