"""Config loading: types, choices, unknown keys, and one-line CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from iopo_fast.cli import main
from iopo_fast.config import ConfigError, TrainConfig, load_config, options_markdown


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 5e-6\npref_beta: 1\nbf16: true\neval_dataset: null\n")
    config = load_config(path, ["--max_steps=7", "--pref_loss=ipo", "output_dir=out"])
    assert config.learning_rate == 5e-6 and config.pref_beta == 1.0 and config.bf16 is True
    assert config.max_steps == 7 and config.pref_loss == "ipo" and config.output_dir == "out"
    assert config.eval_dataset is None
    assert config.eval_max_new_tokens == 0  # each benchmark's default


@pytest.mark.parametrize("text, message", [
    ("learnig_rate: 1.0e-5\n", "unknown key 'learnig_rate'; did you mean 'learning_rate'?"),
    ("pref_loss: sigmod\n", "pref_loss: 'sigmod' is not one of sigmoid, ipo, hinge, robust"),
    ("max_steps: ten\n", "max_steps: expected int, got 'ten'"),
    ("bf16: 1\n", "bf16: expected bool, got 1"),
    ("learning_rate: fast\n", "learning_rate: expected a number, got 'fast'"),
    ("label_smoothing: 0.5\n", "label_smoothing: must be in [0, 0.5), got 0.5"),
    ("per_device_train_batch_size: 0\n", "per_device_train_batch_size: must be positive, got 0"),
    ("eval_max_new_tokens: -1\n", "eval_max_new_tokens: must be >= 0 (0: each benchmark's default), got -1"),
    ("eval_benchmarks: demo,mmlu\n", "eval_benchmarks: unknown benchmark 'mmlu': expected demo, demo:PATH, ifbench, "
                                     "ifeval, jsonl:PATH or judge:PATH"),
    ("eval_benchmarks: judge:trace.jsonl\n", "eval_benchmarks: judge:trace.jsonl needs an LLM judge"),
    ("- a\n- b\n", "a config file must be a mapping"),
])
def test_bad_config_values_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unknown_override_names_the_nearest_key():
    with pytest.raises(ConfigError, match="the command line: unknown key 'pref_beat'; did you mean 'pref_beta'"):
        load_config(None, ["--pref_beat=0.2"])


@pytest.mark.parametrize("config_text, extra, message", [
    (None, [], "no such config file"),
    ("dataset: {tmp}/absent.jsonl\n", [], "absent.jsonl: no such data file"),
    ("model_name_or_path: {tmp}/no-model\n", [], "no-model: no such model directory"),
    ("max_steps: 1\n", ["--warmup_ratio=2"], "warmup_ratio: must be in [0, 1], got 2.0"),
    ("attention_backend: flash_attn\n", [], "attention backend 'flash_attn' cannot run: it needs a CUDA device"),
    ("max_steps: 1\n", ["--output_dir={tmp}/c.yaml"], "output_dir: {tmp}/c.yaml is a file, not a folder"),
])
def test_cli_errors_are_one_line_without_a_traceback(tmp_path, capsys, config_text, extra, message):
    path = tmp_path / "c.yaml"
    extra, message = [argument.format(tmp=tmp_path) for argument in extra], message.format(tmp=tmp_path)
    if config_text is not None:
        path.write_text(config_text.format(tmp=tmp_path) + f"output_dir: {tmp_path}/out\n")
    assert main(["train", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iopo-fast: error: ") and message in err and err.count("\n") == 1


def test_options_table_lists_every_field():
    table = options_markdown()
    for name in TrainConfig.__dataclass_fields__:
        assert f"| `{name}` |" in table


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")),
                         ids=lambda path: path.stem)
def test_example_configs_are_valid(path, monkeypatch):
    monkeypatch.chdir(path.parents[1])  # their data paths are relative to the repository root
    config = load_config(path)
    assert Path(config.dataset).is_file() and Path(config.eval_dataset).is_file()
    assert config.loss == "iopo" and config.pref_beta > 0
