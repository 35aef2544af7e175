"""How many useful tokens per second, and how much memory, does iopo-fast need against what users would run instead?

Five systems train on the same synthetic examples, model configuration, seed, global batch, optimizer
(AdamW, constant learning rate), precision and gradient-checkpointing setting. On GPU the precision is
bf16 with fp32 master weights and Adam states: fp32 weights under bf16 autocast for TRL (its default
when it loads a model), DeepSpeed's bf16 optimizer for iopo-fast. --zero-stage and
--offload-optimizer apply to every system, to TRL through a DeepSpeed config.

  1. TRL `DPOTrainer` with its default settings (padded batches, a reference model in memory,
     per_device_train_batch_size 8, its chunked log-prob head) on the DPO pairs that carry each IOPO
     example's four sequences, (x1: y1 over y2) and (x2: y2 over y1). Set for every system alike:
     precision, gradient checkpointing, learning rate and schedule; and, so that the work is the
     same, max_length=None (no truncation) and sequential sampling (step k of every system trains on
     the same examples). The reference model is a second copy of the initial policy;
  2. TRL `DPOTrainer` in its fastest configuration that runs here: precomputed reference log-probs,
     Liger's model kernels (`use_liger_kernel`, CUDA only), flash attention when flash-attn is
     installed, `padding_free` requested, and the largest micro-batch (a divisor of the step's pairs)
     that fits. What actually took effect is read back from the trainer and its warnings;
  3. the original IOPO computation in iopo-fast's loop: the four right-padded sequences of every
     example (`pad_examples`), full fp32 logits at every position, `log_softmax` and a gather
     (`OriginalComputation`), a live reference model, micro-batches of as many sequences as system 1's;
  4. iopo-fast IOPO with every fast path: shared-prefix packing, varlen attention, the fused
     log-prob kernel, Liger's layer kernels, token-budget micro-batches, precomputed reference;
  5. iopo-fast in DPO mode on system 1's pairs, with the same fast paths as system 4.

Steps run in the loop each system comes with: `Trainer.train` for TRL, timed by a callback from the
start to the end of each optimizer step (Trainer collates a step's batches before it starts), and
iopo-fast's own `build` and `train_step` (`iopo_fast.training.loop`), timed around the step (packing
included). On GPU every system runs in a fresh process, so that no kernel patch or allocator state
leaks from one to the next (on CPU only with --fresh-processes: the smoke run keeps them in one
process, for speed).

Columns: useful tokens per second (the tokens of the four unpacked sequences of every example a step
processes, `iopo_fast.data.examples.unpacked_length`, the same numerator for every system; the median over
the timed steps after the warm-up steps), seconds per step and milliseconds per example (medians),
peak memory (`torch.cuda.max_memory_allocated` on GPU; on CPU the peak resident set of the system's
process), the throughput ratio to systems 1 and 2, and the model-FLOP utilisation (GPU only):
`iopo_fast.training.monitor.step_flops` of the tokens each system's models actually process (the unpacked
sequences for systems 1-3, the packed stream for 4 and 5, each scored once more by the reference,
live or precomputed), the same count the training loop reports. A precomputed reference is part of
the step: the time of scoring all examples once is spread over the steps, by examples.

A sweep of systems 1 and 4 over the tokens per micro-batch and the response length (fixed-length
examples, one micro-batch per step) shows how step time and peak memory grow with the work and where
each runs out of memory; larger budgets of a response length are not tried after an OOM.

Data (synthetic token ids, deterministic from --seed): x2 is x1 with its last quarter redrawn (a
changed constraint); lengths are log-normal around the medians of the scenario, clipped to
[8, 4 x median]; every response ends with the end-of-sequence id.
  short: prompts ~100, responses ~150 tokens (sigma 0.25)
  trace: prompts ~300, responses ~400 tokens (sigma 0.6, the spread of real instruction data)
  long:  prompts ~1500, responses ~800 tokens (sigma 0.25)
Models are randomly initialised from the real configurations in MODEL_CONFIGS.

On a GPU it runs the `trace` scenario for Qwen2-0.5B and Llama-3.2-1B in bf16 and writes
benchmarks/results/throughput-<device>.md (throughput-example-chunks-<device>.md with
--logprob-algorithm example_chunks), a JSON file and the sweep's PNG beside it. Without CUDA it
runs the `tiny` model on `short` as a smoke test, in fp32, and only prints the table (files go to
--output-dir when given).

    python benchmarks/bench_throughput.py [--models qwen2-0.5b llama-3.2-1b] [--scenarios trace]
        [--global-batch 16] [--warmup 1] [--steps 5] [--tokens-per-micro-batch 16384] [--logprob-algorithm ...]
        [--systems 1 2 3 4 5] [--no-gradient-checkpointing] [--zero-stage 0] [--offload-optimizer]
        [--sweep-response-lengths ...] [--sweep-tokens ...] [--no-sweep] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import importlib.metadata
import json
import logging
import math
import multiprocessing
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import is_flash_attn_2_available
from trl import DPOConfig, DPOTrainer
from _results import RESULTS_DIR, cpu_name, device_slug, versions

from iopo_fast import DPOExample, IOPOExample, PreferenceModel, pack_examples, pad_examples
from iopo_fast.compat import attention_implementation, check_trl_precompute_ref_logps
from iopo_fast.config import TrainConfig
from iopo_fast.distributed import init_distributed
from iopo_fast.training.monitor import device_peak_flops, peak_host_memory_gib, peak_memory_gib, step_flops
from iopo_fast.data.examples import packed_length, unpacked_length
from iopo_fast.model.preference_model import ALGORITHMS
from iopo_fast.kernels.scores import sequence_sums
from iopo_fast.training.loop import build, train_step

SYSTEMS = {
    1: "TRL DPOTrainer, defaults",
    2: "TRL DPOTrainer, fastest",
    3: "original IOPO (padded, full logits)",
    4: "iopo-fast IOPO",
    5: "iopo-fast DPO",
}
TRL_SYSTEMS = (1, 2)
SWEEP_SYSTEMS = (1, 4)
# TrainingArguments' default per_device_train_batch_size: system 1's pairs per micro-batch.
TRL_DEFAULT_MICRO_BATCH = 8
LEARNING_RATE = 1e-6
BETA = 0.1


def _llama3_rope_scaling(factor: float) -> dict:
    """Llama 3.1 and 3.2's frequency-dependent RoPE scaling from an 8192-token original context."""
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


