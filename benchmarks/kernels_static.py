"""Registers, spills, shared memory and tensor-core instructions of every Triton kernel, compiled on CPU.

DESIGN.md, "The fused log-prob kernel": until a GPU measures them, every kernel is compiled for the `cuda`
sm_80 (A100) and sm_90 (H100/H200) targets on this CPU (Triton needs no GPU to compile), at every launch
configuration the code picks on CUDA, and its resources are read from the output: registers and spills
from `ptxas -v` (Triton's own ptxas, with the flags Triton passes it), shared memory from the compiled
metadata, against the target's per-block limit, the tensor-core instructions from the PTX (`wgmma` on
sm_90, `mma` on sm_80).

The launches are not restated here: the code's own launch functions (`_forward`, `_backward`,
`_row_stats`, `_logits_gradient`) run on meta tensors of each benchmark shape with every kernel replaced by
a recorder, and each recorded launch is specialized as Triton's launcher would specialize it (16-byte
aligned pointers and integers divisible by 16 get `tt.divisibility = 16`, an integer equal to 1 becomes a
constant). The shapes matter only through that specialization: the tiles depend on the dtype alone.

    python benchmarks/kernels_static.py   # writes results/kernels-static.md and kernels-static.json

It must run in a process without TRITON_INTERPRET=1, under which the kernels are interpreter-only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

from _results import RESULTS_DIR, versions

fused = importlib.import_module("iopo_fast.kernels.fused_logprobs")  # the package exports its function
example_chunks = importlib.import_module("iopo_fast.kernels.example_chunks")

# capability -> the most shared memory one block may have (the opt-in maximum), in bytes.
TARGETS = {80: 166912, 90: 232448}  # A100: 163 KiB; H100/H200: 227 KiB
TARGET_NAMES = {80: "sm_80 (A100)", 90: "sm_90 (H100/H200)"}

# (model, hidden size D, vocabulary V) of the model families the trainer is for.
MODELS = [
    ("Qwen2.5-0.5B", 896, 151936), ("SmolLM2-360M", 960, 49152), ("Qwen2.5-1.5B", 1536, 151936),
    ("Llama-3.2-1B", 2048, 128256), ("Qwen2.5-7B", 3584, 152064), ("Mistral-7B", 4096, 32000),
    ("Llama-3.1-8B", 4096, 128256),
]
# Rows of a micro-batch: a multiple of 16 and not (Triton compiles a kernel for each).
ROWS = (8192, 8191)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
GRADIENTS = {"dh+dW": (True, True), "dh": (True, False), "dW": (False, True)}  # dh only: a frozen LM head

_TRITON_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int64: "i64",
                 torch.int32: "i32"}
_DIVISIBLE_BY_16 = [["tt.divisibility", 16]]
_LAUNCH_OPTIONS = ("num_warps", "num_stages")


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the code makes it: the kernel, its grid, its arguments by name (tensors
    replaced by their dtype), its launch options; `config` names the launch configuration, `dtype` the
    dtype of the inputs it serves ("any": both)."""

    module: str
    kernel: str
    config: str
    dtype: str
    grid: tuple[int, ...]
    arguments: dict
    options: dict
    shape: str = ""  # the benchmark shape, for the results

    def specialization(self) -> tuple[dict, dict, dict]:
        """(signature, constexprs, attrs) for `triton.compiler.ASTSource`, as Triton's launcher makes them."""
        fn = getattr(_MODULES[self.module], self.kernel)
        signature, constexprs, attrs = {}, {}, {}
        for param in fn.params:
            value = self.arguments[param.name]
            if param.is_constexpr or value is None or (type(value) is int and value == 1):
                signature[param.name], constexprs[param.name] = "constexpr", value
            elif isinstance(value, str):  # a tensor's dtype: a pointer, aligned as torch allocates
                signature[param.name], attrs[(param.num,)] = "*" + value, _DIVISIBLE_BY_16
            else:
                signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
                if value % 16 == 0:
                    attrs[(param.num,)] = _DIVISIBLE_BY_16
        return signature, constexprs, attrs

    def key(self) -> str:
        """What the compiled code depends on: launches with one key share one binary."""
        signature, constexprs, attrs = self.specialization()
        return repr((self.module, self.kernel, signature, sorted(constexprs.items()), sorted(attrs), self.options))


_MODULES = {"fused_logprobs": fused, "example_chunks": example_chunks}


