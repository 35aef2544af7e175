"""How much GPU memory, and how many FLOPs per useful token, does one training step take for 7-8B models,
with iopo-fast and with what users would run instead? Traced on fake tensors, on a CPU machine.

Every system of bench_throughput.py trains one micro-batch of the same examples on the same model shape, in
bf16 with gradient checkpointing (the non-reentrant checkpointing of every decoder layer that
`iopo-fast train` sets up, `prepare_policy`), full-parameter or with LoRA (rank 16, alpha 32, every linear
layer but the LM head, as the example configs). The step, forward and backward, runs on fake tensors
(`_tracing.py`), which record what it allocates by category and count its FLOPs:

  1. TRL DPOTrainer, defaults: what its `_compute_loss` computes, on the two DPO pairs that carry each
     IOPO example's sequences: its padded [chosen; rejected] batch, the policy forward through TRL's own
     fused LM head (`trl.trainer.utils.add_fused_lm_head`, as DPOTrainer adds it, run as on CUDA:
     `trl_head_on_cuda`), the same forward of a second, frozen model under no_grad (with LoRA: the
     policy with its adapters disabled), the sigmoid loss, the backward. Not traced: Trainer's loop, the
     collator and the metrics, which hold no tensor of the batch's size;
  2. TRL DPOTrainer, fastest: the same with precomputed reference log-probs (padding-free batches are
     disabled in TRL 1.16, and Liger's kernels stand in as for every system);
  3. the original IOPO computation: the four right-padded sequences of every example, full fp32 logits
     of every position (`bench_throughput.OriginalComputation`), a second, frozen model scoring them;
  4. iopo-fast IOPO: shared-prefix packing, flash-attn's varlen attention and the fused log-prob kernel
     (stand-ins with their allocations, `_tracing.py`), precomputed reference scores;
  5. iopo-fast DPO on system 1's pairs, with system 4's paths.

The examples have fixed lengths, 256-token prompts and 256-token responses (x2 is x1 with its last
quarter redrawn): no padding anywhere, the layout most favourable to the padded systems. A micro-batch
of k IOPO examples is 2048 k useful tokens (the four unpacked sequences of every example, the same
numerator for every system) and 1536 k packed tokens.

Memory. Model states, which ZeRO partitions and the trace leaves out, come from DeepSpeed's own estimator
(`estimate_zero3_model_states_mem_needs`): bf16 parameters and gradients, fp32 master weights and Adam
states, and the gathered largest layer; plus a frozen second model's bf16 parameters, partitioned like
the policy's. With LoRA the frozen base weights count as bf16 parameters only and the adapters' states
come from the estimator. A GPU's peak is its model states plus the traced peak of everything else
(activations, backward temporaries, the kernels' buffers), which ZeRO does not divide.

FLOPs: every product the step runs, the recomputation of checkpointing included, and a precomputed
reference's scoring pass once per example (one epoch); flash-attention's and the Triton kernels' by
formula (`_tracing.py`), attention counted over the pairs a causal mask keeps for every system.

Validation (`--validate SHAPE:EXAMPLES`): for a model that fits this machine, the same step (iopo-fast
IOPO with its CPU log-prob path, the attention stand-in, AdamW; the second of two steps) runs on real
tensors in a fresh process, whose resident set's growth during the step (`VmHWM` reset through
/proc/self/clear_refs; glibc's mmap threshold fixed so that freed tensors leave the resident set) is
compared with the traced growth, in bf16 where the CPU multiplies bf16 in hardware and else in fp32 (the
table names it). The traced FLOPs of the same step without checkpointing are compared with
`iopo_fast.training.monitor.step_flops`.

Results: benchmarks/results/trace-8b.md and .json. `--smoke` traces the `tiny` shape in seconds and only
prints.

    python benchmarks/trace_memory.py [--shapes ...] [--micro-batch-examples 2 4 8] [--systems 1 2 3 4 5]
        [--validate smollm2-135m:2 llama-3.2-1b:1] [--output-dir DIR]
    python benchmarks/trace_memory.py --smoke [--validate SHAPE:EXAMPLES]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from trl.trainer.utils import add_fused_lm_head
from _results import RESULTS_DIR, cpu_name, versions
from _tracing import (FormulaFlops, NoLaunch, RootCall, StepTrace, build_model, fake_mode, flash_shaped_attention,
                      forward_flops, gib, largest_layer_parameters, modules_left_in_place, segment_lengths, trace,
                      triton_kernels_replayed)
from bench_throughput import MODEL_CONFIGS as MODEL_SHAPES
from bench_throughput import SYSTEMS, OriginalComputation, Scenario, dpo_pairs, model_config, synthetic_examples

from iopo_fast import PreferenceModel, pack_examples, pad_examples
from iopo_fast.compat import cpu_multiplies_bf16
from iopo_fast.config import TrainConfig
from iopo_fast.model.loading import prepare_policy
from iopo_fast.training.monitor import step_flops

EIGHT_B_SHAPES = ("llama-3.1-8b", "qwen2-7b")
SHAPES = (*EIGHT_B_SHAPES, "qwen2-0.5b", "llama-3.2-1b")
EXAMPLES = Scenario(prompt_tokens=256, response_tokens=256, sigma=0.0)
USEFUL_TOKENS_PER_EXAMPLE = 4 * (EXAMPLES.prompt_tokens + EXAMPLES.response_tokens)
MICRO_BATCH_EXAMPLES = (2, 4, 8)  # 4K, 8K and 16K useful tokens
GPU_COUNT_EXAMPLES = 2  # the GPU count is asked at 4K tokens per micro-batch
LORA = TrainConfig(finetuning_type="lora", lora_rank=16, lora_alpha=32.0, lora_target="all").lora_settings()
# An "80 GB" GPU, counted in decimal gigabytes: an H100 lets a process use 79.6 GiB (85.5e9 bytes), and the
# rest is left to the CUDA context, the allocator's fragmentation and NCCL's buffers.
GPU_BYTES = 80 * 10**9
GPUS_PER_NODE = 8
TRL_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")  # what DPOTrainer asks its head for
BETA = 0.1
DTYPE = torch.bfloat16
SEED = 0


@dataclass
class Setup:
    """A system's step on one micro-batch, and what its memory accounting needs."""

    step: Callable[[], None]
    modules: list
    parameters: int  # the policy's
    trainable: int
    largest_layer: int
    live_reference: bool  # a frozen second model is kept as the reference
    packed_tokens: int  # tokens the policy's forward runs
    precompute: Callable[[], object] | None = None  # a precomputed reference's scoring, once per example


