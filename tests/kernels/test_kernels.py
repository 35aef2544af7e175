"""`fused_logprobs`, both implementations, against float64 PyTorch to DESIGN.md's tolerances.

The Triton kernels run on CUDA tensors or, without a GPU, under Triton's CPU interpreter. `triton.jit`
reads TRITON_INTERPRET when it decorates a function, and Triton's own helpers (`tl.zeros`, `tl.sum`, ...)
are decorated at `import triton`: with Triton 3.9, setting the variable after that but before importing
`iopo_fast.kernels` gives interpreted kernels that fail on their first `tl.zeros`. pytest has imported
triton (conftest imports `iopo_fast`) before this module runs, so without a GPU
`test_triton_under_interpreter` reruns this file's Triton cases in a fresh process started with
TRITON_INTERPRET=1.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from functools import partial

import pytest
import torch
from conftest import TRITON_RUNS_HERE, rerun_under_triton_interpreter, triton_only
from torch.utils._python_dispatch import TorchDispatchMode

from iopo_fast.kernels import example_chunks_loss, fused_logprobs, resolve_impl
from iopo_fast.kernels.fused_logprobs import INTERPRETED, _launch_config
from iopo_fast.loss import dpo_loss, iopo_loss

IGNORE_INDEX = -100
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMPLS = ["chunked", pytest.param("triton", marks=triton_only)]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
# (T, D, V): a single row, odd T and V; D and V leave ragged tiles in every launch configuration.
SHAPES = [pytest.param(shape, id="T{}-D{}-V{}".format(*shape))
          for shape in [(1, 16, 97), (37, 48, 300), (130, 48, 513)]]


@dataclass(frozen=True)
class Tolerance:
    logp_max_abs: float | None  # on every token's logp
    segment_sum_rel: float | None  # on the sums of logp over segments (sequence scores)
    grad_rel: float  # ||grad - expected|| / ||expected||, for every gradient


# DESIGN.md, "Tolerances". bf16 results are compared with float64 computed from the same bf16 values.
TOLERANCES = {
    torch.float32: Tolerance(logp_max_abs=1e-4, segment_sum_rel=None, grad_rel=1e-4),
    torch.bfloat16: Tolerance(logp_max_abs=None, segment_sum_rel=5e-3, grad_rel=1e-2),
}


def assert_matches_reference(dtype, logp, expected_logp, segment_ids, grads, expected_grads) -> None:
    """Compare with the float64 reference to TOLERANCES[dtype]; print every error."""
    tolerance = TOLERANCES[dtype]
    logp, expected_logp = logp.double(), expected_logp.double()
    num_segments = int(segment_ids.max()) + 1
    sums = logp.new_zeros(num_segments).index_add(0, segment_ids, logp)
    expected_sums = sums.new_zeros(num_segments).index_add(0, segment_ids, expected_logp)
    assert_within([
        ("logp_max_abs", (logp - expected_logp).abs().max().item(), tolerance.logp_max_abs),
        ("segment_sum_rel", max_relative_error(sums, expected_sums), tolerance.segment_sum_rel),
        *gradient_checks(dtype, grads, expected_grads),
    ])


def gradient_checks(dtype, grads, expected_grads) -> list[tuple[str, float, float]]:
    """||grad - expected|| / ||expected|| of every gradient, each bounded by TOLERANCES[dtype].grad_rel."""
    checks = []
    for index, (grad, expected) in enumerate(zip(grads, expected_grads, strict=True)):
        assert grad.dtype == dtype
        checks.append((f"grad{index}_rel", ((grad.double() - expected).norm() / expected.norm()).item(),
                       TOLERANCES[dtype].grad_rel))
    return checks


def max_relative_error(values, expected) -> float:
    return ((values.double() - expected).abs() / expected.abs().clamp_min(1e-30)).max().item()


def assert_within(checks: list[tuple[str, float, float | None]]) -> None:
    """Every (name, error, bound) has error <= bound (None: printed only); print them all."""
    print({name: f"{error:.2e}" for name, error, _ in checks})
    failed = [(name, error, bound) for name, error, bound in checks if bound is not None and not error <= bound]
    assert not failed, failed


def reference_logprobs(hidden, weight, targets, ignore_index=IGNORE_INDEX):
    """Full float64 logits, log_softmax, gather; 0 on ignored rows."""
    logp = torch.log_softmax(hidden.double() @ weight.double().T, dim=-1)
    logp = logp.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(targets == ignore_index, 0.0, logp)


def random_inputs(shape, dtype, generator, device=DEVICE):
    """hidden [T, D], weight [V, D] (leaves that require grad), targets [T] with about a fifth ignored
    (never row 0, so the gradients are never all zero). Logits have a standard deviation of about 3."""
    T, D, V = shape
    hidden = torch.randn(T, D, generator=generator)
    weight = torch.randn(V, D, generator=generator) * (3 / math.sqrt(D))
    targets = torch.randint(0, V, (T,), generator=generator)
    ignored = torch.rand(T, generator=generator) < 0.2
    ignored[:1] = False
    targets[ignored] = IGNORE_INDEX
    return (hidden.to(device, dtype).requires_grad_(), weight.to(device, dtype).requires_grad_(), targets.to(device))


def float64_leaves(*tensors):
    return [tensor.detach().double().requires_grad_() for tensor in tensors]


# Chunk bounds: the default (one chunk at test sizes), and 64 or 128 logits per row, which give the Triton
# backward one or two interpreter vocab blocks per chunk (the last one ragged, or of fewer blocks) and the
# twin a few rows per chunk.
CHUNKS = [pytest.param(None, id="one-chunk"), pytest.param(64, id="chunks"), pytest.param(128, id="2-block-chunks")]


@pytest.mark.parametrize("chunk_logits_per_row", CHUNKS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_float64_reference(impl, dtype, shape, chunk_logits_per_row, generator):
    hidden, weight, targets = random_inputs(shape, dtype, generator)
    upstream = torch.randn(shape[0], generator=generator).to(DEVICE)
    segment_ids = torch.randint(0, 4, (shape[0],), generator=generator).sort().values.to(DEVICE)
    weight_before = weight.detach().clone()

    max_chunk_logits = chunk_logits_per_row and chunk_logits_per_row * shape[0]
    logp = fused_logprobs(hidden, weight, targets, impl=impl, max_chunk_logits=max_chunk_logits)
    assert logp.dtype == torch.float32 and logp.shape == targets.shape
    grads = torch.autograd.grad((logp * upstream).sum(), (hidden, weight))

    hidden64, weight64 = float64_leaves(hidden, weight)
    expected = reference_logprobs(hidden64, weight64, targets)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (hidden64, weight64))
    assert_matches_reference(dtype, logp, expected, segment_ids, grads, expected_grads)
    assert torch.equal(weight, weight_before)


class FreshTensors(TorchDispatchMode):
    """Records the shape and dtype of every tensor that an op returns in new memory (a return its schema does
    not alias), as it is returned: the Triton interpreter resizes empty tensors onto its arguments' storage."""

    def __init__(self):
        super().__init__()
        self.allocations: list[tuple[tuple[int, ...], torch.dtype]] = []

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [shape for shape, _ in self.allocations]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for ret, value in zip(func._schema.returns, out if isinstance(out, tuple) else (out,)):
            if ret.alias_info is None and isinstance(value, torch.Tensor):
                self.allocations.append((tuple(value.shape), value.dtype))
        return out