class _Recorder:
    """Stands in for a `@triton.jit` kernel: `kernel[grid](*args, **kwargs)` records a Launch."""

    def __init__(self, module: str, kernel: str, config: str, dtype: str, shape: str, launches: list[Launch]):
        self.module, self.kernel, self.config, self.dtype, self.shape = module, kernel, config, dtype, shape
        self.launches = launches
        self.arg_names = getattr(_MODULES[module], kernel).arg_names

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            options = {name: kwargs.pop(name) for name in _LAUNCH_OPTIONS if name in kwargs}
            arguments = {**dict(zip(self.arg_names, args)), **kwargs}
            arguments = {name: _TRITON_TYPES[value.dtype] if isinstance(value, torch.Tensor) else value
                         for name, value in arguments.items()}
            self.launches.append(Launch(self.module, self.kernel, self.config, self.dtype, tuple(grid), arguments,
                                        options, self.shape))

        return launch


@contextlib.contextmanager
def _recording(module: str, config: str, dtype: str, shape: str, launches: list[Launch]):
    kernels = [name for name, value in vars(_MODULES[module]).items() if isinstance(value, triton.JITFunction)
               and name.endswith("_kernel")]
    with contextlib.ExitStack() as stack:
        for kernel in kernels:
            stack.enter_context(mock.patch.object(_MODULES[module], kernel,
                                                  _Recorder(module, kernel, config, dtype, shape, launches)))
        yield


def cuda_launches(num_rows: int, hidden_size: int, vocab_size: int, model: str = "") -> list[Launch]:
    """Every kernel launch that `fused_logprobs` (forward, and backward for each set of gradients) and
    `example_chunks_loss` (its two passes over the logits) make on CUDA for these sizes, in bf16 and fp32."""
    if fused.INTERPRETED:
        raise RuntimeError("the kernels were decorated under TRITON_INTERPRET=1: compile in a process without it")
    launches: list[Launch] = []
    shape = f"{model} T={num_rows} D={hidden_size} V={vocab_size}".strip()
    meta = torch.device("meta")
    targets = torch.empty(num_rows, dtype=torch.int64, device=meta)
    grad_logp = torch.empty(num_rows, dtype=torch.float32, device=meta)
    for dtype_name, dtype in DTYPES.items():
        hidden = torch.empty(num_rows, hidden_size, dtype=dtype, device=meta)
        weight = torch.empty(vocab_size, hidden_size, dtype=dtype, device=meta)
        config = fused.cuda_launch_config(dtype)
        with _recording("fused_logprobs", dtype_name, dtype_name, shape, launches):
            _, lse = fused._forward(hidden, weight, targets, -100, config)
        for gradients, (compute_dh, compute_dw) in GRADIENTS.items():
            with _recording("fused_logprobs", f"{dtype_name} {gradients}", dtype_name, shape, launches):
                fused._backward(hidden, weight, targets, lse, grad_logp, -100, config, compute_dh, compute_dw)
        logits = torch.empty(num_rows, vocab_size, dtype=torch.float32, device=meta)
        if dtype == torch.float32:  # the statistics pass reads the fp32 logits whatever the dtype: once
            with _recording("example_chunks", "fp32 logits", "any", shape, launches):
                example_chunks._row_stats(logits, targets, use_triton=True)
        with _recording("example_chunks", f"dz {dtype_name}", dtype_name, shape, launches):
            example_chunks._logits_gradient(logits, lse, targets, grad_logp, dtype, use_triton=True)
    return launches


@dataclass
class Resources:
    """What one kernel needs on one target, read from its compiled output."""

    kernel: str
    config: str
    dtype: str  # of the inputs whose runs launch it ("any": both)
    capability: int
    num_warps: int
    num_stages: int
    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    shared_bytes: int
    shared_limit: int
    dots: int  # tl.dot in the kernel (TTIR)
    dot_lowering: dict[str, int]  # TTGIR dots by the units that run them, see `_dot_lowering`
    ptx_tensor_core_instructions: dict[str, int]  # wgmma.mma_async and mma.sync in the PTX
    flops_per_byte: float | None  # arithmetic intensity of the tiles, see `arithmetic_intensity`
    specialization: str  # what the binary assumes of T, V, D (Triton specializes on divisibility by 16)
    shapes: list[str] = field(default_factory=list)  # the benchmark shapes that launch this binary

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0

    @property
    def shared_fits(self) -> bool:
        return self.shared_bytes <= self.shared_limit

    @property
    def dots_off_tensor_cores(self) -> int:
        """Lowered dots not on the target's full-rate tensor-core instruction: wgmma on sm_90 (where mma.sync
        runs at a fraction of the rate), mma.sync on sm_80."""
        best = "wgmma" if self.capability >= 90 else "mma"
        return sum(count for unit, count in self.dot_lowering.items() if unit != best)

    def tensor_cores(self) -> str:
        """The table's cell: how the tl.dot of the kernel were lowered, and the PTX instructions."""
        if self.dots == 0:
            return "n/a (no tl.dot)"
        lowered = " + ".join(f"{count} {unit}" for unit, count in self.dot_lowering.items() if count)
        ptx = ", ".join(f"{count} {name}" for name, count in self.ptx_tensor_core_instructions.items() if count)
        cell = f"{self.dots} tl.dot -> {lowered} (PTX: {ptx or 'none'})"
        if self.dots_off_tensor_cores and not tensor_cores_expected(self):
            cell += ", by design: fp32 ieee"
        return cell