# The real models' shapes (their config.json on the Hugging Face hub), randomly initialised here.
MODEL_CONFIGS = {
    "smollm2-135m": ("llama", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                   intermediate_size=1536, vocab_size=49152, rope_theta=100000.0,
                                   max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True)),
    "tiny": ("llama", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, vocab_size=512, tie_word_embeddings=False)),
    "qwen2-0.5b": ("qwen2", dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                 intermediate_size=4864, vocab_size=151936, rope_theta=1000000.0,
                                 max_position_embeddings=131072, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                 use_sliding_window=False)),
    "llama-3.2-1b": ("llama", dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                   num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                                   rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5,
                                   rope_scaling=_llama3_rope_scaling(32.0), tie_word_embeddings=True)),
    "qwen2-7b": ("qwen2", dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                               intermediate_size=18944, vocab_size=152064, rope_theta=1000000.0,
                               max_position_embeddings=131072, rms_norm_eps=1e-6, tie_word_embeddings=False,
                               use_sliding_window=False)),
    "llama-3.1-8b": ("llama", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                                   rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5,
                                   rope_scaling=_llama3_rope_scaling(8.0), tie_word_embeddings=False)),
}


@dataclass(frozen=True)
class Scenario:
    """Median prompt and response lengths in tokens; `sigma` is the log-normal spread (0: fixed lengths)."""

    prompt_tokens: int
    response_tokens: int
    sigma: float


SCENARIOS = {
    "short": Scenario(100, 150, 0.25),
    "trace": Scenario(300, 400, 0.6),
    "long": Scenario(1500, 800, 0.25),
}
MIN_LENGTH = 8
MAX_LENGTH_FACTOR = 4


@dataclass
class Job:
    """One system's run: what a fresh process needs to rebuild the data and the model and train."""

    system: int
    model: str
    scenario: Scenario
    global_batch: int  # IOPO examples per step (system 1, 2 and 5 see twice as many DPO pairs)
    warmup: int
    steps: int  # timed steps after the warm-up
    tokens_per_micro_batch: int  # systems 4 and 5: packed tokens per micro-batch
    logprob_algorithm: str  # systems 4 and 5: how the loss meets the LM head (iopo_fast.PreferenceModel)
    trl_pairs_per_micro_batch: int | None  # systems 1 and 2; None: the largest divisor of the step's pairs that fits
    gradient_checkpointing: bool
    zero_stage: int
    offload_optimizer: bool
    seed: int
    fresh_process: bool = True  # else in the parent's process: faster, but peak memory is the parent's
    optimizer: dict = field(default_factory=dict)  # systems 4 and 5: TrainConfig keys of the optimizer


@dataclass
class Run:
    """What a system's training reports: the seconds of every step and of the precomputed reference."""

    step_seconds: list[float]
    reference_seconds: float = 0.0
    options: dict = field(default_factory=dict)