@pytest.mark.parametrize("frozen", ["weight", "hidden"])
@pytest.mark.parametrize("impl", IMPLS)
def test_frozen_input_gets_no_gradient(impl, frozen, generator):
    """The backward returns no gradient for an input that needs none (a frozen LM head under LoRA), and never
    allocates one: no fp32 [V, D] dW, or [T, D] dh."""
    T = 37
    hidden, weight, targets = random_inputs((T, 48, 300), torch.float32, generator)
    inputs = {"hidden": hidden, "weight": weight}
    inputs[frozen].requires_grad_(False)
    upstream = torch.randn(T, generator=generator).to(DEVICE)
    logp = fused_logprobs(hidden, weight, targets, impl=impl)
    with torch.no_grad(), FreshTensors() as fresh:  # the backward alone, as the autograd engine runs it
        grads = dict(zip(inputs, logp.grad_fn.apply(upstream)[:2]))
    assert inputs[frozen].shape not in fresh.shapes, fresh.shapes
    assert grads.pop(frozen) is None
    (trained,) = grads

    leaves64 = dict(zip(inputs, float64_leaves(hidden, weight)))
    leaves64[frozen].requires_grad_(False)
    expected = reference_logprobs(leaves64["hidden"], leaves64["weight"], targets)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), leaves64[trained])
    assert_matches_reference(torch.float32, logp, expected, torch.zeros_like(targets), [grads[trained]],
                             [expected_grad])


