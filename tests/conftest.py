"""Shared fixtures: tiny random Llama and Qwen2 models, random examples, the real SmolLM2 tokenizer."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
import torch
from transformers import (
    LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
    Qwen3ForCausalLM,
)

from iopo_fast import DPOExample, IOPOExample

torch.set_num_threads(2)

# Triton kernels run on CUDA, or on CPU tensors when TRITON_INTERPRET=1 was set before triton was
# imported. Triton 3.9 decorates its own helpers (`tl.zeros`, ...) at `import triton`, and this file
# imports it (through iopo_fast), so on a CPU machine the Triton cases rerun in a fresh process.
TRITON_RUNS_HERE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
triton_only = pytest.mark.skipif(not TRITON_RUNS_HERE, reason="reruns under the interpreter in a subprocess")


def rerun_under_triton_interpreter(test_file: str, selection: str) -> None:
    """Run the tests of `test_file` that match `selection` (pytest -k) in a process with TRITON_INTERPRET=1."""
    command = [sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider", "-k", selection]
    result = subprocess.run(command, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary, summary


def tiny_llama(vocab_size: int = 96) -> LlamaForCausalLM:
    """Llama with GQA (4 query heads, 2 key/value heads) and an untied LM head."""
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).float()


def tiny_qwen2(vocab_size: int = 96) -> Qwen2ForCausalLM:
    """Qwen2 with attention biases and the LM head tied to the embedding."""
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config).float()


def tiny_mistral(vocab_size: int = 96) -> MistralForCausalLM:
    config = MistralConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
    )
    return MistralForCausalLM(config).float()


def tiny_qwen3(vocab_size: int = 96) -> Qwen3ForCausalLM:
    """Qwen3: per-head RMSNorm on queries and keys, an explicit head_dim."""
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(config).float()


TINY_MODELS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "mistral": tiny_mistral, "qwen3": tiny_qwen3}


def random_ids(length: int, vocab_size: int, generator: torch.Generator) -> list[int]:
    return torch.randint(0, vocab_size, (length,), generator=generator).tolist()


def random_iopo_examples(count: int, vocab_size: int, generator: torch.Generator) -> list[IOPOExample]:
    """Examples of different lengths, including length-1 prompts and responses."""
    def length() -> int:
        return int(torch.randint(1, 12, (1,), generator=generator))

    return [
        IOPOExample(*(random_ids(length(), vocab_size, generator) for _ in range(4))) for _ in range(count)
    ]


def random_dpo_examples(count: int, vocab_size: int, generator: torch.Generator) -> list[DPOExample]:
    return [DPOExample(*example.sequences()[0], example.response2)
            for example in random_iopo_examples(count, vocab_size, generator)]


@pytest.fixture
def generator() -> torch.Generator:
    """A freshly seeded generator: every test run draws new random inputs (the seed is printed)."""
    seed = secrets.randbelow(2**31)
    print(f"random seed: {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from iopo_fast.model import DEFAULT_MODEL, load_tokenizer

    return load_tokenizer(DEFAULT_MODEL)