def trained_model(model_name: str, checkpointing: bool, lora: dict | None, initialized: bool = False,
                  dtype: torch.dtype = DTYPE) -> torch.nn.Module:
    """The policy as `iopo-fast train` prepares it (`prepare_policy`), for every system alike."""
    model = build_model(model_config(model_name), dtype, initialized)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with modules_left_in_place():
            return prepare_policy(model, checkpointing, lora)
    finally:
        torch.set_default_dtype(default)


def micro_batch(model: str, count: int):
    return synthetic_examples(EXAMPLES, count, model_config(model).vocab_size, SEED)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


def iopo_fast_batch(system: int, examples):
    """Systems 3, 4 and 5's batch: the padded layout for system 3, the packed one else (on real tensors)."""
    if system == 3:
        return pad_examples(examples)
    return pack_examples(dpo_pairs(examples) if system == 5 else examples)


def iopo_fast_setup(system: int, model_name: str, batch, lora: dict | None, checkpointing: bool,
                    logprob_impl: str = "auto", initialized: bool = False, dtype: torch.dtype = DTYPE) -> Setup:
    """Systems 3, 4 and 5: iopo-fast's preference model on its batch."""
    loss = TrainConfig(loss="dpo" if system == 5 else "iopo", pref_beta=BETA).preference_loss()
    policy = trained_model(model_name, checkpointing, lora, initialized, dtype)
    parameters, trainable = parameter_counts(policy)
    if system == 3:
        preference = OriginalComputation(policy, loss, logprob_impl="full_logits")
        reference = OriginalComputation(build_model(model_config(model_name), dtype).requires_grad_(False), None,
                                        logprob_impl="full_logits") if lora is None else None
    else:
        preference, reference = PreferenceModel(policy, loss, logprob_impl=logprob_impl), None

    def reference_scores():
        if system != 3:  # precomputed
            return torch.zeros(batch.num_examples, batch.num_roles)
        with torch.no_grad(), (policy.disable_adapter() if reference is None else contextlib.nullcontext()):
            return (reference or preference)(batch, with_loss=False).scores

    def step():
        scores = RootCall(reference_scores)()
        RootCall(lambda: preference(batch, scores).loss)().backward()

    modules = [policy] + ([reference] if reference is not None else [])
    precompute = None if system == 3 else lambda: preference(batch, with_loss=False)
    return Setup(step, modules, parameters, trainable, largest_layer_parameters(policy),
                 reference is not None, int(batch.input_ids.numel()), precompute)