# Data


def synthetic_examples(scenario: Scenario, count: int, vocab_size: int, seed: int):
    """`count` IOPO examples of token ids in [0, vocab_size - 2); every response ends with the EOS id."""
    generator = torch.Generator().manual_seed(seed)
    eos_id = vocab_size - 1

    def length(median: int) -> int:
        drawn = median * math.exp(scenario.sigma * float(torch.randn((), generator=generator)))
        return int(min(max(round(drawn), MIN_LENGTH), MAX_LENGTH_FACTOR * median))

    def ids(count: int) -> list[int]:
        return torch.randint(0, vocab_size - 2, (count,), generator=generator).tolist()

    examples = []
    for _ in range(count):
        prompt1 = ids(length(scenario.prompt_tokens))
        changed = len(prompt1) // 4
        prompt2 = prompt1[: len(prompt1) - changed] + ids(changed)
        responses = [ids(length(scenario.response_tokens) - 1) + [eos_id] for _ in range(2)]
        examples.append(IOPOExample(prompt1, prompt2, *responses))
    return examples


def dpo_pairs(examples):
    """The two DPO pairs that carry each IOPO example's four sequences, (x1: y1 over y2) and (x2: y2 over y1),
    as its objective defines them (`Objective.preference_pairs`), whatever the role order."""
    return [DPOExample(example.prompts[prompt], example.responses[chosen], example.responses[rejected])
            for example in examples for prompt, chosen, rejected in example.objective.preference_pairs()]


def word_tokenizer(vocab_size: int):
    """A tokenizer whose words are the token ids themselves ("t17" is id 17), so that TRL's text
    pipeline reproduces the synthetic ids exactly; the two last ids are the pad and EOS tokens."""
    vocab = {f"t{i}": i for i in range(vocab_size - 2)} | {"<pad>": vocab_size - 2, "<eos>": vocab_size - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def pairs_dataset(pairs, tokenizer):
    """TRL's text format of `pairs`; completions start with a space so that prompt + completion splits right."""
    def text(ids: list[int]) -> str:
        return " ".join(tokenizer.convert_ids_to_tokens(ids))

    return Dataset.from_dict({
        "prompt": [text(pair.prompt) for pair in pairs],
        "chosen": [" " + text(pair.chosen) for pair in pairs],
        "rejected": [" " + text(pair.rejected) for pair in pairs],
    })


# Models


def model_config(name: str):
    model_type, settings = MODEL_CONFIGS[name]
    return AutoConfig.for_model(model_type, **settings)


def random_model(name: str, dtype: torch.dtype, device: torch.device, seed: int, **kwargs):
    """The model `name` randomly initialised from `seed`: the same weights at every call with the same dtype.

    Under an active ZeRO-3 config (transformers' `HfDeepSpeedConfig`) the weights are created in their partitions.
    """
    torch.manual_seed(seed)
    placement = contextlib.nullcontext() if is_deepspeed_zero3_enabled() else torch.device(device)
    with placement:
        return AutoModelForCausalLM.from_config(model_config(name), dtype=dtype, **kwargs)


def training_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def synchronized_clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# Systems 1 and 2: TRL


def run_trl(job: Job, examples, device: torch.device) -> Run:
    """Systems 1 and 2, with a fixed micro-batch or the largest one that fits (tried from the whole step down)."""
    pairs_per_step = 2 * job.global_batch
    if job.trl_pairs_per_micro_batch:
        candidates = [math.gcd(job.trl_pairs_per_micro_batch, pairs_per_step)]
    else:
        candidates = [size for size in range(pairs_per_step, 0, -1) if pairs_per_step % size == 0]
    for micro_batch in candidates:
        try:
            return _train_trl(job, examples, device, micro_batch)
        except torch.cuda.OutOfMemoryError:
            if micro_batch == candidates[-1]:
                raise
        # Outside the handler, so that the failed attempt's frames are gone.
        release_memory(device)
    raise AssertionError("unreachable")


class StepTimer(TrainerCallback):
    """Records the seconds of every optimizer step of a `Trainer`."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._start = device, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = synchronized_clock(self.device)

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(synchronized_clock(self.device) - self._start)


check_trl_precompute_ref_logps()  # TimedDPOTrainer overrides it


class TimedDPOTrainer(DPOTrainer):
    """`DPOTrainer` recording how long its reference log-probs take to precompute (done in `__init__`)."""

    reference_seconds = 0.0

    def _precompute_ref_logps(self, dataset, name, batch_size):
        start = synchronized_clock(self.args.device)
        dataset = super()._precompute_ref_logps(dataset, name, batch_size)
        self.reference_seconds += synchronized_clock(self.args.device) - start
        return dataset


def _train_trl(job: Job, examples, device: torch.device, micro_batch: int) -> Run:
    fastest = job.system == 2
    on_cuda = device.type == "cuda"
    pairs = dpo_pairs(examples)
    tokenizer = word_tokenizer(model_config(job.model).vocab_size)
    timer = StepTimer(device)
    with captured_warnings() as messages, tempfile.TemporaryDirectory() as output_dir:
        args = DPOConfig(
            output_dir=output_dir, report_to="none", save_strategy="no", disable_tqdm=True, seed=job.seed,
            max_steps=job.warmup + job.steps, per_device_train_batch_size=micro_batch,
            gradient_accumulation_steps=2 * job.global_batch // micro_batch, learning_rate=LEARNING_RATE,
            lr_scheduler_type="constant", beta=BETA, bf16=on_cuda, gradient_checkpointing=job.gradient_checkpointing,
            # Like for like: no sequence is truncated, and step k trains on the examples of every system's step k.
            max_length=None, train_sampling_strategy="sequential",
            deepspeed=trl_deepspeed_config(job),
            precompute_ref_log_probs=fastest, use_liger_kernel=fastest and on_cuda, padding_free=fastest,
        )
        attention = "flash_attention_2" if fastest and on_cuda and is_flash_attn_2_available() else "sdpa"
        # fp32 weights under bf16 autocast: TRL's default when it loads a model itself (fp32 master weights).
        build = functools.partial(random_model, job.model, torch.float32, device, job.seed, attn_implementation=attention)
        trainer = TimedDPOTrainer(model=build(), ref_model=None if fastest else build(), args=args,
                                  train_dataset=pairs_dataset(pairs, tokenizer), processing_class=tokenizer,
                                  callbacks=[timer])
        _check_same_sequences(trainer.train_dataset, pairs)
        trainer.train()
    options = trl_options(trainer, args, messages)
    return Run(timer.seconds, trainer.reference_seconds, options)


def trl_deepspeed_config(job: Job) -> dict | None:
    """ZeRO for TRL as for iopo-fast (`--zero-stage`, `--offload-optimizer`); None without ZeRO."""
    if job.zero_stage == 0:
        return None
    zero = {"stage": job.zero_stage}
    if job.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {"zero_optimization": zero, "bf16": {"enabled": "auto"}, "gradient_clipping": "auto",
            "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}}


def _check_same_sequences(dataset, pairs) -> None:
    """TRL's tokenized pairs must be our pairs, token for token."""
    tokenized = zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])
    if [tuple(row) for row in tokenized] != [(p.prompt, p.chosen, p.rejected) for p in pairs]:
        raise RuntimeError("TRL tokenized the synthetic pairs into other token ids")