@triton_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_backward_memory(dtype, generator):
    """The Triton backward allocates the two gradients in their own dtypes, the fp32 dh [T, D] and one dz
    chunk of at most `max_chunk_logits` entries; no fp32 [V, D] accumulator."""
    T, D, V = shape = 37, 48, 300
    hidden, weight, targets = random_inputs(shape, dtype, generator)
    block_v = _launch_config(dtype).block_v
    max_chunk_logits = 2 * block_v * T  # two vocab blocks per chunk
    logp = fused_logprobs(hidden, weight, targets, impl="triton", max_chunk_logits=max_chunk_logits)
    with torch.no_grad(), FreshTensors() as fresh:
        grad_hidden, grad_weight = logp.grad_fn.apply(torch.randn(T, generator=generator).to(DEVICE))[:2]
    assert grad_hidden.dtype == grad_weight.dtype == dtype
    large = sorted(str((shape, dtype)) for shape, dtype in fresh.allocations if math.prod(shape) > T)
    expected = [((V, D), dtype), ((T, D), torch.float32), ((T, min(2, math.ceil(V / block_v)) * block_v), dtype)]
    if dtype != torch.float32:
        expected.append(((T, D), dtype))  # dh in the input dtype
    assert large == sorted(map(str, expected))


@pytest.mark.parametrize("impl", IMPLS)
def test_weight_tied_to_the_embedding(impl, generator):
    """The LM head is also the input embedding: both uses add up in its gradient."""
    T, D, V = 37, 16, 97
    _, weight, targets = random_inputs((T, D, V), torch.float32, generator)
    input_ids = torch.randint(0, V, (T,), generator=generator).to(DEVICE)
    mixing = torch.randn(D, D, generator=generator).to(DEVICE)
    upstream = torch.randn(T, generator=generator).to(DEVICE)
    targets = torch.where(targets == IGNORE_INDEX, -1, targets)

    logp = fused_logprobs(torch.tanh(weight[input_ids] @ mixing), weight, targets, ignore_index=-1, impl=impl)
    (grad,) = torch.autograd.grad((logp * upstream).sum(), weight)

    (weight64,) = float64_leaves(weight)
    expected = reference_logprobs(torch.tanh(weight64[input_ids] @ mixing.double()), weight64, targets, -1)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), weight64)
    assert_matches_reference(torch.float32, logp, expected, torch.zeros_like(targets), [grad], [expected_grad])