def trl_batch(pairs) -> dict[str, torch.Tensor]:
    """DPOTrainer's batch: the chosen rows, then the rejected rows, right-padded; the completion mask."""
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    width = max(len(prompt) + len(completion) for prompt, completion in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros_like(input_ids)
    for row, (prompt, completion) in enumerate(rows):
        ids = prompt + completion
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        completion_mask[row, len(prompt):len(ids)] = 1
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
            "labels": labels, "scored_rows": (labels[:, 1:] != -100).flatten().nonzero().squeeze(1)}


def trl_head_on_cuda(scored_rows: torch.Tensor):
    """TRL's fused LM head as it runs on CUDA, on any device: its Triton folds (elementwise, no allocation)
    launch nothing, and only the positions with a label are scored (`compact`; on fake tensors the boolean
    mask that selects them has no values, so the rows come from the real labels, `scored_rows`). The
    products, tile buffers and fp32 gradient accumulators are TRL's own code."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    scored = trl_utils._ChunkedLogProbFunction

    class CompactHead:
        @staticmethod
        def apply(hidden, weight, bias, targets, *args):
            rows = scored_rows.to(hidden.device)
            outputs = scored.apply(hidden.index_select(0, rows), weight, bias, targets.index_select(0, rows), *args)
            return tuple(None if x is None else x.new_zeros(hidden.shape[0]).index_copy(0, rows, x) for x in outputs)

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(trl_utils, "_ChunkedLogProbFunction", CompactHead))
    stack.enter_context(mock.patch.object(chunked_logprob, "_use_triton", lambda device: True))
    for kernel in ("_forward_kernel", "_backward_kernel"):
        stack.enter_context(mock.patch.object(chunked_logprob, kernel, NoLaunch(), create=True))
    return stack


def trl_setup(system: int, model_name: str, batch: dict, lora: dict | None, checkpointing: bool) -> Setup:
    """Systems 1 and 2: the tensors of DPOTrainer's `_compute_loss` (see the module docstring)."""
    policy = trained_model(model_name, checkpointing, lora)
    add_fused_lm_head(policy.get_base_model() if lora else policy, outputs=TRL_OUTPUTS)
    reference = None
    if system == 1 and lora is None:
        reference = build_model(model_config(model_name), DTYPE).requires_grad_(False)
        add_fused_lm_head(reference)
    labels, shifted = batch["labels"], batch["completion_mask"][:, 1:]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}

    def sequence_logps(model) -> torch.Tensor:
        log_probs = model(**inputs, labels=labels, fused_lm_head=True).log_probs
        return log_probs[:, -shifted.shape[1]:].sum(dim=1)

    def reference_logps():
        if system != 1:  # precomputed
            return torch.zeros(batch["input_ids"].shape[0])
        with torch.no_grad(), (policy.disable_adapter() if reference is None else contextlib.nullcontext()):
            return sequence_logps(reference or policy)

    def step():
        logps = RootCall(lambda: sequence_logps(policy))()
        chosen, rejected = (logps - RootCall(reference_logps)()).chunk(2)
        (-F.logsigmoid(BETA * (chosen - rejected))).mean().backward()

    parameters, trainable = parameter_counts(policy)
    return Setup(step, [policy] + ([reference] if reference is not None else []), parameters, trainable,
                 largest_layer_parameters(policy), reference is not None,
                 int(batch["input_ids"].numel()), None if system == 1 else lambda: sequence_logps(policy))


