"""How fast and how lean is iopo-fast's LM-head path against the other ways to get per-token log-probs?

Forward + backward of the IOPO loss of whole examples from the final hidden states h [T, D]: per-token
logp[t] = log_softmax(h W^T)[t, y_t], the four sequence sums of every example, the group loss (random
reference scores, beta 0.1) and its gradient back to h and W. T tokens form examples of four
sequences of --sequence-tokens each. Methods:
  - iopo-fast's two-pass Triton kernels (`fused_logprobs`, 8 T D V FLOPs) and their chunked PyTorch twin,
  - iopo-fast's example chunks (`example_chunks_loss`: the loss fused in, gradients formed in the
    forward, 6 T D V FLOPs), Triton passes and PyTorch twin,
  - the full-logits path (h @ W.T in bf16 -> float -> log_softmax -> gather),
  - Liger-Kernel's fused linear cross entropy and fused scaled cross entropy (per-token loss = -logp),
  - Apple's cut-cross-entropy, when installed.
Every per-token method is followed by the same sequence sums and loss (a few FLOPs per sequence).
Columns: median time (CUDA events, after warmup), peak memory above the inputs
(torch.cuda.max_memory_allocated), the ideal time of 8 T D V FLOPs at the device's peak bf16 rate (a
method that does fewer FLOPs can pass 100%), and the largest relative difference of the sequence scores
from the first method's as a sanity check (cut-cross-entropy filters negligible gradient blocks by
default, as its users get it).

On a GPU it runs T in {4096, 16384}, D = 4096, V in {128256, 131072, 152064} in bf16 and writes
benchmarks/results/logprob-<device>.md; without CUDA it runs a tiny smoke configuration and only prints.

    python benchmarks/bench_logprob.py [--tokens 4096 16384] [--hidden 4096] [--vocab 128256 ...]
                                       [--sequence-tokens 512] [--chunk-logits 268435456 ...]
                                       [--peak-tflops 989] [--warmup 2] [--repeats 10]
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from _results import RESULTS_DIR, device_slug, versions

from iopo_fast import IOPO, PreferenceLoss
from iopo_fast.kernels import example_chunks_loss, fused_logprobs, resolve_impl
from iopo_fast.kernels.scores import sequence_sums
from iopo_fast.training.monitor import device_peak_flops

# Timed runs per method and shape: up to --repeats, but only MIN_REPEATS once TIME_BUDGET_MS is spent
# (the chunked twin takes seconds per run at the largest shapes).
MIN_REPEATS = 3
TIME_BUDGET_MS = 2000.0

# The objective benchmarked: its roles are the sequences of an example, in its role order (DESIGN.md, "The IOPO
# objective"), read from it rather than assumed.
OBJECTIVE = IOPO


@dataclass
class Examples:
    """Examples of OBJECTIVE over the T rows: segment_ids [T] (example * num_roles + role) and the loss of their
    scores."""

    segment_ids: torch.Tensor
    reference_scores: torch.Tensor  # [num_examples, num_roles]

    @property
    def num_examples(self) -> int:
        return len(self.reference_scores)

    @property
    def num_roles(self) -> int:
        return self.reference_scores.shape[1]

    def losses(self, scores: torch.Tensor, examples: slice) -> torch.Tensor:
        return PreferenceLoss(OBJECTIVE, beta=0.1)(scores, self.reference_scores[examples])[0]


# method(hidden, weight, targets, examples) -> (summed loss, differentiable; scores [num_examples, num_roles])
LossMethod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Examples], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Method:
    name: str
    loss: LossMethod | None
    unavailable: str = ""


def through_loss(name: str, logprobs: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> Method:
    """A per-token log-prob method, then the sequence sums and the loss."""

    def loss(hidden, weight, targets, examples: Examples):
        logp = logprobs(hidden, weight, targets).float()
        scores = sequence_sums(logp, examples.segment_ids, examples.num_examples, examples.num_roles)
        return examples.losses(scores, slice(None)).sum(), scores.detach()

    return Method(name, loss)


def example_chunks(impl: str, max_chunk_logits: int | None) -> LossMethod:
    def loss(hidden, weight, targets, examples: Examples):
        return example_chunks_loss(hidden, weight, targets, examples.segment_ids, examples.num_examples,
                                    examples.num_roles, examples.losses, impl=impl, max_chunk_logits=max_chunk_logits)

    return loss


def triton_example_chunks(runs: bool, unavailable: str, chunk_logits: list[int | None]) -> list[Method]:
    """One row per chunk bound (None: the default)."""
    return [Method(f"iopo-fast example chunks (triton{'' if bound is None else f', {bound} logits/chunk'})",
                   example_chunks("triton", bound) if runs else None, unavailable) for bound in chunk_logits]


def full_logits_logprobs(hidden, weight, targets):
    return torch.log_softmax((hidden @ weight.T).float(), dim=-1).gather(1, targets[:, None]).squeeze(1)


def liger_fused_linear_cross_entropy(on_cuda: bool) -> Method:
    name = "liger fused linear CE"
    if not on_cuda:
        return Method(name, None, "needs CUDA")
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(reduction="none")
    return through_loss(name, lambda hidden, weight, targets: -loss(weight, hidden, targets))


def liger_fused_scaled_cross_entropy() -> Method:
    name = "liger fused scaled CE"
    try:
        from liger_kernel.ops.fused_linear_scaled_cross_entropy import LigerFusedLinearScaledCrossEntropyFunction
    except ImportError as error:
        return Method(name, None, f"not in this liger-kernel ({error})")
    return through_loss(name, lambda hidden, weight, targets: -LigerFusedLinearScaledCrossEntropyFunction.apply(
        hidden, weight, targets))


def cut_cross_entropy(on_cuda: bool) -> Method:
    name = "cut-cross-entropy"
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        return Method(name, None, "not installed")
    if not on_cuda:
        return Method(name, None, "needs CUDA")
    return through_loss(name, lambda hidden, weight, targets: -linear_cross_entropy(hidden, weight, targets,
                                                                                    reduction="none"))


def all_methods(device: torch.device, chunk_logits: list[int | None]) -> list[Method]:
    on_cuda = device.type == "cuda"
    triton_runs = resolve_impl(torch.empty(0, device=device)) == "triton"
    needs_triton = "needs CUDA or TRITON_INTERPRET=1"
    return [
        through_loss("iopo-fast two-pass (triton)", partial(fused_logprobs, impl="triton")) if triton_runs
        else Method("iopo-fast two-pass (triton)", None, needs_triton),
        *triton_example_chunks(triton_runs, needs_triton, chunk_logits),
        through_loss("iopo-fast two-pass (chunked)", partial(fused_logprobs, impl="chunked")),
        Method("iopo-fast example chunks (chunked)", example_chunks("chunked", None)),
        through_loss("full logits", full_logits_logprobs),
        liger_fused_linear_cross_entropy(on_cuda),
        liger_fused_scaled_cross_entropy(),
        cut_cross_entropy(on_cuda),
    ]


@dataclass
class Measurement:
    median_ms: float
    peak_mib: float | None
    scores: torch.Tensor


def measure(method: Method, hidden, weight, targets, examples: Examples, warmup: int, repeats: int) -> Measurement:
    on_cuda = hidden.is_cuda

    def forward_backward():
        loss, scores = method.loss(hidden, weight, targets, examples)
        torch.autograd.grad(loss, (hidden, weight))
        return scores

    scores = forward_backward()
    for _ in range(warmup - 1):
        forward_backward()
    peak_mib = None
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        inputs = torch.cuda.memory_allocated()
        forward_backward()
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - inputs) / 2**20
    times_ms = []
    while len(times_ms) < repeats and (len(times_ms) < MIN_REPEATS or sum(times_ms) < TIME_BUDGET_MS):
        if on_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward_backward()
            end.record()
            torch.cuda.synchronize()
            times_ms.append(start.elapsed_time(end))
        else:
            start_s = time.perf_counter()
            forward_backward()
            times_ms.append((time.perf_counter() - start_s) * 1e3)
    return Measurement(statistics.median(times_ms), peak_mib, scores)


def random_examples(tokens: int, sequence_tokens: int, device: torch.device, generator) -> Examples:
    """Examples of OBJECTIVE's sequences of `sequence_tokens` rows each (the last ones shorter, to fill `tokens`)."""
    num_roles = OBJECTIVE.num_roles
    sequence_tokens = max(1, min(sequence_tokens, tokens // num_roles))
    segment_ids = torch.arange(tokens, device=device) // sequence_tokens
    num_examples = int(segment_ids[-1]) // num_roles + 1
    reference_scores = -sequence_tokens * 10 + torch.randn(num_examples, num_roles, device=device, generator=generator)
    return Examples(segment_ids, reference_scores)


def run(args: argparse.Namespace, device: torch.device) -> list[str]:
    """Benchmark every shape; print the markdown table rows as they come and return them."""
    methods = all_methods(device, args.chunk_logits)
    rows = []
    for tokens in args.tokens:
        for vocab in args.vocab:
            generator = torch.Generator(device).manual_seed(tokens * vocab)
            hidden = torch.randn(tokens, args.hidden, device=device, generator=generator, dtype=args.dtype)
            weight = torch.randn(vocab, args.hidden, device=device, generator=generator, dtype=args.dtype)
            # Logits with a standard deviation of about 3.
            weight = (weight * (3 / math.sqrt(args.hidden))).requires_grad_()
            hidden.requires_grad_()
            targets = torch.randint(0, vocab, (tokens,), device=device, generator=generator)
            examples = random_examples(tokens, args.sequence_tokens, device, generator)
            ideal_ms = 8 * tokens * args.hidden * vocab / (args.peak_tflops * 1e12) * 1e3 if args.peak_tflops else None
            reference = None
            for method in methods:
                cells = [str(tokens), str(args.hidden), str(vocab), method.name]
                if method.loss is None:
                    rows.append(_row(cells + [f"skipped: {method.unavailable}", "", "", "", ""]))
                    print(rows[-1], flush=True)
                    continue
                try:
                    result = measure(method, hidden, weight, targets, examples, args.warmup, args.repeats)
                except Exception as error:  # one failing method must not lose the others' results
                    traceback.print_exc()
                    rows.append(_row(cells + [f"error: {type(error).__name__}", "", "", "", ""]))
                    print(rows[-1], flush=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                reference = result.scores if reference is None else reference
                rows.append(_row(cells + [
                    f"{result.median_ms:.2f}",
                    "-" if result.peak_mib is None else f"{result.peak_mib:.0f}",
                    "-" if ideal_ms is None else f"{ideal_ms:.2f}",
                    "-" if ideal_ms is None else f"{ideal_ms / result.median_ms:.0%}",
                    f"{((result.scores - reference).abs() / reference.abs().clamp_min(1e-30)).max().item():.1e}",
                ]))
                print(rows[-1], flush=True)
    return rows


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


HEADER = [
    "| T | D | V | method | median ms | peak MiB above inputs | ideal ms (8 T D V) | ideal / measured | max rel score diff |",
    "|---|---|---|---|---|---|---|---|---|",
]


def main() -> None:
    on_cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384] if on_cuda else [64])
    parser.add_argument("--hidden", type=int, default=4096 if on_cuda else 32)
    parser.add_argument("--vocab", type=int, nargs="+", default=[128256, 131072, 152064] if on_cuda else [300])
    parser.add_argument("--sequence-tokens", type=int, default=512 if on_cuda else 8,
                        help=f"response tokens per sequence; an example has {OBJECTIVE.num_roles}")
    parser.add_argument("--chunk-logits", type=int, nargs="+", default=[None],
                        help="bounds on the logits of an example chunk, a Triton row each (default: the kernel's)")
    parser.add_argument("--dtype", type=lambda name: getattr(torch, name), default=torch.bfloat16)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak bf16 TFLOP/s for the ideal column (default: by device name, e.g. 989 for H100)")
    parser.add_argument("--warmup", type=int, default=2 if on_cuda else 1)
    parser.add_argument("--repeats", type=int, default=10 if on_cuda else 3)
    args = parser.parse_args()
    device = torch.device("cuda" if on_cuda else "cpu")
    if args.peak_tflops is None and device_peak_flops(device):
        args.peak_tflops = device_peak_flops(device) / 1e12

    device_name = torch.cuda.get_device_name(device) if on_cuda else "CPU (smoke run)"
    command = "python " + shlex.join(sys.argv)
    print(f"{device_name}; {versions()}; peak {args.peak_tflops} TFLOP/s; {args.dtype}")
    print("\n".join(HEADER), flush=True)
    table = HEADER + run(args, device)
    if on_cuda:
        path = RESULTS_DIR / f"logprob-{device_slug(device_name)}.md"
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([
            "# Per-token log-probs through the LM head: forward + backward",
            "",
            f"- device: {device_name}",
            f"- versions: {versions()}",
            f"- command: `{command}`",
            f"- dtype: {args.dtype}; examples of {OBJECTIVE.num_roles} sequences of {args.sequence_tokens} tokens, "
            f"{OBJECTIVE.name.upper()} sigmoid loss; "
            f"peak for the ideal column: {args.peak_tflops} TFLOP/s (8 T D V FLOPs); "
            f"median of {MIN_REPEATS} to {args.repeats} timed runs ({MIN_REPEATS} once {TIME_BUDGET_MS / 1e3:.0f} s "
            f"are spent) after {args.warmup} warmup runs and one memory run",
            "",
            *table,
            "",
        ]))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
