"""Shared fixtures: tiny random Llama and Qwen2 models, random examples, the real SmolLM2 tokenizer."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
    Qwen3ForCausalLM,
)

from iopo_fast import DPOExample, IOPOExample, Objective, SFTExample
from iopo_fast.distributed import free_port
from iopo_fast.evaluation.benchmarks import DEFAULT_DEMO_EVAL
from iopo_fast.model.loading import DEFAULT_MODEL, resolve_model_path

torch.set_num_threads(2)

DEMO_DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
DEMO_EVAL = DEFAULT_DEMO_EVAL  # the demo's held-out set, shipped with the package

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


def fresh_process_env() -> dict[str, str]:
    """This process's environment without the process-group variables that an in-process training run
    sets (`iopo_fast.distributed.init_distributed`): a child started with them would join this
    process's group, or take its port."""
    launcher_keys = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    return {key: value for key, value in os.environ.items() if key not in launcher_keys}


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


def random_sft_examples(count: int, vocab_size: int, generator: torch.Generator) -> list[SFTExample]:
    return [SFTExample(*example.sequences()[0]) for example in random_iopo_examples(count, vocab_size, generator)]


def permuted_roles(objective: Objective, order: tuple[int, ...]) -> Objective:
    """The same objective with its roles in another order: role k of the result is role order[k] of `objective`."""
    new_index = {old: new for new, old in enumerate(order)}
    return dataclasses.replace(
        objective, roles=tuple(objective.roles[k] for k in order), pairs=tuple(objective.pairs[k] for k in order),
        signs=tuple(objective.signs[k] for k in order), preferred=tuple(sorted(new_index[k] for k in objective.preferred)),
        comparisons={name: (new_index[a], new_index[b]) for name, (a, b) in objective.comparisons.items()})


@pytest.fixture
def generator() -> torch.Generator:
    """A freshly seeded generator: every test run draws new random inputs (the seed is printed; set
    IOPO_TEST_SEED to replay one)."""
    seed = int(os.environ.get("IOPO_TEST_SEED") or secrets.randbelow(2**31))
    print(f"random seed: {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def release_deepspeed_engines(monkeypatch):
    """Destroys every DeepSpeed engine a test builds in this process once it is over, as `train` does: ZeRO-3
    reserves gigabytes of address space per engine, and a process that holds many can no longer fork (the
    data preparation's workers do)."""
    import deepspeed

    engines = []
    initialize = deepspeed.initialize

    def recorded(*args, **kwargs):
        built = initialize(*args, **kwargs)
        engines.append(built[0])
        return built

    monkeypatch.setattr(deepspeed, "initialize", recorded)
    yield
    for engine in engines:
        engine.destroy()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from iopo_fast.model.loading import DEFAULT_MODEL, load_tokenizer

    return load_tokenizer(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer):
    """A saved tiny random Llama with the real SmolLM2 tokenizer, for end-to-end training runs."""
    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    tiny_llama(vocab_size=len(smollm2_tokenizer)).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


def training_config(model_dir, output_dir, **overrides):
    """A short run on the bundled held-out data (40 examples): constant learning rate, no resume."""
    from iopo_fast.config import TrainConfig

    settings = dict(
        model_name_or_path=str(model_dir), dataset=str(DEMO_EVAL), output_dir=str(output_dir),
        per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3, learning_rate=1e-3,
        lr_scheduler_type="constant", cutoff_len=256, resume="never",
    )
    return TrainConfig(**{**settings, **overrides})


def logged(output_dir, key: str = "loss") -> list:
    """`key` of every record of a run's metrics.jsonl."""
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)[key] for line in lines]


@pytest.fixture(scope="session")
def chat_server(tmp_path_factory):
    """(URL, served model name, log file) of `transformers serve` with the embedded model on a free port: a real
    OpenAI-compatible server, for the LLM judge and the pair builder. Its answers are poor; the clients' protocol,
    caching and resume are what it tests."""
    model = resolve_model_path(DEFAULT_MODEL)
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    command = [str(Path(sys.executable).with_name("transformers")), "serve", model, "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--dtype", "float32", "--log-level", "info"]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=fresh_process_env())
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not start: " + log.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1", model, log
    finally:
        server.terminate()
        server.wait(timeout=30)


def completions_served(log: Path) -> int:
    return log.read_text().count("POST /v1/chat/completions")


def write_lines(path: Path, records: list) -> Path:
    """A JSON-lines file of `records`; a string is written as it is (a line that is not JSON, say)."""
    path.write_text("".join((record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)) + "\n"
                            for record in records))
    return path


def completion(content: str | None):
    """A chat completion of `content`, as an OpenAI-compatible server answers."""
    import httpx2

    return httpx2.Response(200, json={"id": "1", "object": "chat.completion", "created": 0, "model": "judge", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]})


def scripted_endpoint(monkeypatch, answer) -> list[str]:
    """The endpoint's answers given in process by `answer(user message) -> httpx2.Response`, for the statuses
    and malformed answers a real local server does not give; returns the messages it was sent."""
    import httpx2
    import openai

    from iopo_fast.endpoints import client as endpoint_client

    sent = []

    def handle(request):
        sent.append(json.loads(request.content)["messages"][0]["content"])
        return answer(sent[-1])

    def client(settings):
        transport = httpx2.MockTransport(handle)
        return openai.AsyncOpenAI(base_url=settings.url, api_key="key", max_retries=0,
                                  http_client=openai.DefaultAsyncHttpx2Client(transport=transport))

    monkeypatch.setattr(endpoint_client, "_client", client)
    return sent