def trace_system(system: int, model_name: str, examples, lora: dict | None, checkpointing: bool = True) -> dict:
    """One system's step on one micro-batch of `examples`, traced on fake tensors (`summarize`)."""
    flops, segments = FormulaFlops(), {}
    batch = trl_batch(dpo_pairs(examples)) if system in (1, 2) else iopo_fast_batch(system, examples)
    if system in (4, 5):
        segments[id(batch.cu_seqlens_q)] = segment_lengths(batch)
    trl_head = trl_head_on_cuda(batch["scored_rows"]) if system in (1, 2) else contextlib.nullcontext()
    with fake_mode(), flash_shaped_attention(flops, segments), triton_kernels_replayed(flops), trl_head:
        if system in (1, 2):
            setup = trl_setup(system, model_name, batch, lora, checkpointing)
        else:
            setup = iopo_fast_setup(system, model_name, batch, lora, checkpointing)
        traced = trace(setup.step, setup.modules, formula=flops)
        reference = forward_flops(setup.precompute, flops) if setup.precompute else 0.0
    return summarize(system, model_name, examples, lora, setup, traced, reference)


def summarize(system: int, model_name: str, examples, lora, setup: Setup, traced: StepTrace,
              reference_flops: float) -> dict:
    """What the report needs of a traced step. The FLOPs include a precomputed reference's share: one
    scoring pass per example."""
    useful = USEFUL_TOKENS_PER_EXAMPLE * len(examples)
    flops = traced.flops + reference_flops
    return {
        "system": system, "name": SYSTEMS[system], "shape": model_name, "finetuning": "lora" if lora else "full",
        "examples": len(examples), "useful_tokens": useful, "model_tokens": setup.packed_tokens,
        "parameters": setup.parameters, "trainable": setup.trainable, "largest_layer": setup.largest_layer,
        "live_reference": setup.live_reference,
        "transient_peak_bytes": traced.transient_peak_bytes, "transient_by_category": traced.transient_by_category,
        "flops": flops, "flops_per_useful_token": flops / useful,
        "counted_flops": traced.counted_flops, "formula_flops": traced.formula_flops,
        "precomputed_reference_flops": reference_flops,
        "flops_by_module": traced.counted_flops_by_module,
    }


def model_state_bytes(result: dict, gpus: int, offload_optimizer: bool) -> dict[str, int]:
    """Per-GPU model states under ZeRO-3 over `gpus` GPUs (DeepSpeed's estimator), host bytes per node with
    the optimizer offloaded, and a frozen second model's bf16 parameters, partitioned alike."""
    trainable, frozen = result["trainable"], result["parameters"] - result["trainable"]
    nodes = math.ceil(gpus / GPUS_PER_NODE)
    per_node = gpus // nodes
    host, device, _ = estimate_zero3_model_states_mem_needs(
        trainable, result["largest_layer"], num_gpus_per_node=per_node, num_nodes=nodes,
        cpu_offload=offload_optimizer, cpu_offload_params=False)
    frozen_bytes = 2 * frozen // gpus
    reference = 2 * result["parameters"] // gpus if result["live_reference"] else 0
    return {"device": device + frozen_bytes, "reference": reference, "host_per_node": host}


def peak_bytes(result: dict, gpus: int, offload_optimizer: bool) -> int:
    states = model_state_bytes(result, gpus, offload_optimizer)
    return states["device"] + states["reference"] + result["transient_peak_bytes"]


def smallest_gpu_count(result: dict, offload_optimizer: bool) -> int | None:
    """The fewest GPUs, 1 to 8 on one node or whole nodes of 8 (up to 64 nodes), whose peak fits one GPU."""
    candidates = [*range(1, GPUS_PER_NODE + 1), *range(2 * GPUS_PER_NODE, 65 * GPUS_PER_NODE, GPUS_PER_NODE)]
    return next((n for n in candidates if peak_bytes(result, n, offload_optimizer) <= GPU_BYTES), None)


# Validation on real tensors


def validation_dtype() -> torch.dtype:
    """The dtype of the validation's step, traced and real alike: DTYPE where this CPU multiplies bf16 in
    hardware, else fp32 (a bf16 product there is tens of times slower: SmolLM2's real step took 13 minutes
    on an AVX2-only EPYC)."""
    return DTYPE if cpu_multiplies_bf16() else torch.float32


