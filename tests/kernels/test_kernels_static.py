"""The Triton kernels compiled for the GPUs they are for, and run by the interpreter at their CUDA tiles.

DESIGN.md, "The fused log-prob kernel": without a GPU, every kernel is compiled for `cuda` sm_80 (A100) and
sm_90 (H100/H200) at every launch configuration the code picks on CUDA (benchmarks/kernels_static.py, in a
process without TRITON_INTERPRET=1, under which the kernels are interpreter-only), and its compiled output
must fit the target: shared memory within the block's limit, and in the kernels of bf16 inputs (the fast
path) no register spill and every tl.dot on the full-rate tensor cores.

The interpreter tests of test_kernels.py run small tiles; here `fused_logprobs` runs at the CUDA launch
configuration of each dtype, on shapes that cross its boundaries: several vocabulary splits in the
forward, several row groups in the backward, against test_kernels.py's float64 reference and tolerances.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
from conftest import TRITON_RUNS_HERE, fresh_process_env, rerun_under_triton_interpreter, triton_only
from test_kernels import DEVICE, DTYPES, IGNORE_INDEX, assert_matches_reference, float64_leaves, random_inputs, \
    reference_logprobs
from triton.runtime.jit import KernelInterface

from iopo_fast.kernels.fused_logprobs import FusedLogProbsFunction, cuda_launch_config

# By module name: the package exports functions of these names.
KERNEL_MODULES = [importlib.import_module(f"iopo_fast.kernels.{name}")
                  for name in ("fused_logprobs", "example_chunks")]

STATIC_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels_static.py"
# The most shared memory one block may have (opt-in), in bytes: A100 163 KiB, H100/H200 227 KiB.
SHARED_MEMORY_LIMITS = {80: 166912, 90: 232448}
FULL_RATE_TENSOR_CORES = {80: "mma", 90: "wgmma"}  # mma.sync runs on sm_90 at a fraction of wgmma's rate


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> list[dict]:
    """benchmarks/kernels_static.py's record of every kernel binary the benchmark shapes launch on CUDA,
    compiled for sm_80 and sm_90: compiled once a session, in a process without TRITON_INTERPRET."""
    output = tmp_path_factory.mktemp("kernels-static") / "kernels-static.md"
    env = {name: value for name, value in fresh_process_env().items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(STATIC_SCRIPT), "--output", str(output)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, "a kernel did not compile:\n" + result.stderr[-20000:]
    return json.loads(output.with_suffix(".json").read_text())["kernels"]


def test_every_kernel_compiles_for_sm80_and_sm90(compiled):
    kernels = {name for module in KERNEL_MODULES for name, value in vars(module).items()
               if isinstance(value, KernelInterface) and name.endswith("_kernel")}
    assert kernels >= {"_lse_forward_kernel", "_logp_kernel", "_logits_gradient_chunk_kernel",
                       "_add_hidden_gradient_kernel", "_row_statistics_kernel", "_logits_gradient_kernel"}
    for capability in SHARED_MEMORY_LIMITS:
        assert {record["kernel"] for record in compiled if record["capability"] == capability} == kernels
    configurations = {(record["kernel"], record["config"], record["specialization"]) for record in compiled}
    for capability in SHARED_MEMORY_LIMITS:
        assert {(record["kernel"], record["config"], record["specialization"]) for record in compiled
                if record["capability"] == capability} == configurations
    # Both dtypes' configurations of the backward's kernels (which gradients are asked changes only which
    # kernels launch, not their binaries).
    for kernel in ("_logits_gradient_chunk_kernel", "_add_hidden_gradient_kernel"):
        assert {record["config"].split()[0] for record in compiled if record["kernel"] == kernel} == {"bf16", "fp32"}


def test_shared_memory_fits_the_target(compiled):
    over = [f"{r['kernel']} [{r['config']}, {r['specialization']}] sm_{r['capability']}: {r['shared_bytes']} B"
            for r in compiled if r["shared_bytes"] > SHARED_MEMORY_LIMITS[r["capability"]]]
    assert not over, over


def test_bf16_kernels_neither_spill_nor_leave_the_tensor_cores(compiled):
    """The kernels that bf16 inputs launch (the fast configuration; the row statistics pass serves both
    dtypes) keep their tiles in registers and run every tl.dot on the target's full-rate tensor-core
    instruction. The fp32 configuration's products are exact ("ieee" dots, on the CUDA cores by design)."""
    problems = []
    for r in compiled:
        where = f"{r['kernel']} [{r['config']}, {r['specialization']}] sm_{r['capability']}"
        if r["dtype"] == "fp32":
            continue
        if r["spill_stores"] or r["spill_loads"]:
            problems.append(f"{where}: spills {r['spill_stores']} B, reloads {r['spill_loads']} B")
        off = {unit: count for unit, count in r["dot_lowering"].items()
               if count and unit != FULL_RATE_TENSOR_CORES[r["capability"]]}
        if r["dots"] and (off or not any(r["ptx_tensor_core_instructions"].values())):
            problems.append(f"{where}: {r['dots']} tl.dot lowered to {r['dot_lowering']}")
    assert not problems, problems


def boundary_shape(config, boundary: str) -> tuple[int, int, int]:
    """(T, D, V) just past one boundary of `config`, with ragged edges. The forward splits only the
    vocabulary and the backward groups only the rows, so each boundary gets a shape of its own, at a
    fraction of the interpreter's time for one shape past both."""
    if boundary == "vocab_splits":  # two row blocks; a second split of one ragged vocab block
        return config.block_t + 2, 16, config.split_blocks * config.block_v + config.block_v // 2 + 7
    # A second group of one ragged row block; two or more steps along D in every kernel (and a ragged dh
    # block); three vocab blocks, each its own backward chunk (see `test_fused_logprobs_at_cuda_launch_config`).
    hidden_size = max(config.block_d, config.backward_block_d, config.hidden_block_d) + 16
    return config.group_t * config.block_t + 6, hidden_size, 2 * config.block_v + 44


@triton_only
@pytest.mark.parametrize("boundary", ["vocab_splits", "row_groups"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_logprobs_at_cuda_launch_config(dtype, boundary, generator):
    config = cuda_launch_config(dtype)
    T, D, V = shape = boundary_shape(config, boundary)
    if boundary == "vocab_splits":
        assert config.forward_grid(T, V)[0] >= 2
    else:
        assert triton.cdiv(triton.cdiv(T, config.block_t), config.group_t) >= 2
    hidden, weight, targets = random_inputs(shape, dtype, generator)
    upstream = torch.randn(T, generator=generator).to(DEVICE)
    sequences = (torch.arange(T) * 4 // T).to(DEVICE)  # four sequences of consecutive rows

    # One vocab block per backward chunk: three chunks, the last ragged, each summing over several K steps of
    # the dh product (hidden_block_k < block_v).
    logp = FusedLogProbsFunction.apply(hidden, weight, targets, IGNORE_INDEX, config, T * config.block_v)
    grads = torch.autograd.grad((logp * upstream).sum(), (hidden, weight))

    hidden64, weight64 = float64_leaves(hidden, weight)
    expected = reference_logprobs(hidden64, weight64, targets)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (hidden64, weight64))
    assert_matches_reference(dtype, logp, expected, sequences, grads, expected_grads)


@pytest.mark.skipif(TRITON_RUNS_HERE, reason="the Triton cases run in this process")
def test_cuda_launch_config_under_interpreter():
    """The cases above in a fresh process with TRITON_INTERPRET=1 (see test_kernels.py)."""
    rerun_under_triton_interpreter(__file__, "at_cuda_launch_config")