def trl_options(trainer, args, messages: list[str]) -> dict:
    """Which of the options asked of TRL took effect, read back from the trainer, and its warnings."""
    model = trainer.model
    liger_modules = sum(getattr(getattr(m.forward, "__func__", None), "__qualname__", "").startswith("Liger")
                        for m in model.modules())
    precomputed = trainer.ref_model is None and "ref_chosen_logps" in trainer.train_dataset.column_names
    return {
        "trl": importlib.metadata.version("trl"),
        "pairs per micro-batch x accumulation": f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps}",
        "precompute_ref_log_probs": f"asked {args.precompute_ref_log_probs}, in effect {precomputed}",
        "use_liger_kernel": f"asked {args.use_liger_kernel}, Liger forwards in the model: {liger_modules}",
        "padding_free": f"asked {args.padding_free}, in effect {trainer.padding_free}",
        "use_liger_loss": ("an option" if "use_liger_loss" in DPOConfig.__dataclass_fields__
                           else "no such option in this TRL"),
        "attention": attention_implementation(model.config),
        "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
        "bf16": args.bf16,
        "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else 0,
        "warnings": list(dict.fromkeys(messages)),
    }


@contextlib.contextmanager
def captured_warnings():
    """Collects the messages of `warnings` and of the trl, transformers and accelerate loggers."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("trl", "transformers", "accelerate")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    messages.extend(str(warning.message) for warning in caught)


# Systems 3, 4 and 5: iopo-fast's loop


def run_iopo_fast(job: Job, examples, device: torch.device) -> Run:
    """Systems 3 to 5 through `iopo_fast.training.loop.build` and `train_step`, as `iopo-fast train` runs them."""
    original, dpo = job.system == 3, job.system == 5
    train_examples = dpo_pairs(examples) if dpo else examples
    total_steps = job.warmup + job.steps
    per_step = len(train_examples) // total_steps
    # System 3's micro-batches hold as many sequences as system 1's (two per pair, four per example).
    micro_batch = math.gcd(TRL_DEFAULT_MICRO_BATCH // 2, per_step) if original else per_step
    longest = max(packed_length(e) for e in train_examples)
    with tempfile.TemporaryDirectory() as output_dir:
        settings = dict(
            model_name_or_path=f"random {job.model} seed {job.seed}", output_dir=output_dir, resume="never",
            loss="dpo" if dpo else "iopo", reference="live" if original else "precomputed", pref_beta=BETA,
            learning_rate=LEARNING_RATE, lr_scheduler_type="constant", max_steps=total_steps, seed=job.seed,
            bf16=device.type == "cuda", gradient_checkpointing=job.gradient_checkpointing, liger_kernels=not original,
            per_device_train_batch_size=micro_batch, gradient_accumulation_steps=per_step // micro_batch,
            max_tokens_per_micro_batch=0 if original else job.tokens_per_micro_batch,
            # A reference forward takes as many examples as surely fit a training micro-batch's token budget.
            per_device_eval_batch_size=max(1, job.tokens_per_micro_batch // longest),
            logprob_impl="full_logits" if original else "auto",
            logprob_algorithm="recompute" if original else job.logprob_algorithm,
            zero_stage=job.zero_stage, offload_optimizer=job.offload_optimizer,
        )
        config = TrainConfig(**{**settings, **({} if original else job.optimizer)})
        run = build(config, examples=(train_examples, []),
                    make_model=lambda name: random_model(job.model, training_dtype(device), device, job.seed),
                    layout=pad_examples if original else pack_examples,
                    preference_model=OriginalComputation if original else PreferenceModel, order=InOrder())
        step_seconds = []
        for step in range(1, total_steps + 1):
            start = synchronized_clock(device)
            record = train_step(run, step)
            step_seconds.append(synchronized_clock(device) - start)
            if "skipped" in record:
                raise RuntimeError(f"step {step}: non-finite loss")
    return Run(step_seconds, run.reference_seconds, {"micro-batches per step": record["micro_batches"]})


class InOrder:
    """The examples of step k are the k-th `examples_per_step` of the data set, as TRL's sequential sampling
    gives them: every system trains on the same examples at every step."""

    def step_indices(self, step: int, examples_per_step: int) -> list[int]:
        return list(range((step - 1) * examples_per_step, step * examples_per_step))


class OriginalComputation(PreferenceModel):
    """System 3's scores, as the original IOPO code computes them: the fp32 logits of every position of every
    padded row (`logprob_impl: full_logits`), `log_softmax` and a gather, then a sum per sequence."""

    def scores(self, batch) -> torch.Tensor:
        hidden = self.model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        hidden = hidden.last_hidden_state.flatten(0, 1)
        targets = torch.full(hidden.shape[:1], -100, dtype=torch.long, device=hidden.device)
        targets[batch.predictor_rows] = batch.targets
        token_logps = self.head(hidden, targets)
        return sequence_sums(token_logps[batch.predictor_rows], batch.segment_ids, batch.num_examples,
                             batch.num_roles)


# Measuring one system in its own process


def measure(job: Job) -> dict:
    """Train `job` in this (fresh) process and return its measurements; an OOM is a result, not an error."""
    os.environ["TQDM_DISABLE"] = "1"
    with contextlib.redirect_stdout(sys.stderr):  # the parent's stdout carries only the table
        device = init_distributed()
        vocab_size = model_config(job.model).vocab_size
        examples = synthetic_examples(job.scenario, job.global_batch * (job.warmup + job.steps), vocab_size, job.seed)
        release_memory(device)
        try:
            run = (run_trl if job.system in TRL_SYSTEMS else run_iopo_fast)(job, examples, device)
        except torch.cuda.OutOfMemoryError:
            return {"status": "OOM"}
        except NotImplementedError as reason:
            return {"status": f"not run: {reason}"}
        peak_gib = peak_memory_gib(device)
    # The precomputed reference's time, spread over the steps by examples, is part of every step.
    reference_per_step = run.reference_seconds * job.global_batch / len(examples)
    step_seconds = [s + reference_per_step for s in run.step_seconds[job.warmup:]]
    timed_examples = [examples[k * job.global_batch:(k + 1) * job.global_batch]
                      for k in range(job.warmup, job.warmup + job.steps)]
    step_tokens = [sum(map(unpacked_length, step)) for step in timed_examples]
    # What the models process: the packed stream (the two DPO pairs of an example pack into as many tokens
    # as the example), else every sequence unpacked.
    processed = packed_length if job.system in (4, 5) else unpacked_length
    return {
        "status": "ok",
        "tokens_per_second": statistics.median(t / s for t, s in zip(step_tokens, step_seconds)),
        "seconds_per_step": statistics.median(step_seconds),
        "ms_per_example": statistics.median(step_seconds) / job.global_batch * 1e3,
        "reference_seconds_per_step": reference_per_step,
        "peak_memory_gib": peak_gib,
        "peak_host_gib": peak_host_memory_gib(),
        "useful_tokens_per_step": statistics.median(step_tokens),
        "model_tokens_per_step": statistics.median(sum(map(processed, step)) for step in timed_examples),
        "step_seconds": run.step_seconds,
        "options": run.options,
    }


def in_fresh_process(job: Job) -> dict:
    """`measure(job)` in a new process (in this one with --no-fresh-processes); a crash or an error there is
    recorded, not raised."""
    try:
        if not job.fresh_process:
            return measure(job)
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(measure, job).result()
    except BrokenProcessPool:
        return {"status": "error: the process died"}
    except Exception as error:  # one failing system must not lose the others' results
        traceback.print_exception(error, file=sys.stderr)
        return {"status": f"error: {type(error).__name__}: {str(error)[:200]}"}


def release_memory(device: torch.device) -> None:
    """Free what dropped objects held, and start the peak-memory count afresh."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# The table, the sweep and the results files


