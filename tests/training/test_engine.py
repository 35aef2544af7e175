"""The DeepSpeed engine: ZeRO stages, two ranks, CPU offload and a user's DeepSpeed JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM
from conftest import fresh_process_env, logged, training_config

from iopo_fast.config import ConfigError, TrainConfig
from iopo_fast.distributed import free_port
from iopo_fast.training.engine import deepspeed_config
from iopo_fast.training.loop import train

# Token-budget micro-batches above the longest example of the demo eval set (412 packed tokens).
TOKENS_PER_MICRO_BATCH = 450


@pytest.fixture(scope="module")
def zero0_run(tiny_model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("zero0")
    train(training_config(tiny_model_dir, output_dir, max_tokens_per_micro_batch=TOKENS_PER_MICRO_BATCH))
    return output_dir


@pytest.mark.parametrize("settings", [
    {"zero_stage": 1}, {"zero_stage": 2}, {"zero_stage": 3}, {"zero_stage": 3, "reference": "precomputed"},
    {"zero_stage": 3, "offload_optimizer": True, "offload_param": True},
])
def test_zero_stages_train_the_same(tiny_model_dir, tmp_path, zero0_run, settings):
    """The same losses and gradient norms (taken by DeepSpeed under ZeRO, by the loop without it)."""
    train(training_config(tiny_model_dir, tmp_path, max_tokens_per_micro_batch=TOKENS_PER_MICRO_BATCH, **settings))
    assert logged(tmp_path) == pytest.approx(logged(zero0_run), abs=2e-6)
    # fp32 norms summed in another order: DESIGN.md's fp32 gradient tolerance, 1e-4 relative.
    assert logged(tmp_path, "grad_norm") == pytest.approx(logged(zero0_run, "grad_norm"), rel=1e-4)


def test_bf16_without_zero_reports_the_norm_of_the_whole_steps_gradient(tiny_model_dir, tmp_path):
    """Without ZeRO, DeepSpeed's bf16 optimizer (on GPU) accumulates the micro-batches (2 here) in its own
    fp32 buffers, not in the parameters' gradients: the norm must be the one it takes."""
    for stage in (0, 2):
        train(training_config(tiny_model_dir, tmp_path / str(stage), bf16=True, zero_stage=stage, max_steps=1))
    assert logged(tmp_path / "0", "grad_norm") == pytest.approx(logged(tmp_path / "2", "grad_norm"), rel=2e-2)


def run_cli(launcher: list[str], settings: dict, path) -> None:
    """`iopo-fast train` on `settings` (written to `path`), `launcher` running the module; fails with the
    run's output."""
    path.write_text(yaml.safe_dump(settings))
    result = subprocess.run([*launcher, "iopo_fast.cli", "train", str(path)], capture_output=True, text=True,
                            timeout=300, env=fresh_process_env())
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]


def two_rank_settings(tiny_model_dir, output_dir, **overrides) -> dict:
    """ZeRO-3 steps of 4 examples in token-budget micro-batches, as 2 ranks of 2 examples by default."""
    settings = dict(max_tokens_per_micro_batch=TOKENS_PER_MICRO_BATCH, zero_stage=3, gradient_accumulation_steps=1,
                    per_device_train_batch_size=2, max_steps=4)
    return training_config(tiny_model_dir, output_dir, **{**settings, **overrides}).__dict__


@pytest.fixture(scope="module")
def one_rank_run(tiny_model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("one-rank")
    run_cli([sys.executable, "-m"], two_rank_settings(tiny_model_dir, output_dir, per_device_train_batch_size=4),
            output_dir.parent / "one-rank.yaml")
    return output_dir


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_two_ranks_with_zero3_match_one_rank_with_the_same_global_batch(tiny_model_dir, tmp_path, one_rank_run,
                                                                         launcher):
    """Two gloo ranks of 2 examples per micro-batch against one rank of 4, under either launcher."""
    command = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"],
        # The deepspeed launcher passes --local_rank to the CLI, before its command.
        "deepspeed": [str(Path(sys.executable).with_name("deepspeed")), "--num_accelerators=2",
                      f"--master_port={free_port()}", "--module"],
    }[launcher]
    run_cli(command, two_rank_settings(tiny_model_dir, tmp_path / "two"), tmp_path / "two.yaml")

    assert logged(tmp_path / "two") == pytest.approx(logged(one_rank_run), abs=1e-5)
    # The gradient's norm before clipping: a wrong scale across ranks shows here (Adam would hide it).
    assert logged(tmp_path / "two", "grad_norm") == pytest.approx(logged(one_rank_run, "grad_norm"), rel=1e-4)
    for two, one in zip(logged(tmp_path / "two", "examples"), logged(one_rank_run, "examples")):
        assert sorted(two) == sorted(one)


