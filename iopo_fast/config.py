"""The training configuration: one dataclass whose fields carry their documentation.

The YAML keys, the `--key=value` overrides of the CLI, the option table of docs/configuration.md
(`iopo-fast options --markdown`) and the unknown-key error all come from `TrainConfig`. Names follow
LLaMA-Factory and TRL where they have one (`pref_beta`, `pref_loss`, `cutoff_len`, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .data.records import LOSS_MODES
from .generation.settings import DTYPES as GENERATION_DTYPES
from .loss import LOSS_TYPES, OBJECTIVES, PreferenceLoss, SFTLoss
from .model.attention import BACKENDS, current_backend_name
from .model.loading import DEFAULT_MODEL
from .utils import first_line

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw_torch", "adamw_torch_8bit")  # Hugging Face TrainingArguments' names
_OPTIMIZER_KEYS = ("optim", "optimizer_in_backward", "pure_bf16")  # what decides the form of the optimizer's states


class ConfigError(ValueError):
    """A configuration problem; the message is one line naming the key or file and the reason."""


def _option(default, help: str, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    # Model and data
    model_name_or_path: str = _option(DEFAULT_MODEL, "Hugging Face path or hub id; the default is the embedded SmolLM2-135M-Instruct.")
    dataset: str = _option("examples/data/train.jsonl", "Training records, or several data sets mixed, comma-separated (see interleave_probs): a .jsonl, .json or .parquet file, a folder of them, a saved datasets data set, a Hub data set (name or name:split), or a name in dataset_dir/dataset_info.json (formats in docs/data.md).")
    eval_dataset: str | None = _option(None, "Held-out records, the same kinds as dataset; evaluated before and after training (and every eval_steps).")
    interleave_probs: str | None = _option(None, "With several comma-separated datasets: the fraction of the training examples each gives, comma-separated (e.g. 0.7,0.3); as many examples as these proportions allow without repeating one. None: every example of every data set.")
    dataset_dir: str | None = _option(None, "A folder with LLaMA-Factory's dataset_info.json: dataset and eval_dataset may then be its entry names.")
    output_dir: str = _option("outputs/iopo", "Where metrics, rejected records and the final model are written.")
    cutoff_len: int = _option(1024, "Longest (prompt, response) sequence in tokens; prompts are cut from the start to fit.")
    preprocessing_num_workers: int = _option(0, "Processes that tokenize a data set the first time it is used (it is then cached by content, tokenizer, cutoff_len and loss); 0: one per CPU core.")
    strict: bool = _option(False, "Fail on the first bad record instead of skipping it into rejected_records.jsonl.")
    # Objective
    loss: str = _option("iopo", "iopo: quadruples (x1, x2, y1, y2); dpo: (prompt, chosen, rejected) pairs; sft: the preferred responses alone ((x1, y1) and (x2, y2), or (prompt, chosen)), negative log-likelihood per token, no reference model.", LOSS_MODES)
    reference: str = _option("live", "live: the initial model scored beside the policy (with LoRA, the policy with its adapters disabled); precomputed: scored once before training and cached in output_dir, no second model in memory; none: reference-free.", ("live", "precomputed", "none"))
    pref_beta: float = _option(0.1, "beta of the Bradley-Terry loss.")
    pref_loss: str = _option("sigmoid", "Loss of the margin z.", LOSS_TYPES)
    label_smoothing: float = _option(0.0, "Label smoothing eps of the sigmoid and robust losses, in [0, 0.5).")
    pref_ftx: float = _option(0.0, "Weight of the SFT term on the preferred responses.")
    # Fine-tuning method
    finetuning_type: str = _option("full", "full: train every parameter; lora: train PEFT LoRA adapters.", ("full", "lora"))
    lora_rank: int = _option(8, "LoRA rank r.")
    lora_alpha: float = _option(16.0, "LoRA scaling alpha (the update is alpha / r * B A).")
    lora_dropout: float = _option(0.0, "Dropout on the LoRA input.")
    lora_target: str = _option("all", "Modules that get adapters: all (every linear layer but the LM head) or comma-separated names such as q_proj,v_proj.")
    lora_merge_on_export: bool = _option(False, "Save the final model with the adapters merged into the weights (the adapters alone go to output_dir/adapter).")
    # Optimisation
    learning_rate: float = _option(5e-6, "AdamW peak learning rate.")
    lr_scheduler_type: str = _option("cosine", "Learning-rate schedule after warm-up.", SCHEDULERS)
    warmup_ratio: float = _option(0.0, "Fraction of the steps spent warming up linearly.")
    weight_decay: float = _option(0.0, "AdamW weight decay.")
    max_grad_norm: float = _option(1.0, "Gradient clipping norm; 0 disables clipping.")
    optim: str = _option("adamw_torch", "The optimizer. adamw_torch: AdamW with fp32 states (8 bytes a parameter; PyTorch's, or torchao's under pure_bf16); adamw_torch_8bit: torchao's AdamW8bit, 8-bit states in blocks of 256 values (2 bytes a parameter; the embedding, the LM head and tensors under 4,096 values keep fp32 states). torchao steps whole tensors: 8-bit states need zero_stage 0 and, with bf16, optimizer_in_backward or pure_bf16.", OPTIMIZERS)
    optimizer_in_backward: bool = _option(False, "Step each parameter inside the backward as soon as its gradient is ready, then free that gradient: no gradient of the whole model is held. bf16 parameters keep fp32 master copies (unless pure_bf16). Needs one process, zero_stage 0, one micro-batch per step (gradient_accumulation_steps 1, max_tokens_per_micro_batch 0) and max_grad_norm 0.")
    pure_bf16: bool = _option(False, "With bf16: no fp32 master weights; the optimizer updates the bf16 weights in place with stochastic rounding (torchao), so that updates below half a bf16 step are kept on average. Gradients accumulate in bf16. Needs zero_stage 0.")
    num_train_epochs: float = _option(1.0, "Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = _option(-1, "Optimizer steps; > 0 overrides num_train_epochs.")
    per_device_train_batch_size: int = _option(4, "Examples per micro-batch.")
    gradient_accumulation_steps: int = _option(1, "Micro-batches per optimizer step.")
    per_device_eval_batch_size: int = _option(8, "Examples per evaluation batch.")
    max_tokens_per_micro_batch: int = _option(0, "Token budget of a packed micro-batch: the examples of a step are bin-packed into as few micro-batches as fit. 0: micro-batches of per_device_train_batch_size examples.")
    attention_backend: str = _option("auto", "Varlen attention over packed batches; auto: flash_attn, else torch_varlen on CUDA, else per_segment_sdpa (per-segment scaled_dot_product_attention, any device; formerly reference).", BACKENDS)
    liger_kernels: bool = _option(True, "On GPU, Liger-Kernel's RMSNorm, RoPE and SwiGLU kernels in the model's layers.")
    logprob_impl: str = _option("auto", "LM-head log-prob kernel; auto: triton on CUDA, else chunked PyTorch; full_logits: the naive full-logits computation (a baseline, recompute only).", ("auto", "triton", "chunked", "full_logits"))
    logprob_algorithm: str = _option("recompute", "How the loss meets the LM head. recompute: log-probs with O(tokens) memory, the backward recomputes the logits (8 T D V FLOPs); example_chunks: the loss and its gradient formed in one pass, chunk by chunk of whole examples (6 T D V FLOPs, O(chunk x vocabulary) transient memory).", ("recompute", "example_chunks"))
    max_chunk_logits: int = _option(0, "Bound on the logits one chunk of the LM-head kernels holds (tokens x vocabulary); 0: 2^25 for the Triton backward's logits gradient, and for the fp32 logits of the PyTorch twin and of example_chunks 2^28 on CUDA, 2^22 on CPU.")
    bf16: bool = _option(False, "Train in bfloat16 (the log-prob kernel accumulates in fp32).")
    gradient_checkpointing: bool = _option(False, "Recompute each decoder layer in the backward to save activation memory.")
    # DeepSpeed
    deepspeed: str | None = _option(None, "A DeepSpeed JSON config; its \"auto\" values and the batch keys are filled from this config. Unset: built from the keys below.")
    zero_stage: int = _option(0, "ZeRO stage: 0 (data parallel), 1 (optimizer states), 2 (+gradients), 3 (+parameters) partitioned over ranks.", (0, 1, 2, 3))
    offload_optimizer: bool = _option(False, "Keep the optimizer states and fp32 master weights in host memory (ZeRO 1-3).")
    offload_param: bool = _option(False, "Keep the parameters in host memory between uses (ZeRO-3).")
    # Checkpoints and monitoring
    save_steps: int = _option(500, "Checkpoint every this many steps (0: only on SIGTERM); model, optimizer, scheduler, RNG and data position.")
    save_total_limit: int = _option(2, "Checkpoints kept; older ones are deleted once a newer one is complete.")
    resume: str = _option("auto", "auto: continue from the newest complete checkpoint in output_dir if there is one; never: start afresh.", ("auto", "never"))
    max_nonfinite_steps: int = _option(5, "A step with a non-finite loss is skipped; this many in a row stop the run.")
    report_to: str = _option("none", "Also log the metrics to TensorBoard (output_dir/tensorboard) or Weights & Biases (wandb_project; WANDB_MODE=offline works without a network).", ("none", "tensorboard", "wandb"))
    wandb_project: str = _option("iopo-fast", "The Weights & Biases project of report_to: wandb.")
    seed: int = _option(42, "Seed of the data order and of any random initialisation.")
    logging_steps: int = _option(1, "Write metrics.jsonl every this many steps.")
    eval_benchmarks: str | None = _option(None, "Instruction-following benchmarks run on the initial and on the trained model (`iopo-fast eval`), comma-separated: demo, demo:PATH, ifbench, ifeval, jsonl:PATH; results in output_dir/eval/before and output_dir/eval/after.")
    eval_dtype: str = _option("float32", "The dtype eval_benchmarks generate in: float32, whose greedy responses were measured not to depend on per_device_eval_batch_size on CPU; bfloat16, half the memory of the second copy of the model that generates beside the training engine, with scores that move with the batch.", GENERATION_DTYPES)
    eval_max_new_tokens: int = _option(0, "Longest response generated for eval_benchmarks, in tokens (greedy decoding, per_device_eval_batch_size rows at a time, a row that ends taking the next prompt); 0: each benchmark's default (demo 256, ifbench and ifeval 1280, jsonl 1280).")
    eval_steps: int = _option(0, "Evaluate the eval_dataset every this many steps, into metrics.jsonl as eval/<metric>; 0: before and after training only.")

    def mixture_proportions(self) -> list[float] | None:
        """`interleave_probs` as floats, one per comma-separated `dataset`; None without it."""
        if self.interleave_probs is None:
            return None
        try:
            proportions = [float(p) for p in str(self.interleave_probs).split(",")]
        except ValueError:
            raise ConfigError(f"interleave_probs: expected comma-separated numbers, got {self.interleave_probs!r}") from None
        count = len(self.dataset.split(","))
        if len(proportions) != count or min(proportions) <= 0 or abs(sum(proportions) - 1) > 1e-6:
            raise ConfigError(f"interleave_probs: {count} positive fractions summing to 1 are needed (one per dataset), "
                              f"got {self.interleave_probs!r}")
        return proportions

    @property
    def reference_mode(self) -> str:
        """`reference`, or none with the SFT loss, which has no reference model."""
        return "none" if self.loss == "sft" else self.reference

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype the models are loaded and trained in."""
        return torch.bfloat16 if self.bf16 else torch.float32

    def optimizer_settings(self) -> dict:
        """The keys that decide the optimizer's states, which a resumed run must keep."""
        return {name: getattr(self, name) for name in _OPTIMIZER_KEYS}

    @staticmethod
    def default_optimizer_settings() -> dict:
        """`optimizer_settings` of a config that leaves them at their defaults."""
        return {item.name: item.default for item in dataclasses.fields(TrainConfig) if item.name in _OPTIMIZER_KEYS}

    @property
    def deepspeed_bf16(self) -> bool:
        """Whether DeepSpeed's bf16 optimizer wraps the optimizer, with its fp32 master weights and gradient
        buffers: with bf16, unless pure_bf16 or optimizer_in_backward, which keep their own precision."""
        return self.bf16 and not (self.pure_bf16 or self.optimizer_in_backward)

    def preference_loss(self) -> PreferenceLoss | SFTLoss:
        """The objective of `loss` with its hyper-parameters."""
        if self.loss == "sft":
            return SFTLoss()
        return PreferenceLoss(OBJECTIVES[self.loss], beta=self.pref_beta, loss_type=self.pref_loss,
                              label_smoothing=self.label_smoothing, ftx=self.pref_ftx)

    def total_steps(self, num_examples: int, examples_per_step: int) -> int:
        """`max_steps`, or the steps of `num_train_epochs` passes over `num_examples`."""
        if self.max_steps > 0:
            return self.max_steps
        return math.ceil(self.num_train_epochs * math.ceil(num_examples / examples_per_step))

    def lora_settings(self) -> dict | None:
        """`apply_lora`'s keywords with `finetuning_type: lora`, else None."""
        if self.finetuning_type != "lora":
            return None
        return {"rank": self.lora_rank, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
                "target": self.lora_target}

    def benchmark_list(self) -> list[str]:
        """`eval_benchmarks` as a list; empty without it."""
        from .evaluation.benchmarks import BenchmarkError, parse_benchmark

        benchmarks = [name.strip() for name in (self.eval_benchmarks or "").split(",") if name.strip()]
        for spec in benchmarks:
            try:
                kind, _ = parse_benchmark(spec)
            except BenchmarkError as error:
                raise ConfigError(f"eval_benchmarks: {error}") from None
            if kind == "judge":
                raise ConfigError(f"eval_benchmarks: {spec} needs an LLM judge: run it on the trained model "
                                  f"with `iopo-fast eval MODEL --benchmarks {spec} --judge-url ... --judge-model ...`")
        return benchmarks

    def __post_init__(self):
        self.attention_backend = current_backend_name(self.attention_backend)
        for item in dataclasses.fields(self):
            choices = item.metadata["choices"]
            if choices and getattr(self, item.name) not in choices:
                raise ConfigError(f"{item.name}: {getattr(self, item.name)!r} is not one of {', '.join(map(str, choices))}")
        positive = ("cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps",
                    "per_device_eval_batch_size", "logging_steps", "pref_beta", "learning_rate", "lora_rank",
                    "save_total_limit", "max_nonfinite_steps")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.interleave_probs is not None:
            self.mixture_proportions()  # checked here, used by the loader
        self.benchmark_list()  # checked here, used before and after training
        if self.eval_steps < 0:
            raise ConfigError(f"eval_steps: must be >= 0, got {self.eval_steps}")
        if self.eval_steps and self.eval_dataset is None:
            raise ConfigError("eval_steps: needs an eval_dataset")
        if self.eval_max_new_tokens < 0:
            raise ConfigError(f"eval_max_new_tokens: must be >= 0 (0: each benchmark's default), got {self.eval_max_new_tokens}")
        if self.save_steps < 0:
            raise ConfigError(f"save_steps: must be >= 0, got {self.save_steps}")
        self._check_optimizer_settings()
        if self.offload_param and self.zero_stage != 3 and self.deepspeed is None:
            raise ConfigError("offload_param: needs zero_stage: 3")
        if self.offload_optimizer and self.zero_stage == 0 and self.deepspeed is None:
            raise ConfigError("offload_optimizer: needs zero_stage 1, 2 or 3")
        if self.deepspeed is not None and not Path(self.deepspeed).is_file():
            raise ConfigError(f"deepspeed: {self.deepspeed}: no such file")
        if self.max_tokens_per_micro_batch < 0:
            raise ConfigError(f"max_tokens_per_micro_batch: must be >= 0, got {self.max_tokens_per_micro_batch}")
        if self.preprocessing_num_workers < 0:
            raise ConfigError(f"preprocessing_num_workers: must be >= 0, got {self.preprocessing_num_workers}")
        if self.max_chunk_logits < 0:
            raise ConfigError(f"max_chunk_logits: must be >= 0, got {self.max_chunk_logits}")
        if self.logprob_impl == "full_logits" and self.logprob_algorithm != "recompute":
            raise ConfigError("logprob_impl: full_logits runs with logprob_algorithm: recompute only")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError(f"warmup_ratio: must be in [0, 1], got {self.warmup_ratio}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("set max_steps or num_train_epochs to a positive value")
        output_dir = Path(self.output_dir).absolute()
        existing = next(path for path in (output_dir, *output_dir.parents) if path.exists())
        if not existing.is_dir():
            raise ConfigError(f"output_dir: {existing} is a file, not a folder")

    def _check_optimizer_settings(self) -> None:
        """Refuse the settings that `optim`, `optimizer_in_backward` and `pure_bf16` cannot honour."""
        if self.pure_bf16 and not self.bf16:
            raise ConfigError("pure_bf16: needs bf16: true")
        for key, value in (("optim", self.optim == "adamw_torch_8bit"), ("pure_bf16", self.pure_bf16)):
            if value and importlib.util.find_spec("torchao") is None:
                raise ConfigError(f"{key}: {getattr(self, key)} runs torchao's optimizers: pip install 'iopo-fast[torchao]'")
        with_zero = self.zero_stage != 0 or self.deepspeed is not None
        for key in ("optimizer_in_backward", "pure_bf16"):
            if getattr(self, key) and with_zero:
                raise ConfigError(f"{key}: runs without ZeRO, which keeps fp32 partitions of its own: set zero_stage: 0 "
                                  "and leave deepspeed unset")
        if self.optim == "adamw_torch_8bit" and (with_zero or self.deepspeed_bf16):
            raise ConfigError("optim: adamw_torch_8bit steps whole tensors, and DeepSpeed's ZeRO and bf16 optimizers "
                              "would hand it flat partitions: use it with zero_stage 0 and, with bf16, "
                              "optimizer_in_backward or pure_bf16")
        if not self.optimizer_in_backward:
            return
        if self.gradient_accumulation_steps != 1 or self.max_tokens_per_micro_batch != 0:
            raise ConfigError("optimizer_in_backward: steps inside each backward, so a step must be one micro-batch: "
                              "set gradient_accumulation_steps: 1 and max_tokens_per_micro_batch: 0 (got "
                              f"{self.gradient_accumulation_steps} and {self.max_tokens_per_micro_batch})")
        if self.max_grad_norm != 0:
            raise ConfigError(f"optimizer_in_backward: never holds the whole gradient that max_grad_norm clips: set "
                              f"max_grad_norm: 0 (got {self.max_grad_norm})")


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
            raise ConfigError(f"{path}: invalid YAML: {first_line(error)}") from None
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
    """The option table of docs/configuration.md."""
    rows = ["| key | default | description |", "|---|---|---|"]
    for item in dataclasses.fields(TrainConfig):
        choices = item.metadata["choices"]
        help_text = item.metadata["help"] + (f" One of: {', '.join(map(str, choices))}." if choices else "")
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