def model_parameters(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(model_config(name)).parameters())


TABLE_HEADER = [
    "| model | scenario | system | useful tokens/s | s/step | ms/example | peak memory GiB | vs 1 | vs 2 | MFU |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def table_rows(model: str, scenario: str, results: dict[int, dict], peak_flops: float | None) -> list[str]:
    """One markdown row per system, with its throughput ratio to systems 1 and 2 where those ran."""
    parameters = model_parameters(model)
    rows = []
    for system, result in results.items():
        cells = [model, scenario, f"{system}. {SYSTEMS[system]}"]
        if result["status"] != "ok":
            rows.append(_row(cells + [result["status"], "", "", "", "", "", ""]))
            continue
        rate = result["tokens_per_second"]
        ratios = [f"{rate / results[base]['tokens_per_second']:.2f}x"
                  if results.get(base, {}).get("status") == "ok" else "-" for base in TRL_SYSTEMS]
        rows.append(_row(cells + [
            f"{rate:.0f}", f"{result['seconds_per_step']:.3f}", f"{result['ms_per_example']:.1f}",
            f"{result['peak_memory_gib']:.2f}", *ratios,
            f"{mfu(parameters, result, peak_flops):.1%}" if peak_flops else "-",
        ]))
    return rows


def mfu(parameters: int, result: dict, peak_flops: float) -> float:
    """Full training with a reference that scores every token once more (live, or its share of a table)."""
    tokens = result["model_tokens_per_step"]
    return step_flops(parameters, 1.0, tokens, reference_tokens=tokens) / (result["seconds_per_step"] * peak_flops)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def sweep(args: argparse.Namespace, base: Job) -> list[dict]:
    """Systems 1 and 4 over response lengths and useful tokens per micro-batch."""
    points = []
    for system in SWEEP_SYSTEMS:
        for response_tokens in args.sweep_response_lengths:
            scenario = Scenario(args.sweep_prompt_length, response_tokens, 0.0)
            job = dataclasses.replace(base, system=system, scenario=scenario, warmup=1, steps=args.sweep_steps)
            points += budget_series(job, args.sweep_tokens)
    return points


def budget_series(job: Job, budgets: list[int]) -> list[dict]:
    """`job` (fixed-length examples) with one micro-batch per step, as many examples as fit each budget of
    useful tokens, smallest budget first; after an out-of-memory the larger budgets are not tried."""
    example_tokens = 4 * (job.scenario.prompt_tokens + job.scenario.response_tokens)  # unpacked_length
    packed_tokens = 2 * job.scenario.prompt_tokens + 4 * job.scenario.response_tokens  # packed_length
    points, out_of_memory = [], False
    for budget in sorted(budgets):
        examples_per_step = max(1, budget // example_tokens)
        point = {"system": job.system, "response_tokens": job.scenario.response_tokens,
                 "useful_tokens_per_micro_batch": examples_per_step * example_tokens}
        if out_of_memory:
            point["status"] = "not tried: a smaller budget ran out of memory"
        else:
            point.update(in_fresh_process(dataclasses.replace(
                job, global_batch=examples_per_step, trl_pairs_per_micro_batch=2 * examples_per_step,
                tokens_per_micro_batch=examples_per_step * packed_tokens)))
            out_of_memory = point["status"] == "OOM"
        print(f"{job.model}, system {job.system}, responses {job.scenario.response_tokens}, "
              f"{point['useful_tokens_per_micro_batch']} useful tokens per micro-batch: {point['status']}", flush=True)
        points.append(point)
    return points


def plot_sweep(points: list[dict], path: Path, title: str) -> None:
    """Step time and peak memory against useful tokens per micro-batch, one line per system and response length;
    an x marks the first budget that ran out of memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axes, memory_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    lines = sorted({(p["system"], p["response_tokens"]) for p in points})
    for system, response_tokens in lines:
        line = [p for p in points if (p["system"], p["response_tokens"]) == (system, response_tokens)]
        done = [p for p in line if p["status"] == "ok"]
        label = f"{system}. {SYSTEMS[system]}, responses {response_tokens}"
        style = "-o" if system == 4 else "--s"
        first_oom = next((p for p in line if p["status"] == "OOM"), None)
        for axes, key in ((time_axes, "seconds_per_step"), (memory_axes, "peak_memory_gib")):
            drawn = axes.plot([p["useful_tokens_per_micro_batch"] for p in done], [p[key] for p in done], style,
                              label=label)
            if first_oom and done:
                axes.plot([first_oom["useful_tokens_per_micro_batch"]], [done[-1][key]], "x", markersize=12,
                          color=drawn[0].get_color())
    time_axes.set(xscale="log", yscale="log", xlabel="useful tokens per micro-batch", ylabel="seconds per step",
                  title="step time (x: out of memory)")
    memory_axes.set(xscale="log", xlabel="useful tokens per micro-batch", ylabel="peak memory (GiB)",
                    title="peak memory (x: out of memory)")
    time_axes.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(directory: Path, stem: str, header: list[str], table: list[str], record: dict,
                  sweep_points: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["# Training throughput and memory: TRL DPOTrainer, the original IOPO computation, iopo-fast", "",
             *header, "", *table, ""]
    for run_name, options in record["trl_options"].items():
        lines += [f"TRL options that took effect ({run_name}):", ""]
        for system, effect in options.items():
            settings = "; ".join(f"{key}: {value}" for key, value in effect.items() if key != "warnings")
            lines.append(f"- system {system}: {settings}")
            lines += [f"  - warning: {message[:300]}" for message in effect.get("warnings", [])
                      if re.search(r"padding_free|liger|precompute|flash|attn|kernel", message, re.IGNORECASE)]
        lines.append("")
    if sweep_points:
        lines += [f"Sweep of systems 1 and 4: `{stem}-sweep.png`, points in `{stem}.json`.", ""]
        plot_sweep(sweep_points, directory / f"{stem}-sweep.png", record["device"])
    (directory / f"{stem}.md").write_text("\n".join(lines))
    (directory / f"{stem}.json").write_text(json.dumps({**record, "sweep": sweep_points}, indent=2) + "\n")
    print(f"wrote {directory / stem}.md and .json")


def parse_args(on_cuda: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODEL_CONFIGS),
                        default=["qwen2-0.5b", "llama-3.2-1b"] if on_cuda else ["tiny"])
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=["trace"] if on_cuda else ["short"])
    parser.add_argument("--systems", nargs="+", type=int, choices=sorted(SYSTEMS), default=sorted(SYSTEMS))
    parser.add_argument("--global-batch", type=int, default=16 if on_cuda else 2, help="IOPO examples per step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5 if on_cuda else 1, help="timed steps after the warm-up")
    parser.add_argument("--tokens-per-micro-batch", type=int, default=16384 if on_cuda else 4096,
                        help="systems 4 and 5 (raised to the longest packed example when below it)")
    parser.add_argument("--logprob-algorithm", choices=ALGORITHMS, default="recompute", help="systems 4 and 5")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=0)
    parser.add_argument("--offload-optimizer", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh-processes", action=argparse.BooleanOptionalAction, default=on_cuda,
                        help="each system in its own process (default on GPU); without, the peak memory of a "
                        "system is that of every system run before it too")
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--sweep-model", choices=sorted(MODEL_CONFIGS), default=None,
                        help="default: the first of --models")
    parser.add_argument("--sweep-prompt-length", type=int, default=256 if on_cuda else 24)
    parser.add_argument("--sweep-response-lengths", type=int, nargs="+",
                        default=[256, 512, 1024, 2048] if on_cuda else [32])
    parser.add_argument("--sweep-tokens", type=int, nargs="+",
                        default=[4096, 8192, 16384, 32768, 65536, 131072] if on_cuda else [512])
    parser.add_argument("--sweep-steps", type=int, default=2 if on_cuda else 1, help="timed steps per sweep point")
    parser.add_argument("--device-name", help="names the device in the results and their file (default: the CUDA "
                        "device's name, or \"CPU (smoke run)\")")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where to write the results (default on GPU: benchmarks/results; on CPU: nowhere)")
    return parser.parse_args()


def main() -> None:
    on_cuda = torch.cuda.is_available()
    args = parse_args(on_cuda)
    device_name = args.device_name or (torch.cuda.get_device_name() if on_cuda else "CPU (smoke run)")
    command = "python " + shlex.join(sys.argv)
    peak_flops = device_peak_flops(torch.device("cuda")) if on_cuda else None
    base = Job(system=0, model="", scenario=SCENARIOS["short"], global_batch=args.global_batch, warmup=args.warmup,
               steps=args.steps, tokens_per_micro_batch=args.tokens_per_micro_batch,
               logprob_algorithm=args.logprob_algorithm,
               trl_pairs_per_micro_batch=TRL_DEFAULT_MICRO_BATCH, gradient_checkpointing=args.gradient_checkpointing,
               zero_stage=args.zero_stage, offload_optimizer=args.offload_optimizer, seed=args.seed,
               fresh_process=args.fresh_processes)
    precision = "bf16 (fp32 master weights)" if on_cuda else "fp32"
    header = [
        f"- device: {device_name}" + ("" if on_cuda else f" ({cpu_name()}, {len(os.sched_getaffinity(0))} cores)"),
        f"- versions: {versions()}",
        f"- command: `{command}`",
        f"- global batch: {args.global_batch} IOPO examples ({2 * args.global_batch} DPO pairs) per step; "
        f"{args.warmup} warm-up step(s), median of {args.steps} timed steps; {precision}; AdamW; gradient "
        f"checkpointing {'on' if args.gradient_checkpointing else 'off'}; ZeRO stage {args.zero_stage}"
        f"{' with optimizer offload' if args.offload_optimizer else ''}; seed {args.seed}; iopo-fast log-prob "
        f"algorithm {args.logprob_algorithm}",
        "- useful tokens: the four unpacked sequences of every example; a precomputed reference's time is spread "
        "over the steps; MFU: `iopo_fast.training.monitor.step_flops` of the tokens each system's models process",
    ]
    print("\n".join(header), flush=True)
    table, record = list(TABLE_HEADER), {"device": device_name, "versions": versions(), "command": command,
                                         "settings": vars(args) | {"output_dir": str(args.output_dir)},
                                         "results": [], "trl_options": {}}
    for model in args.models:
        for scenario_name in args.scenarios:
            scenario = SCENARIOS[scenario_name]
            job = dataclasses.replace(base, model=model, scenario=scenario)
            job.tokens_per_micro_batch = max(job.tokens_per_micro_batch, _longest_packed(job))
            results = {}
            for system in args.systems:
                micro_batch = None if system == 2 else job.trl_pairs_per_micro_batch
                results[system] = in_fresh_process(
                    dataclasses.replace(job, system=system, trl_pairs_per_micro_batch=micro_batch))
                print(f"{model}, {scenario_name}, system {system}: {results[system]['status']}", flush=True)
            table += table_rows(model, scenario_name, results, peak_flops)
            record["results"] += [{"model": model, "scenario": scenario_name, "system": system,
                                   "tokens_per_micro_batch": job.tokens_per_micro_batch, **result}
                                  for system, result in results.items()]
            record["trl_options"][f"{model}, {scenario_name}"] = {
                system: results[system]["options"] for system in TRL_SYSTEMS if results.get(system, {}).get("options")}
    sweep_points = []
    if args.sweep:
        sweep_points = sweep(args, dataclasses.replace(base, model=args.sweep_model or args.models[0]))
    print("\n".join(table), flush=True)
    output_dir = args.output_dir or (RESULTS_DIR if on_cuda else None)
    if output_dir is not None:
        algorithm = "" if args.logprob_algorithm == "recompute" else f"-{args.logprob_algorithm.replace('_', '-')}"
        write_results(output_dir, f"throughput{algorithm}-{device_slug(device_name)}", header, table, record,
                      sweep_points)


def _longest_packed(job: Job) -> int:
    """The longest packed example of `job`'s data (its DPO pairs are shorter)."""
    examples = synthetic_examples(job.scenario, job.global_batch * (job.warmup + job.steps),
                                  model_config(job.model).vocab_size, job.seed)
    return max(packed_length(example) for example in examples)


if __name__ == "__main__":
    main()