@pytest.mark.parametrize("num_rows", [0, 5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_empty_and_fully_ignored_inputs_give_zeros(impl, dtype, num_rows, generator):
    hidden, weight, _ = random_inputs((num_rows, 16, 97), dtype, generator)
    targets = torch.full((num_rows,), IGNORE_INDEX, device=DEVICE)
    logp = fused_logprobs(hidden, weight, targets, impl=impl)
    assert logp.shape == (num_rows,) and logp.dtype == torch.float32 and not logp.any()
    upstream = torch.randn(num_rows, generator=generator).to(DEVICE)
    grads = torch.autograd.grad((logp * upstream).sum(), (hidden, weight))
    for grad, tensor in zip(grads, (hidden, weight), strict=True):
        assert grad.shape == tensor.shape and grad.dtype == dtype and not grad.any()


def test_resolve_impl():
    hidden = torch.empty(3, 8)
    assert resolve_impl(hidden, "chunked") == "chunked"
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl(hidden, "cuda")
    if torch.cuda.is_available():
        assert resolve_impl(hidden.cuda()) == "triton"
    if INTERPRETED:
        assert resolve_impl(hidden) == resolve_impl(hidden, "triton") == "triton"
    else:
        assert resolve_impl(hidden) == "chunked"
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            resolve_impl(hidden, "triton")


@pytest.mark.skipif(TRITON_RUNS_HERE, reason="the Triton cases run in this process")
def test_triton_under_interpreter():
    """This file's Triton cases, and `resolve_impl` with TRITON_INTERPRET=1, in a fresh process."""
    rerun_under_triton_interpreter(__file__, "(triton and not under_interpreter) or resolve_impl")


def peak_allocated_bytes(function, trace_path) -> int:
    """Peak of the CPU allocator's total while `function` runs, above its level at the start, read from
    the memory events of a profiler trace."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    profiler.export_chrome_trace(str(trace_path))
    events = [event["args"] for event in json.loads(trace_path.read_text())["traceEvents"]
              if event.get("name") == "[memory]"]
    start = events[0]["Total Allocated"] - events[0]["Bytes"]
    return max(event["Total Allocated"] for event in events) - start


def test_chunked_memory_is_below_a_tenth_of_the_logits(generator, tmp_path):
    shape = T, D, V = 4096, 64, 49152
    hidden, weight, targets = random_inputs(shape, torch.float32, generator, device=torch.device("cpu"))
    upstream = torch.randn(T, generator=generator)

    def full_logits_logprobs(hidden, weight, targets):
        return torch.log_softmax(hidden @ weight.T, dim=-1).gather(1, targets.clamp(min=0)[:, None]).squeeze(1)

    def forward_backward(logprobs):
        return lambda: torch.autograd.grad((logprobs(hidden, weight, targets) * upstream).sum(), (hidden, weight))

    bound = T * V * 4 / 10
    chunked = peak_allocated_bytes(forward_backward(partial(fused_logprobs, impl="chunked")), tmp_path / "c.json")
    full = peak_allocated_bytes(forward_backward(full_logits_logprobs), tmp_path / "full.json")
    print(f"peak MiB: chunked {chunked / 2**20:.1f}, full logits {full / 2**20:.1f}, bound {bound / 2**20:.1f}")
    assert full > bound, "the measurement must see the full logits"
    assert chunked < bound


# The summed loss of whole examples, gradients formed chunk by chunk in the forward (example_chunks_loss)


def random_examples(num_examples: int, num_roles: int, generator, max_length: int = 9):
    """segment_ids [T] of examples whose sequences have 0 to `max_length` rows, in example order, and the
    sequence lengths [num_examples, num_roles]."""
    lengths = torch.randint(0, max_length + 1, (num_examples, num_roles), generator=generator)
    return torch.repeat_interleave(torch.arange(lengths.numel()), lengths.flatten()), lengths


def preference_losses(lengths: torch.Tensor, generator):
    """Per-example IOPO (4 roles) or DPO (2 roles) losses of some fixed random reference scores, with label
    smoothing and the SFT term, as `example_chunks_loss` takes them."""
    objective = iopo_loss if lengths.shape[1] == 4 else dpo_loss
    reference = -3 * lengths + 5 * torch.randn(lengths.shape, generator=generator)
    # The SFT term divides by the lengths: an empty sequence counts as one token there.
    lengths, reference = lengths.clamp_min(1).to(DEVICE), reference.to(DEVICE)

    def example_losses(scores, examples=slice(None)):
        return objective(scores, reference[examples], beta=0.1, label_smoothing=0.1, ftx=0.5,
                         response_lengths=lengths[examples])[0]

    return example_losses


def float64_preference_loss(hidden, weight, targets, segment_ids, lengths, example_losses):
    """The reference: full float64 logits, per-token log-probs, sequence sums, the loss and its gradients."""
    hidden64, weight64 = float64_leaves(hidden, weight)
    logp = reference_logprobs(hidden64, weight64, targets)
    scores = logp.new_zeros(lengths.numel()).index_add(0, segment_ids, logp).view(lengths.shape)
    loss = example_losses(scores).double().sum()
    return loss, scores.detach(), torch.autograd.grad(loss, (hidden64, weight64))


def assert_loss_matches_reference(dtype, loss, scores, grads, expected_loss, expected_scores, expected_grads,
                                  lengths) -> None:
    """Scores to DESIGN.md's bounds (fp32: the per-token bound times the sequence's length; bf16: the
    sequence-sum bound), the loss to the gradient bound of its dtype, and every gradient."""
    tolerance = TOLERANCES[dtype]
    if tolerance.logp_max_abs is not None:
        score_error = ((scores.double() - expected_scores).abs() / lengths.clamp_min(1).to(scores)).max().item()
        score_check = ("score_abs_per_token", score_error, tolerance.logp_max_abs)
    else:
        score_check = ("score_rel", max_relative_error(scores, expected_scores), tolerance.segment_sum_rel)
    assert loss.dtype == torch.float32 and loss.shape == () and scores.dtype == torch.float32
    assert_within([
        ("loss_rel", max_relative_error(loss, expected_loss), tolerance.grad_rel),
        score_check,
        *gradient_checks(dtype, grads, expected_grads),
    ])


# (examples, roles, max rows per chunk, vocabulary): several chunks, with examples (up to 36 rows) longer
# than a chunk in a chunk of their own; the default bound, one chunk for everything; a vocabulary smaller
# than the interpreter's vocabulary block (lanes that only ever see masked columns).
EXAMPLE_SHAPES = [pytest.param(shape, id="B{}-R{}-rows{}-V{}".format(*shape))
                  for shape in [(7, 4, 20, 300), (9, 2, 8, 50), (5, 4, None, 513)]]


@pytest.mark.parametrize("examples_shape", EXAMPLE_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
def test_example_chunks_loss_matches_float64_reference(impl, dtype, examples_shape, generator):
    num_examples, num_roles, chunk_rows, V = examples_shape
    D = 48
    segment_ids, lengths = random_examples(num_examples, num_roles, generator)
    hidden, weight, targets = random_inputs((len(segment_ids), D, V), dtype, generator)
    segment_ids = segment_ids.to(DEVICE)
    example_losses = preference_losses(lengths, generator)
    upstream = 0.5 + torch.rand((), generator=generator).item()
    weight_before = weight.detach().clone()

    loss, scores = example_chunks_loss(hidden, weight, targets, segment_ids, num_examples, num_roles, example_losses,
                                        impl=impl, max_chunk_logits=chunk_rows and chunk_rows * V)
    assert not scores.requires_grad
    grads = torch.autograd.grad(loss * upstream, (hidden, weight))

    expected_loss, expected_scores, expected_grads = float64_preference_loss(
        hidden, weight, targets, segment_ids, lengths, example_losses)
    assert_loss_matches_reference(dtype, loss, scores, grads, expected_loss, expected_scores,
                                  [grad * upstream for grad in expected_grads], lengths.to(DEVICE))
    assert torch.equal(weight, weight_before)


@pytest.mark.parametrize("impl", IMPLS)
def test_example_chunks_loss_frozen_weight_and_no_grad(impl, generator, monkeypatch):
    """A frozen weight gets no gradient, and none is formed for it; without autograd the loss and scores
    are the same, and no gradient is formed at all."""
    module = importlib.import_module("iopo_fast.kernels.example_chunks")  # the package exports its function
    formed = []
    for name in ("_logits_gradient", "_add_matmul_"):
        function = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *args, name=name, function=function: formed.append(name) or function(*args))
    segment_ids, lengths = random_examples(6, 4, generator)
    hidden, weight, targets = random_inputs((len(segment_ids), 16, 97), torch.float32, generator)
    segment_ids = segment_ids.to(DEVICE)
    weight.requires_grad_(False)
    example_losses = preference_losses(lengths, generator)
    arguments = (hidden, weight, targets, segment_ids, 6, 4, example_losses)

    loss, scores = example_chunks_loss(*arguments, impl=impl, max_chunk_logits=10 * 97)
    loss.backward()
    assert weight.grad is None and "_logits_gradient" in formed and "_add_matmul_" not in formed
    formed.clear()
    with torch.no_grad():
        loss_without_grad, scores_without_grad = example_chunks_loss(*arguments, impl=impl, max_chunk_logits=10 * 97)
    assert not formed
    assert torch.equal(loss_without_grad, loss.detach()) and torch.equal(scores_without_grad, scores)

    expected_loss, expected_scores, (expected_grad, _) = float64_preference_loss(
        hidden, weight.requires_grad_(), targets, segment_ids, lengths, example_losses)
    assert_loss_matches_reference(torch.float32, loss, scores, [hidden.grad], expected_loss, expected_scores,
                                  [expected_grad], lengths.to(DEVICE))


# Rows of an example in the role order that packing lays out under other role orders of the objective: the
# roles that share a prompt together (DESIGN.md, "Packing layout").
PACKED_ROLE_ORDERS = [(0, 2, 1, 3), (2, 0, 3, 1), (3, 1, 2, 0), (1, 3, 0, 2)]


@pytest.mark.parametrize("impl", IMPLS)
def test_example_chunks_loss_takes_roles_in_any_order_within_an_example(impl, generator):
    """Rows grouped by example with their roles out of order give the loss, scores and gradients of the same
    rows sorted by segment, both to the float64 reference; over several chunks."""
    num_examples, num_roles, D, V = 7, 4, 48, 300
    lengths = torch.randint(1, 10, (num_examples, num_roles), generator=generator)
    role_orders = torch.tensor([PACKED_ROLE_ORDERS[i % len(PACKED_ROLE_ORDERS)] for i in range(num_examples)])
    segments = (torch.arange(num_examples)[:, None] * num_roles + role_orders).flatten()
    segment_ids = torch.repeat_interleave(segments, lengths.flatten()[segments]).to(DEVICE)
    hidden, weight, targets = random_inputs((len(segment_ids), D, V), torch.float32, generator)
    example_losses = preference_losses(lengths, generator)
    sorted_rows = torch.argsort(segment_ids, stable=True)
    assert not torch.equal(sorted_rows, torch.arange(len(segment_ids), device=DEVICE))

    expected_loss, expected_scores, expected_grads = float64_preference_loss(
        hidden, weight, targets, segment_ids, lengths, example_losses)
    results = []
    for rows in [slice(None), sorted_rows]:  # as laid out, then sorted
        loss, scores = example_chunks_loss(hidden[rows], weight, targets[rows], segment_ids[rows], num_examples,
                                           num_roles, example_losses, impl=impl, max_chunk_logits=20 * V)
        grads = torch.autograd.grad(loss, (hidden, weight))
        assert_loss_matches_reference(torch.float32, loss, scores, grads, expected_loss, expected_scores,
                                      expected_grads, lengths.to(DEVICE))
        results.append((loss, scores, *grads))
    torch.testing.assert_close(*results, rtol=1e-5, atol=1e-6)


def test_example_chunks_loss_backward_runs_once(generator):
    segment_ids, lengths = random_examples(3, 2, generator)
    hidden, weight, targets = random_inputs((len(segment_ids), 16, 97), torch.float32, generator)
    loss, _ = example_chunks_loss(hidden, weight, targets, segment_ids.to(DEVICE), 3, 2,
                                   preference_losses(lengths, generator))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="formed for one backward"):
        loss.backward()


# Two examples of four roles: interleaved, or each whole but out of example order.
@pytest.mark.parametrize("segment_ids", [[0, 0, 4, 4, 1, 1], [4, 4, 5, 0, 0, 3]], ids=["interleaved", "reversed"])
def test_example_chunks_loss_needs_rows_in_example_order(segment_ids, generator):
    hidden, weight, targets = random_inputs((6, 16, 97), torch.float32, generator)
    segment_ids = torch.tensor(segment_ids, device=DEVICE)
    with pytest.raises(ValueError, match="grouped by example"):
        example_chunks_loss(hidden, weight, targets, segment_ids, 2, 4, lambda scores, examples: scores.sum(1))