def validation_step(model_name: str, examples_count: int, real: bool, checkpointing: bool = True,
                    dtype: torch.dtype = DTYPE) -> dict:
    """iopo-fast IOPO's step with its CPU log-prob path (the chunked twin), the attention stand-in and AdamW,
    on real or fake tensors of `dtype`; the second of two steps is measured (the optimizer's states exist by
    then, the gradients do not).
    Real: the process's peak resident memory above the step's start. Fake: the traced step."""
    flops, segments = FormulaFlops(), {}
    batch = iopo_fast_batch(4, micro_batch(model_name, examples_count))
    segments[id(batch.cu_seqlens_q)] = segment_lengths(batch)
    with (contextlib.nullcontext() if real else fake_mode()), flash_shaped_attention(flops, segments):
        setup = iopo_fast_setup(4, model_name, batch, None, checkpointing, logprob_impl="chunked", initialized=real,
                                dtype=dtype)
        optimizer = torch.optim.AdamW([p for p in setup.modules[0].parameters() if p.requires_grad], lr=1e-6)

        def step():  # gradients exist from the backward to the end of the optimizer's step
            setup.step()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()
        if real:
            start = _status_bytes("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # the peak resident set starts again from here
            step()
            return {"peak_above_start": _status_bytes("VmHWM") - start}
        traced = trace(step, setup.modules, optimizer, flops)
    return {"peak_above_start": traced.peak_bytes - traced.start_bytes, "start": traced.start_bytes,
            "peak_by_category": traced.peak_by_category, "flops": traced.flops,
            "decoder_flops": _decoder_flops(traced), "formula_flops": traced.formula_flops,
            "parameters": setup.parameters, "decoder_parameters": _decoder_parameters(setup.modules[0]),
            "packed_tokens": setup.packed_tokens, "response_tokens": int(batch.targets.numel())}


def _status_bytes(field_name: str) -> int:
    match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024


def _decoder_flops(traced: StepTrace) -> float:
    """FLOPs counted inside the decoder layers (the modules `*.layers.<i>` of the trace)."""
    return sum(flops for name, flops in traced.counted_flops_by_module.items() if re.fullmatch(r".*\.layers\.\d+", name))


def _decoder_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.get_decoder().layers.parameters())