def _ptxas_report(ptx: str, capability: int, fp_fusion: bool) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from `ptxas -v`, with the flags Triton compiles with
    (triton/backends/nvidia/compiler.py, `make_cubin`)."""
    flags = ["-lineinfo", "-v", "--regAllocOptLevel=2", *([] if fp_fusion else ["--fmad=false"]),
             f"--gpu-name={sm_arch_from_capability(capability)}"]
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run([get_ptxas(capability).path, *flags, str(source), "-o", str(source.with_suffix(".o"))],
                                capture_output=True, text=True, check=True)
    log = result.stdout + result.stderr
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    stores, loads = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    return registers, stores, loads


def _dot_lowering(ttgir: str) -> dict[str, int]:
    """How the matrix products of a kernel were lowered, counted in its TTGIR (a tl.dot may be split along
    K into several): "wgmma" (Hopper warp-group dots), "mma" (mma.sync, dots with an nvidia_mma result
    layout), "fma" (any other layout: the CUDA cores)."""
    mma_layouts = set(re.findall(r"^(#\w+) = #ttg\.nvidia_mma<", ttgir, flags=re.M))
    plain_dots = re.findall(r"= tt\.dot .*-> tensor<[^>]*, (#\w+)>", ttgir)
    on_mma = sum(layout in mma_layouts for layout in plain_dots)
    wgmma = len(re.findall(r"= ttng\.warp_group_dot ", ttgir))
    return {"wgmma": wgmma, "mma": on_mma, "fma": len(plain_dots) - on_mma}


def arithmetic_intensity(launch: Launch) -> float | None:
    """FLOPs per byte that one program moves between its SM and memory (the loads of its operands), for
    its tiles and the full hidden size: the intensity the tiles can give from L2 or HBM, before any reuse
    in L2. None for kernels without a matrix product (memory-bound by design)."""
    a = launch.arguments
    if launch.kernel in ("_lse_forward_kernel", "_logits_gradient_chunk_kernel"):
        # Per step of BLOCK_D along D, the logits tile [rows, cols] reads h [rows, BLOCK_D] and W [cols, BLOCK_D].
        rows, cols, operand = a["BLOCK_T"], a["BLOCK_V"], a["h_ptr"]
    elif launch.kernel == "_add_hidden_gradient_kernel":
        # Per step of BLOCK_K along the chunk, the dh tile [rows, cols] reads dz [rows, BLOCK_K], W [BLOCK_K, cols].
        rows, cols, operand = a["BLOCK_T"], a["BLOCK_D"], a["dz_ptr"]
    else:
        return None
    element = 2 if operand in ("bf16", "fp16") else 4
    return 2 * rows * cols / ((rows + cols) * element)


def compile_launch(launch: Launch, capability: int) -> Resources:
    """Compile `launch` for `cuda` sm_`capability` and read its resources."""
    fn = getattr(_MODULES[launch.module], launch.kernel)
    signature, constexprs, attrs = launch.specialization()
    try:
        compiled = triton.compile(triton.compiler.ASTSource(fn, signature, constexprs, attrs),
                                  target=GPUTarget("cuda", capability, 32), options=launch.options)
    except Exception as error:
        raise RuntimeError(f"{launch.kernel} [{launch.config}] does not compile for sm_{capability}: {error}") \
            from error
    ptx = compiled.asm["ptx"]
    registers, spill_stores, spill_loads = _ptxas_report(ptx, capability, compiled.metadata.enable_fp_fusion)
    instructions = {"wgmma": len(re.findall(r"\bwgmma\.mma_async\.", ptx)),
                    "mma": len(re.findall(r"\bmma\.sync\.", ptx))}
    a = launch.arguments
    specialization = ", ".join(f"{name}{'=1' if a[name] == 1 else '%16=0' if a[name] % 16 == 0 else '%16!=0'}"
                               for name in ("T", "V", "D") if name in a)
    return Resources(
        kernel=launch.kernel, config=launch.config, dtype=launch.dtype, capability=capability,
        num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages, registers=registers,
        spill_stores=spill_stores,
        spill_loads=spill_loads, shared_bytes=compiled.metadata.shared, shared_limit=TARGETS[capability],
        dots=compiled.asm["ttir"].count("= tt.dot "), dot_lowering=_dot_lowering(compiled.asm["ttgir"]),
        ptx_tensor_core_instructions=instructions, flops_per_byte=arithmetic_intensity(launch),
        specialization=specialization,
    )


def _compile_job(job: tuple[Launch, int]) -> Resources:
    return compile_launch(*job)


def compile_all(launches: list[Launch], workers: int | None = None) -> list[Resources]:
    """Compile each distinct binary among `launches` once per target (in `workers` processes); its `shapes`
    are those of the launches that run it."""
    distinct: dict[str, Launch] = {}
    shapes: dict[str, set[str]] = {}
    for launch in launches:
        distinct.setdefault(launch.key(), launch)
        shapes.setdefault(launch.key(), set()).add(launch.shape)
    jobs = [(launch, capability) for launch in distinct.values() for capability in TARGETS]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_compile_job, jobs))
    else:
        results = [_compile_job(job) for job in jobs]
    for (launch, _), resources in zip(jobs, results, strict=True):
        resources.shapes = sorted(shapes[launch.key()])
    return results


def benchmark_launches() -> list[Launch]:
    """The launches of every benchmark shape."""
    return [launch for model, hidden_size, vocab_size in MODELS for num_rows in ROWS
            for launch in cuda_launches(num_rows, hidden_size, vocab_size, model)]


def tensor_cores_expected(resources: Resources) -> bool:
    """Whether the kernel's tl.dot belong on the tensor cores: those of bf16 inputs. fp32 runs with
    dot_precision "ieee" (exact fp32 products, for DESIGN.md's fp32 tolerance), which no tensor core
    computes: FMA by design."""
    return resources.dots > 0 and resources.dtype == "bf16"


def markdown(results: list[Resources], command: str) -> str:
    lines = [
        "# Triton kernels compiled for sm_80 and sm_90: static resources",
        "",
        f"Command: `{command}`",
        "",
        f"Versions: {versions()}",
        "",
        "Compiled on CPU, no GPU; figures are static, from ptxas (`ptxas -v` on Triton's PTX, with Triton's "
        "flags) and from Triton's compiled metadata. No timing: speed needs a GPU.",
        "",
        "Launch configurations: `cuda_launch_config(dtype)` of `iopo_fast/kernels/fused_logprobs.py` "
        f"(bf16: {_config_text(torch.bfloat16)}; fp32: {_config_text(torch.float32)}), and `_BLOCK_V = "
        f"{example_chunks._BLOCK_V}` of `iopo_fast/kernels/example_chunks.py`. Benchmark shapes: "
        + ", ".join(f"{model} (D={d}, V={v})" for model, d, v in MODELS)
        + f", with T = {' and '.join(map(str, ROWS))} rows. All their D and V are multiples of 16, so each "
        "kernel compiles to one binary per configuration and per divisibility of T by 16 (Triton specializes "
        "on it); the table shows the two T variants in one row (\"T any\") where their figures agree.",
        "",
        "Columns: regs = registers per thread; spills = spill store / load bytes; smem = shared memory per "
        "block (limit: 163 KiB = 166912 B opt-in on sm_80, 227 KiB = 232448 B on sm_90); tensor cores = the "
        "tl.dot of the kernel, what they were lowered to in TTGIR (Triton splits a dot along K into several for "
        "mma.sync) and the tensor-core instructions in the PTX (wgmma on sm_90, mma.sync on sm_80); "
        "FLOP/B = FLOPs per byte a program moves for its tiles' operands (h and W; dz and W), before any L2 "
        "reuse. The ridge points from HBM are about 295 FLOP/B (H100 SXM, bf16 dense), 206 "
        "(H200) and 153 (A100 80 GB), and without tensor cores (fp32) about 20, 14 and 10: the bf16 tiles reach "
        "the tensor cores' rate only through L2 reuse of h and W (the forward's vocabulary splits, the "
        "backward's row groups), which only a GPU measurement can show.",
        "",
        "| kernel | config | T, V, D | target | warps | stages | regs | spills | smem (B) | fits | "
        "tensor cores | FLOP/B |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _collapse_row_variants(results):
        lines.append(
            f"| {r.kernel} | {r.config} | {r.specialization} | {TARGET_NAMES[r.capability]} | {r.num_warps} | "
            f"{r.num_stages} | {r.registers} | {r.spill_stores} / {r.spill_loads} | {r.shared_bytes} | "
            f"{'yes' if r.shared_fits else 'NO'} | {r.tensor_cores()} | "
            f"{'' if r.flops_per_byte is None else f'{r.flops_per_byte:.0f}'} |")
    problems = problems_of(results)
    lines += ["", "Problems: " + ("; ".join(problems) if problems else "none: every kernel compiles for both "
                                  "targets, fits in shared memory, and the bf16 configuration neither spills "
                                  "nor misses the tensor cores.")]
    return "\n".join(lines) + "\n"


def _config_text(dtype: torch.dtype) -> str:
    c = fused.cuda_launch_config(dtype)
    return (f"{c.block_t}x{c.block_v} tiles, BLOCK_D {c.block_d} forward / {c.backward_block_d} backward, split "
            f"{c.split_blocks} blocks, group {c.group_t}, dh tiles {c.block_t}x{c.hidden_block_d} by "
            f"{c.hidden_block_k}, {c.num_warps} warps, {c.forward_stages}/{c.backward_stages}/{c.hidden_stages} "
            f"stages, {c.dot_precision}; dz chunks of at most {fused.DEFAULT_GRADIENT_CHUNK} entries")


_T_SPECIALIZATION = re.compile(r"T(=1|%16=0|%16!=0)(, )?")


def _collapse_row_variants(results: list[Resources]) -> list[Resources]:
    """The table's rows: the T variants of a kernel in one row ("T any") where their figures agree; by kernel
    and configuration in launch order, then by target."""
    groups: dict[tuple, list[Resources]] = {}
    for r in results:
        groups.setdefault((r.kernel, r.config, _T_SPECIALIZATION.sub("", r.specialization), r.capability),
                          []).append(r)
    rows = []
    for (_, _, other_sizes, _), group in groups.items():
        figures = {(r.registers, r.spill_stores, r.spill_loads, r.shared_bytes, r.tensor_cores()) for r in group}
        if len(group) > 1 and len(figures) == 1:
            rows.append(Resources(**{**asdict(group[0]), "specialization": f"T any, {other_sizes}"}))
        else:
            rows.extend(group)
    first = {}
    for r in results:
        first.setdefault(r.kernel, len(first))
        first.setdefault((r.kernel, r.config), len(first))
    return sorted(rows, key=lambda r: (first[r.kernel], first[(r.kernel, r.config)], r.specialization, r.capability))


def problems_of(results: list[Resources]) -> list[str]:
    """What tests/kernels/test_kernels_static.py forbids: shared memory over the limit anywhere, and in the kernels
    that bf16 inputs launch (the fast configuration) spills or a tl.dot off the tensor cores."""
    problems = []
    for r in results:
        where = f"{r.kernel} [{r.config}, {r.specialization}] on sm_{r.capability}"
        if not r.shared_fits:
            problems.append(f"{where} needs {r.shared_bytes} B of shared memory, over {r.shared_limit}")
        if r.dtype != "fp32" and r.spills:
            problems.append(f"{where} spills {r.spill_stores} B / loads {r.spill_loads} B")
        if tensor_cores_expected(r) and r.dots_off_tensor_cores:
            problems.append(f"{where} lowers {r.dots_off_tensor_cores} dots off the full-rate tensor cores: "
                            f"{r.dot_lowering}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "kernels-static.md",
                        help="the table; the JSON goes beside it")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: one per CPU)")
    args = parser.parse_args()
    results = compile_all(benchmark_launches(), workers=args.workers)
    command = "python benchmarks/kernels_static.py"
    text = markdown(results, command)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    args.output.with_suffix(".json").write_text(json.dumps({
        "command": command, "versions": versions(), "compiled_on": "CPU, no GPU; figures are static, from ptxas",
        "launch_configs": {name: asdict(fused.cuda_launch_config(dtype)) for name, dtype in DTYPES.items()},
        "example_chunks_block_v": example_chunks._BLOCK_V, "shared_limits": TARGETS,
        "kernels": [asdict(r) for r in results],
    }, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
