"""The training configuration: one dataclass whose fields carry their documentation.

The YAML keys, the `--key=value` overrides of the CLI, the option table of the README
(`iopo-fast options --markdown`) and the unknown-key error all come from `TrainConfig`. Names follow
LLaMA-Factory and TRL where they have one (`pref_beta`, `pref_loss`, `cutoff_len`, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data import LOSS_MODES
from .loss import LOSS_TYPES
from .model import DEFAULT_MODEL

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


class ConfigError(ValueError):
    """A configuration problem; the message is one line naming the key or file and the reason."""


def _option(default, help: str, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    # Model and data
    model_name_or_path: str = _option(DEFAULT_MODEL, "Hugging Face path or hub id; the default is the embedded SmolLM2-135M-Instruct.")
    dataset: str = _option("examples/data/train.jsonl", "Training records: JSON array or JSON Lines (formats in the README).")
    eval_dataset: str | None = _option(None, "Held-out records, evaluated before and after training.")
    output_dir: str = _option("outputs/iopo", "Where metrics, rejected records and the final model are written.")
    cutoff_len: int = _option(1024, "Longest (prompt, response) sequence in tokens; prompts are cut from the start to fit.")
    strict: bool = _option(False, "Fail on the first bad record instead of skipping it into rejected_records.jsonl.")
    # Objective
    loss: str = _option("iopo", "iopo: quadruples (x1, x2, y1, y2); dpo: (prompt, chosen, rejected) pairs.", LOSS_MODES)
    reference: str = _option("live", "live: a frozen copy of the initial model; none: reference-free.", ("live", "none"))
    pref_beta: float = _option(0.1, "beta of the Bradley-Terry loss.")
    pref_loss: str = _option("sigmoid", "Loss of the margin z.", LOSS_TYPES)
    label_smoothing: float = _option(0.0, "Label smoothing eps of the sigmoid and robust losses, in [0, 0.5).")
    pref_ftx: float = _option(0.0, "Weight of the SFT term on the preferred responses.")
    # Optimisation
    learning_rate: float = _option(5e-6, "AdamW peak learning rate.")
    lr_scheduler_type: str = _option("cosine", "Learning-rate schedule after warm-up.", SCHEDULERS)
    warmup_ratio: float = _option(0.0, "Fraction of the steps spent warming up linearly.")
    weight_decay: float = _option(0.0, "AdamW weight decay.")
    max_grad_norm: float = _option(1.0, "Gradient clipping norm; 0 disables clipping.")
    num_train_epochs: float = _option(1.0, "Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = _option(-1, "Optimizer steps; > 0 overrides num_train_epochs.")
    per_device_train_batch_size: int = _option(4, "Examples per micro-batch.")
    gradient_accumulation_steps: int = _option(1, "Micro-batches per optimizer step.")
    per_device_eval_batch_size: int = _option(8, "Examples per evaluation batch.")
    max_tokens_per_micro_batch: int = _option(0, "Token budget of a packed micro-batch: the examples of a step are bin-packed into as few micro-batches as fit. 0: micro-batches of per_device_train_batch_size examples.")
    attention_backend: str = _option("auto", "Varlen attention over packed batches; auto: flash_attn, else torch_varlen on CUDA, else reference.", ("auto", "flash_attn", "torch_varlen", "reference"))
    liger_kernels: bool = _option(True, "On GPU, Liger-Kernel's RMSNorm, RoPE and SwiGLU kernels in the model's layers.")
    logprob_impl: str = _option("auto", "Fused log-prob kernel; auto: triton on CUDA, else chunked PyTorch.", ("auto", "triton", "chunked"))
    bf16: bool = _option(False, "Train in bfloat16 (the log-prob kernel accumulates in fp32).")
    gradient_checkpointing: bool = _option(False, "Recompute each decoder layer in the backward to save activation memory.")
    seed: int = _option(42, "Seed of the data order and of any random initialisation.")
    logging_steps: int = _option(1, "Write metrics.jsonl every this many steps.")

    def __post_init__(self):
        for item in dataclasses.fields(self):
            choices = item.metadata["choices"]
            if choices and getattr(self, item.name) not in choices:
                raise ConfigError(f"{item.name}: {getattr(self, item.name)!r} is not one of {', '.join(choices)}")
        positive = ("cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps",
                    "per_device_eval_batch_size", "logging_steps", "pref_beta", "learning_rate")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.max_tokens_per_micro_batch < 0:
            raise ConfigError(f"max_tokens_per_micro_batch: must be >= 0, got {self.max_tokens_per_micro_batch}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError(f"warmup_ratio: must be in [0, 1], got {self.warmup_ratio}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("set max_steps or num_train_epochs to a positive value")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """A `TrainConfig` from a YAML file and `key=value` (or `--key=value`) overrides, validated."""
    values: dict[str, object] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
        values.update((_check_key(key, path), value) for key, value in loaded.items())
    for override in overrides:
        key, sep, text = override.removeprefix("--").partition("=")
        if not sep:
            raise ConfigError(f"override {override!r}: expected --key=value")
        values[_check_key(key, "the command line")] = yaml.safe_load(text) if text else ""
    types = typing.get_type_hints(TrainConfig)
    return TrainConfig(**{key: _coerce(key, value, types[key]) for key, value in values.items()})


def options_markdown() -> str:
    """The option table of the README."""
    rows = ["| key | default | description |", "|---|---|---|"]
    for item in dataclasses.fields(TrainConfig):
        choices = item.metadata["choices"]
        help_text = item.metadata["help"] + (f" One of: {', '.join(choices)}." if choices else "")
        rows.append(f"| `{item.name}` | `{item.default}` | {help_text} |")
    return "\n".join(rows)


def _check_key(key: object, where: object) -> str:
    names = [item.name for item in dataclasses.fields(TrainConfig)]
    if key in names:
        return key
    nearest = difflib.get_close_matches(str(key), names, n=1, cutoff=0.0)
    raise ConfigError(f"{where}: unknown key {key!r}; did you mean {nearest[0]!r}?")


def _coerce(key: str, value: object, annotation) -> object:
    """`value` as the field's type; ints are accepted for floats, None only for optional fields."""
    allowed = typing.get_args(annotation) or (annotation,)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads 5e-6 (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if int in allowed and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if str in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tuple(t for t in allowed if t is not type(None))):
        expected = " or ".join(t.__name__ for t in allowed)
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    return value