def measured_in_fresh_process(model_name: str, examples_count: int, dtype: torch.dtype) -> dict:
    """`validation_step(real=True)` in a new process whose freed tensors leave its resident set: glibc's
    mmap threshold fixed at 64 KiB (it otherwise grows, and freed buffers stay in the heap)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, __file__, "--measure-real", model_name, str(examples_count),
                          str(dtype).removeprefix("torch.")],
                         capture_output=True, text=True, env=env, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"the real step of {model_name} failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def validate(model_name: str, examples_count: int) -> dict:
    """Traced against measured peak memory of the same step, and traced FLOPs against `step_flops`."""
    dtype = validation_dtype()
    traced = validation_step(model_name, examples_count, real=False, dtype=dtype)
    measured = measured_in_fresh_process(model_name, examples_count, dtype)
    unchecked = validation_step(model_name, examples_count, real=False, checkpointing=False, dtype=dtype)
    return {
        "shape": model_name, "examples": examples_count, "dtype": str(dtype).removeprefix("torch."),
        "traced": traced, "measured": measured,
        "memory_error": traced["peak_above_start"] / measured["peak_above_start"] - 1,
        # step_flops: 2 N (2 + f) per token the policy runs (f = 1, full-parameter training)
        "decoder_step_flops": step_flops(unchecked["decoder_parameters"], 1.0, unchecked["packed_tokens"], 0),
        "decoder_traced_flops": unchecked["decoder_flops"],
        "step_flops": step_flops(unchecked["parameters"], 1.0, unchecked["packed_tokens"], 0),
        "traced_flops": unchecked["flops"], "formula_flops": unchecked["formula_flops"],
        "response_tokens": unchecked["response_tokens"], "packed_tokens": unchecked["packed_tokens"],
    }


# The report


def one_gpu_peak(result: dict) -> int:
    """The peak on one GPU of the example configs: full-parameter with the optimizer offloaded to the host
    (ZeRO-3, `*-full-1gpu.yaml`), LoRA with everything on the GPU."""
    return peak_bytes(result, 1, offload_optimizer=result["finetuning"] == "full")


def with_ratios(results: list[dict]) -> list[dict]:
    """Each result with its one-GPU peak and its ratios to system 1 (TRL's defaults) on the same shape,
    training and micro-batch."""
    baseline = {(r["shape"], r["finetuning"], r["examples"]): r for r in results if r["system"] == 1}
    rows = []
    for result in results:
        trl = baseline.get((result["shape"], result["finetuning"], result["examples"]))
        peak = one_gpu_peak(result)
        rows.append({**result, "one_gpu_peak_bytes": peak,
                     "transient_ratio": trl and result["transient_peak_bytes"] / trl["transient_peak_bytes"],
                     "peak_ratio": trl and peak / one_gpu_peak(trl),
                     "flops_ratio": trl and result["flops"] / trl["flops"]})
    return rows


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def memory_tables(rows: list[dict]) -> list[str]:
    lines = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for finetuning in ("full", "lora"):
            selected = [r for r in rows if r["shape"] == shape and r["finetuning"] == finetuning]
            if not selected:
                continue
            first = selected[0]
            lines += [
                "", f"### {shape}, {'full-parameter' if finetuning == 'full' else 'LoRA'} "
                f"({first['parameters'] / 1e9:.2f}B parameters, {first['trainable'] / 1e9:.3f}B trained)", "",
                "| useful tokens per micro-batch | system | activations and temporaries, GiB | ratio to TRL defaults "
                "| peak on one GPU, GiB | ratio | TFLOP per step | GFLOP per useful token | ratio |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for r in selected:
                lines.append(
                    f"| {r['useful_tokens']:,} | {r['system']}. {r['name']} | {gib(r['transient_peak_bytes']):.2f} "
                    f"| {_ratio(r['transient_ratio'])} | {gib(r['one_gpu_peak_bytes']):.1f} | {_ratio(r['peak_ratio'])} "
                    f"| {r['flops'] / 1e12:.1f} | {r['flops_per_useful_token'] / 1e9:.2f} | {_ratio(r['flops_ratio'])} |")
    return lines


def gpu_count_table(rows: list[dict]) -> list[str]:
    lines = ["| shape | system | full-parameter | full-parameter, optimizer offloaded (host GiB per node) | LoRA |",
             "|---|---|---|---|---|"]
    for shape in EIGHT_B_SHAPES:
        for system in SYSTEMS:
            found = {r["finetuning"]: r for r in rows if r["shape"] == shape and r["system"] == system
                     and r["examples"] == GPU_COUNT_EXAMPLES}
            if len(found) < 2:
                continue
            full, lora = found["full"], found["lora"]
            offloaded = smallest_gpu_count(full, offload_optimizer=True)
            host = model_state_bytes(full, offloaded, offload_optimizer=True)["host_per_node"] if offloaded else 0
            lines.append(f"| {shape} | {system}. {SYSTEMS[system]} | {smallest_gpu_count(full, False)} "
                         f"| {offloaded} ({gib(host):.0f}) | {smallest_gpu_count(lora, False)} |")
    return lines


def validation_table(validations: list[dict]) -> list[str]:
    lines = ["| shape | useful tokens | traced peak above the step's start, GiB | measured, GiB | traced / measured "
             "| decoder FLOPs traced / step_flops | whole step traced / step_flops | dtype |",
             "|---|---|---|---|---|---|---|---|"]
    for v in validations:
        lines.append(
            f"| {v['shape']} | {v['examples'] * USEFUL_TOKENS_PER_EXAMPLE:,} | {gib(v['traced']['peak_above_start']):.2f} "
            f"| {gib(v['measured']['peak_above_start']):.2f} | {1 + v['memory_error']:.3f} "
            f"| {v['decoder_traced_flops'] / v['decoder_step_flops']:.4f} | {v['traced_flops'] / v['step_flops']:.3f} "
            f"| {v['dtype']} |")
    return lines


def report(rows: list[dict], validations: list[dict], command: str) -> str:
    lines = [
        "# One training step of 7-8B models: memory and FLOPs, traced on fake tensors",
        "",
        "Traced, not run on a GPU: `benchmarks/trace_memory.py` runs each system's forward and backward on "
        "fake tensors (no storage), recording every tensor by category (PyTorch's `MemTracker`) and counting "
        "FLOPs (`FlopCounterMode`); the module docstring says exactly what each system's trace is, and which "
        "GPU kernels stand in by their allocations.",
        "",
        f"Command: `{command}`. Machine: {cpu_name()}, {os.cpu_count()} cores. Versions: {versions()}.",
        "",
        f"Examples of fixed length (prompts {EXAMPLES.prompt_tokens}, responses {EXAMPLES.response_tokens} "
        "tokens; no padding anywhere, the case most favourable to the padded systems); bf16, gradient "
        "checkpointing, LoRA rank 16 on every linear layer. Activations and temporaries: the traced peak of "
        "everything that is not a model state, which ZeRO does not divide. Model states: DeepSpeed's "
        "`estimate_zero3_model_states_mem_needs`, plus a frozen second model's bf16 weights where the system "
        "keeps one (TRL's defaults, the original IOPO code; never with LoRA, where the reference is the policy "
        "without its adapters). FLOPs: every product the step runs, the recomputation of checkpointing "
        "included; flash-attention's and iopo-fast's Triton kernels' FLOPs by formula.",
        "",
        "## Validation: traced against measured, on this CPU",
        "",
        "The same step (iopo-fast IOPO with its CPU log-prob path, the flash-attention stand-in, AdamW; the "
        "second step, the optimizer's states already allocated), traced on fake tensors and run on real ones "
        "in a fresh process; the measured peak is the resident set's growth during the step (`VmHWM` after "
        "`clear_refs`, glibc's mmap threshold fixed at 64 KiB). FLOPs: the same step without checkpointing, "
        "against `iopo_fast.training.monitor.step_flops` (2 N (2 + f) per token run): on the decoder layers' "
        "parameters, and on the whole model (where `step_flops` counts the LM head at every token and "
        "leaves attention out, the trace counts the head on the response tokens and attention in).",
        "",
        *validation_table(validations),
        "",
        f"## 80 GB GPUs needed for the 8B shapes, {GPU_COUNT_EXAMPLES * USEFUL_TOKENS_PER_EXAMPLE:,} useful tokens "
        "per micro-batch",
        "",
        f"ZeRO-3 over n GPUs (8 per node); a GPU holds {GPU_BYTES / 1e9:.0f}e9 bytes; the smallest n whose "
        "per-GPU model states plus the traced activations and temporaries fit. Offloaded: Adam's states and "
        "the fp32 master weights in host memory (DeepSpeed's estimate of the host memory per node beside).",
        "",
        *gpu_count_table(rows),
        "",
        "## Memory and work per step",
        "",
        "Peak on one GPU: full-parameter with the optimizer offloaded (ZeRO-3, as `examples/*-full-1gpu.yaml`), "
        "LoRA with everything on the GPU. Ratios are to system 1 on the same shape, training and micro-batch.",
        *memory_tables(rows),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=sorted(MODEL_SHAPES))
    parser.add_argument("--micro-batch-examples", nargs="+", type=int, default=list(MICRO_BATCH_EXAMPLES))
    parser.add_argument("--systems", nargs="+", type=int, default=list(SYSTEMS), choices=sorted(SYSTEMS))
    parser.add_argument("--validate", nargs="+", default=[], metavar="SHAPE:EXAMPLES",
                        help="validate the trace against a real step of these shapes on this machine "
                        "(e.g. smollm2-135m:2 llama-3.2-1b:1)")
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny shape, validated at that shape unless --validate says otherwise; prints only")
    parser.add_argument("--output-dir", type=Path, help=f"where the results go (default {RESULTS_DIR})")
    parser.add_argument("--measure-real", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_real:
        model_name, examples_count, dtype = args.measure_real
        print(json.dumps(validation_step(model_name, int(examples_count), real=True, dtype=getattr(torch, dtype))))
        return
    shapes, micro_batches = (["tiny"], [1]) if args.smoke else (args.shapes, args.micro_batch_examples)
    validations = [validate(*_shape_and_count(item)) for item in args.validate or (["tiny:1"] if args.smoke else [])]
    results = []
    for shape in shapes:
        for finetuning in ("full", "lora"):
            for count in micro_batches:
                for system in args.systems:
                    print(f"tracing system {system} on {shape}, {finetuning}, {count} examples", file=sys.stderr)
                    lora = LORA if finetuning == "lora" else None
                    results.append(trace_system(system, shape, micro_batch(shape, count), lora))
    command = "python benchmarks/trace_memory.py " + " ".join(sys.argv[1:])
    text = report(with_ratios(results), validations, command)
    print(text)
    if args.smoke and not args.output_dir:
        return
    directory = args.output_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trace-8b.md").write_text(text)
    kept = [{name: value for name, value in result.items() if name != "flops_by_module"} for result in results]
    (directory / "trace-8b.json").write_text(json.dumps({"command": command, "versions": versions(),
                                                         "validation": validations, "results": kept}, indent=1))


def _shape_and_count(item: str) -> tuple[str, int]:
    shape, _, count = item.partition(":")
    return shape, int(count or 1)


if __name__ == "__main__":
    main()