@pytest.fixture(scope="module")
def wider_model_dir(tmp_path_factory, smollm2_tokenizer):
    """tiny_model_dir's Llama twice as wide, so that its MLP matrices (128 x 64) get 8-bit states."""
    path = tmp_path_factory.mktemp("wider-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=False)).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return path


def test_8bit_states_on_two_ranks_train_as_one_rank(wider_model_dir, smollm2_tokenizer, tmp_path):
    """torchao's AdamW8bit without ZeRO on two gloo ranks (each steps the averaged gradient) against one rank
    with the same global batch; the checkpoint holds the 8-bit states, and the embeddings' fp32 ones."""
    for name, launcher, batch in (("one", [sys.executable, "-m"], 4), ("two", [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"], 2)):
        settings = two_rank_settings(wider_model_dir, tmp_path / name, zero_stage=0, optim="adamw_torch_8bit",
                                     per_device_train_batch_size=batch, save_steps=2)
        run_cli(launcher, settings, tmp_path / f"{name}.yaml")

    assert logged(tmp_path / "two") == pytest.approx(logged(tmp_path / "one"), abs=1e-5)
    assert logged(tmp_path / "two", "grad_norm") == pytest.approx(logged(tmp_path / "one", "grad_norm"), rel=1e-4)
    saved = torch.load(tmp_path / "two" / "checkpoints" / "step-000002" / "mp_rank_00_model_states.pt",
                       weights_only=False)
    kinds = {}  # by shape: 8-bit states are saved as their codes and scales
    for state in saved["optimizer"]["state"].values():
        exp_avg = state["exp_avg"]
        shape, kind = (exp_avg["codes"].shape, "8-bit") if isinstance(exp_avg, dict) else (exp_avg.shape, exp_avg.dtype)
        kinds.setdefault(tuple(shape), set()).add(kind)
    assert kinds[(128, 64)] == {"8-bit"} and kinds[(len(smollm2_tokenizer), 64)] == {torch.float32}


def test_an_evaluation_failing_on_the_main_rank_stops_every_rank(tiny_model_dir, tmp_path):
    """The main rank evaluates alone; when it fails, the other rank stops too, with the same error, instead of
    waiting for it."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"key": "q1", "prompt": "Say hi."}\n')  # no constraints: the evaluation refuses it
    settings = two_rank_settings(tiny_model_dir, tmp_path / "two", eval_benchmarks=f"jsonl:{prompts}")
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "iopo_fast.cli", "train", str(tmp_path / "two.yaml")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=fresh_process_env())
    assert result.returncode != 0
    assert result.stderr.count(f"iopo-fast: error: {prompts}:1: needs instruction_id_list") == 2  # every rank says why


def test_a_deepspeed_json_gets_its_auto_values_and_the_loop_owns_the_batch_keys(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({
        "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "betas": [0.9, 0.95]}},
        "bf16": {"enabled": "auto"}, "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "scheduler": {"type": "WarmupLR"},
    }))
    config = TrainConfig(deepspeed=str(path), learning_rate=3e-5, weight_decay=0.1, bf16=True,
                         per_device_train_batch_size=2, gradient_accumulation_steps=8)
    ds_config = deepspeed_config(config, world_size=4)
    assert ds_config["optimizer"]["params"] == {"lr": 3e-5, "weight_decay": 0.1, "betas": [0.9, 0.95]}
    assert ds_config["bf16"] == {"enabled": True, "check_grad_overflow": True}
    assert ds_config["gradient_accumulation_steps"] == 1 and ds_config["train_batch_size"] == 8
    assert "scheduler" not in ds_config and ds_config["zero_optimization"]["stage"] == 3
    assert ds_config["gradient_clipping"] == 1.0  # absent from the JSON: max_grad_norm


@pytest.mark.parametrize("json_config, expected", [
    ({"gradient_clipping": 0.3}, {"gradient_clipping": 0.3, "zero_optimization": {"stage": 0}}),
    ({"gradient_clipping": "auto", "zero_optimization": {"stage": 2}},
     {"gradient_clipping": 1.0, "zero_optimization": {"stage": 2}}),
])
def test_a_deepspeed_json_keeps_its_own_values(tmp_path, json_config, expected):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(json_config))
    ds_config = deepspeed_config(TrainConfig(deepspeed=str(path)), world_size=1)
    assert {key: ds_config[key] for key in expected} == expected


@pytest.mark.parametrize("json_config, message", [
    ({"bf16": {"enabled": True}}, "bf16.enabled is True, but bf16 is False"),
    ({"fp16": {"enabled": True}}, "fp16 is not supported"),
    ("{not json", "invalid JSON"),
])
def test_a_deepspeed_json_that_disagrees_is_a_config_error(tmp_path, json_config, message):
    path = tmp_path / "ds.json"
    path.write_text(json_config if isinstance(json_config, str) else json.dumps(json_config))
    with pytest.raises(ConfigError, match=message):
        deepspeed_config(TrainConfig(deepspeed=str(path)), world_size=1)
