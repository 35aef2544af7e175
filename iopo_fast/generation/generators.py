"""Responses of a causal LM to evaluation prompts, rendered by the model's chat template.

Two backends take the same prompt tokens and sampling settings:

- `TransformersGenerator`: `batch_size` rows decoding at once, a row that ends taking the next prompt
  (`row_decoding.RowDecoder`), on any device;
- `VLLMGenerator`: vLLM's offline engine (`LLM.generate`), when vLLM is installed and a GPU is present.

The model is a Hugging Face causal-LM directory, a run's exported `model/` (full weights, or LoRA
adapters, recognised by their `adapter_config.json`), a hub id, or the embedded default model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from ..model.loading import ModelError, load_model, load_tokenizer, resolve_model_path
from ..utils import first_line
from .row_decoding import RowDecoder
from .settings import GenerationSettings

BACKENDS = ("auto", "transformers", "vllm")
VLLM_BATCH = 512  # prompts per vLLM call: vLLM schedules them itself; responses reach the disk after each call


def _token_limit(settings: GenerationSettings, max_new_tokens: int | None) -> int:
    """The longest response of one call: `max_new_tokens` as given to it, else the generator's settings'."""
    limit = settings.max_new_tokens if max_new_tokens is None else max_new_tokens
    if limit is None or limit <= 0:
        raise ValueError(f"generation needs a positive max_new_tokens, got {limit} (the settings leave it to each "
                         f"benchmark: pass it to the call)")
    return limit


class Generated(str):
    """A generated response, and whether it was cut: stopped at `max_new_tokens` before its end."""

    cut: bool

    def __new__(cls, text: str, cut: bool):
        generated = super().__new__(cls, text)
        generated.cut = cut
        return generated


class TransformersGenerator:
    """Greedy or sampled generation with transformers, prompts rendered by the model's chat template:
    `batch_size` rows decode at once, and a row whose response ends takes the next prompt."""

    backend = "transformers"

    def __init__(self, model_path: str, settings: GenerationSettings, device: torch.device | None = None):
        self.settings = settings
        self.batch_size = settings.batch_size
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = _chat_tokenizer(model_path)
        self.model = _load_causal_lm(model_path, getattr(torch, settings.dtype)).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        end_ids = {*(eos if isinstance(eos, list) else [eos]), self.tokenizer.eos_token_id} - {None}
        self.random = torch.Generator(self.device).manual_seed(settings.seed)
        self.decode = RowDecoder(self.model, settings.batch_size, sorted(end_ids), self.tokenizer.pad_token_id,
                                 self._choose)

    def stream(self, prompts: list[str | list[dict]],
               max_new_tokens: int | None = None) -> Iterator[tuple[int, Generated]]:
        """(index, response) for each prompt (a user message, or a chat's messages) as its response ends: the
        generated text without special tokens and surrounding whitespace, of at most `max_new_tokens` (default:
        the settings') tokens."""
        limit = _token_limit(self.settings, max_new_tokens)
        token_ids = self.tokenizer([_chat_text(self.tokenizer, prompt) for prompt in prompts],
                                   add_special_tokens=False)["input_ids"]
        for finished in self.decode(token_ids, limit):
            text = self.tokenizer.decode(finished.tokens, skip_special_tokens=True).strip()
            yield finished.index, Generated(text, finished.cut)

    def __call__(self, prompts: list[str | list[dict]], max_new_tokens: int | None = None) -> list[Generated]:
        """The responses of `stream`, in the order of `prompts`."""
        responses = dict(self.stream(prompts, max_new_tokens))
        return [responses[index] for index in range(len(prompts))]

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token: the most likely, or sampled at the settings' temperature within their top-p."""
        if self.settings.temperature == 0:
            return logits.argmax(dim=-1)
        from transformers.generation.logits_process import TopPLogitsWarper

        scores = TopPLogitsWarper(self.settings.top_p)(None, logits.float() / self.settings.temperature)
        return torch.multinomial(scores.softmax(dim=-1), 1, generator=self.random).squeeze(1)


class VLLMGenerator:
    """vLLM's offline engine on the prompt tokens `TransformersGenerator` generates from (rendered and
    tokenized here, so that vLLM adds no second BOS), with the same sampling settings."""

    backend = "vllm"

    def __init__(self, model_path: str, settings: GenerationSettings):
        from vllm import LLM

        self.settings = settings
        self.batch_size = max(settings.batch_size, VLLM_BATCH)
        self.tokenizer = _chat_tokenizer(model_path)
        with _model_directory(model_path) as directory:  # vLLM reads the weights while the engine starts
            self.engine = LLM(model=directory, dtype=settings.dtype, seed=settings.seed)

    def __call__(self, prompts: list[str | list[dict]], max_new_tokens: int | None = None) -> list[Generated]:
        """As `TransformersGenerator`'s: at most `max_new_tokens` (default: the settings') tokens per response."""
        from vllm import SamplingParams

        settings = self.settings
        # temperature 0 is greedy in vLLM; top_p is then ignored, as it is by `generate`. Built per call: the
        # number of tokens is the call's.
        sampling = SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                                  max_tokens=_token_limit(settings, max_new_tokens), seed=settings.seed,
                                  skip_special_tokens=True)
        token_ids = self.tokenizer([_chat_text(self.tokenizer, prompt) for prompt in prompts],
                                   add_special_tokens=False)["input_ids"]
        requests = [{"prompt_token_ids": ids} for ids in token_ids]
        outputs = self.engine.generate(requests, sampling, use_tqdm=False)
        return [Generated(output.outputs[0].text.strip(), output.outputs[0].finish_reason == "length")
                for output in outputs]


def generator_class(backend: str = "auto"):
    """The generator of `backend`: `vllm`, `transformers`, or `auto` (vLLM when it is installed and a GPU is present)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    vllm_runs = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if backend == "vllm" and not vllm_runs:
        raise ModelError("the vllm backend needs vLLM (pip install vllm) and a CUDA GPU; "
                         "--backend transformers runs anywhere")
    return VLLMGenerator if backend == "vllm" or (backend == "auto" and vllm_runs) else TransformersGenerator


def _chat_tokenizer(model_path: str):
    """The model's tokenizer, set up to render chat prompts and to pad on the left."""
    path = Path(model_path).expanduser()
    if path.is_dir() and not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise ModelError(f"{model_path}: not a model directory (no config.json)")
    tokenizer = load_tokenizer(model_path)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{model_path}: the tokenizer has no chat template to render prompts with")
    tokenizer.padding_side = "left"  # generated tokens follow every prompt directly
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _chat_text(tokenizer, prompt: str | list[dict]) -> str:
    """A user message, or a chat's messages, ready for the assistant's answer (special tokens included: it is
    tokenized without adding any)."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@contextlib.contextmanager
def _model_directory(model_path: str):
    """A directory of full weights for `model_path`: itself, the default model's converted copy, or, for
    LoRA adapters, their base model with the adapters merged, saved in a temporary directory."""
    if not (Path(model_path).expanduser() / "adapter_config.json").is_file():
        yield resolve_model_path(model_path)
        return
    with tempfile.TemporaryDirectory(prefix="iopo-fast-merged-") as directory:
        _load_causal_lm(model_path, torch.bfloat16).save_pretrained(directory)  # the precision vLLM runs at
        load_tokenizer(model_path).save_pretrained(directory)
        yield directory


def _load_causal_lm(model_path: str, dtype: torch.dtype):
    """A causal LM, or a base model with a run's LoRA adapters applied."""
    path = Path(model_path).expanduser()
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        try:
            # Merged in fp32, then cast: no rounding to `dtype` inside the merge.
            return AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32).merge_and_unload().to(dtype)
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot load the LoRA model in {model_path}: {first_line(error)}") from None
    return load_model(model_path, dtype)
