"""One training step of a model of any size on fake tensors: its memory by category and its FLOPs.

Under `FakeTensorMode` tensors carry shapes, dtypes and devices but no storage, so the forward and
backward of an 8B model run on a CPU machine in seconds. `StepMemory` (PyTorch's `MemTracker`) records
every tensor a step creates by category (parameters, gradients, optimizer states, activations, backward
temporaries); `FlopCounterMode` counts the FLOPs of the matrix products and attention the step runs.

Two GPU paths cannot run on fake tensors, and stand in by what they allocate, read from their sources:

- `flash_shaped_attention`: flash-attn 2's `flash_attn_varlen_func`. Forward: the output and the fp32
  log-sum-exp `[H, Tq]`, saved with q, k and v for the backward. Backward (`mha_varlen_bwd` in
  flash_api.cpp): dq, dk, dv, the fp32 `softmax_d [H, Tq + 128 b]` and `dq_accum [Tq + 128 b, H, Dh]`,
  and, with grouped-query attention, dk and dv expanded to every query head. Its FLOPs are counted by
  formula: 4 Dh per (query, key) pair the causal mask keeps, per head, forward, and 2.5 times that
  backward (flash-attention's five products against two).
- `triton_kernels_replayed`: iopo-fast's fused log-prob kernels. Their Python wrapper runs as it is,
  allocating what it allocates on a GPU (the log-probs, the per-split log-sum-exp, a chunk of the logits'
  gradient, the fp32 dh and the weight gradient) and running the weight gradient's products; only the
  four kernel launches are replaced, each by its FLOP count (DESIGN.md, "The fused log-prob kernel":
  2 T D V forward, 2 T D V for the backward's recompute and 2 T D V for dh).

Everything else is the code that runs on a GPU: Hugging Face's model classes, PEFT, iopo-fast's packing,
preference model and loss, TRL's fused LM head. Where it differs on a CPU device: the padded batches'
attention runs SDPA's CPU flash kernel, which keeps the output and the log-sum-exp as the GPU's flash
kernels do, and whose FLOPs PyTorch's counter does not know (`UNCOUNTED_FLOPS`); Liger-Kernel's
layer kernels do not run on fake tensors, and the model's own PyTorch layers, which keep at least as
much for the backward, stand in for them.

`trace` runs a step twice: under the memory tracker, then under the FLOP counter, whose module tracking
keeps tensors alive that the step frees.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
from dataclasses import dataclass, field
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM
from transformers.initialization import no_init_weights

from iopo_fast.model import attention as attention_module

# The module, not the function of the same name that `iopo_fast.kernels` exports.
fused_logprobs_module = importlib.import_module("iopo_fast.kernels.fused_logprobs")

MODEL_STATES = (_MemRefType.PARAM, _MemRefType.BUFFER, _MemRefType.GRAD, _MemRefType.OPT)
TOTAL = "Total"
# flash-attn 2's backward pads each sequence by the largest query block (flash_api.cpp, `mha_varlen_bwd`).
FLASH_BACKWARD_ROWS_PER_SEQUENCE = 128


def _to_where_it_is(module: torch.nn.Module, *args, **kwargs) -> torch.nn.Module:
    device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if (device is not None and tensor.device != torch.device(device)) or \
                (dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype):
            raise RuntimeError(f"a fake {tensor.dtype} tensor on {tensor.device} cannot move to {device}, {dtype}")
    return module


@contextlib.contextmanager
def modules_left_in_place():
    """`module.to(...)` where the module already is returns it: fake parameters cannot be swapped by
    `Module._apply`, and PEFT moves every adapter it builds to its base layer's device and dtype (where
    it was built: the caller sets the default dtype to the model's)."""
    with mock.patch.object(torch.nn.Module, "to", _to_where_it_is):
        yield


def fake_mode() -> FakeTensorMode:
    """Fake tensors that real CPU inputs (token ids, the batch's index tensors) may enter."""
    return FakeTensorMode(allow_non_fake_inputs=True)


def build_model(config, dtype: torch.dtype, initialized: bool = False) -> torch.nn.Module:
    """`AutoModelForCausalLM` of `config` in `dtype`, randomly initialised if `initialized` (fake tensors have
    no values to initialise)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # `.to(dtype)` cannot swap fake parameters: build in the dtype instead
    try:
        if initialized:
            return AutoModelForCausalLM.from_config(config)
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config)
        model.tie_weights()  # skipped with the initialisation
        return model
    finally:
        torch.set_default_dtype(default)


class StepMemory(MemTracker):
    """`MemTracker` that also keeps the peak of what is not a model state (activations, backward
    temporaries, anything else), and the breakdown at that moment: the part of a step's memory that
    ZeRO does not partition."""

    def __init__(self):
        super().__init__()
        self.transient_peak = 0
        self.transient_snapshot: dict[str, int] = {}

    def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True) -> tuple[int, int]:
        # MemTracker hooks every parameter's gradient, which a frozen one (a reference model, LoRA's base
        # weights) refuses: hook only those that train.
        sizes = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
        if install_grad_hooks:
            for param in module.parameters():
                if param.requires_grad and param not in self._param_to_grad_hook_handles:
                    self._param_to_grad_hook_handles[param] = (
                        param.register_hook(self._track_gradient),
                        param.register_post_accumulate_grad_hook(lambda p: self._track_gradient(p.grad)),
                    )
        return sizes

    def _track_gradient(self, grad: torch.Tensor) -> None:
        self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

    def _update_peak_stats(self, peak_state) -> None:
        # MemTracker also updates every module's own peak here, at every operation: a step of an 8B model
        # spent minutes in it. Only the step's peaks are kept.
        for device, snapshot in self._curr_mem_snap.items():
            if snapshot[TOTAL] > self._peak_mem.get(device, 0):
                self._peak_mem[device] = snapshot[TOTAL]
                self._peak_mem_snap[device] = dict(snapshot)
            transient = snapshot[TOTAL] - sum(snapshot.get(kind, 0) for kind in MODEL_STATES)
            if transient > self.transient_peak:
                self.transient_peak = transient
                self.transient_snapshot = _named(snapshot)

    def peak_by_category(self) -> dict[str, int]:
        """The categories at the moment of the peak of everything tracked (one device: the fake CPU)."""
        (snapshot,) = self.get_tracker_snapshot("peak").values()
        return _named(snapshot)


def _named(snapshot: dict) -> dict[str, int]:
    """A MemTracker snapshot with its categories' names as keys ("Activation", ..., "Total")."""
    return {getattr(kind, "value", kind): size for kind, size in snapshot.items()}


class RootCall(torch.nn.Module):
    """`call()` run as a root module of its own. MemTracker refuses a root module called twice in one step,
    as a LoRA policy is (with its adapters, and without them as the reference): called through a
    `RootCall` each time, it is a submodule instead."""

    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self):
        return self.call()


@dataclass
class FormulaFlops:
    """FLOPs of the stand-ins, which `FlopCounterMode` cannot see, by what computed them."""

    counts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, flops: float) -> None:
        self.counts[name] = self.counts.get(name, 0.0) + flops

    @property
    def total(self) -> float:
        return sum(self.counts.values())


def causal_pairs(query_lengths: list[int], key_lengths: list[int]) -> int:
    """(query, key) pairs that bottom-right causal attention keeps: query r of a segment with lq queries and
    lk keys sees lk - lq + r + 1 keys (DESIGN.md, "Packing layout")."""
    return sum(lq * (lk - lq) + lq * (lq + 1) // 2 for lq, lk in zip(query_lengths, key_lengths))


class _FlashShapedAttention(torch.autograd.Function):
    """What flash-attn 2's varlen function keeps and allocates (see the module docstring). The output and
    the gradients are zeros: on real tensors this runs a step with the same allocations, not its values."""

    @staticmethod
    def forward(ctx, query, key, value, num_sequences: int, pairs: int, flops: FormulaFlops):
        tokens, heads, head_dim = query.shape
        output = torch.zeros_like(query)
        lse = query.new_zeros(heads, tokens, dtype=torch.float32)
        ctx.save_for_backward(query, key, value, output, lse)
        ctx.num_sequences, ctx.pairs, ctx.flops = num_sequences, pairs, flops
        flops.add("attention (flash-attn, by formula)", 4 * head_dim * heads * pairs)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, _, _ = ctx.saved_tensors
        tokens, heads, head_dim = query.shape
        padded_rows = tokens + FLASH_BACKWARD_ROWS_PER_SEQUENCE * ctx.num_sequences
        grad_query, grad_key, grad_value = torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)
        softmax_d = query.new_zeros(heads, padded_rows, dtype=torch.float32)
        dq_accum = query.new_zeros(padded_rows, heads, head_dim, dtype=torch.float32)
        expanded = []
        if key.shape[1] != heads:  # grouped-query attention: dk, dv for every query head, then summed
            expanded = [key.new_zeros(key.shape[0], heads, head_dim) for _ in range(2)]
        ctx.flops.add("attention (flash-attn, by formula)", 2.5 * 4 * head_dim * heads * ctx.pairs)
        del softmax_d, dq_accum, expanded
        return grad_query, grad_key, grad_value, None, None, None


def _flash_shaped_runner(flops: FormulaFlops, segments: dict[int, tuple[list[int], list[int]]]):
    """A runner for `iopo_fast.model.attention` with the signature of its backends. The segment lengths
    are read on the host when the batch is built (`segments`, by the id of its `cu_seqlens_q`): on fake
    tensors the offsets have no values."""

    def run(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale):
        query_lengths, key_lengths = segments[id(cu_seqlens_q)]
        return _FlashShapedAttention.apply(query, key, value, len(query_lengths),
                                           causal_pairs(query_lengths, key_lengths), flops)

    return run


@contextlib.contextmanager
def flash_shaped_attention(flops: FormulaFlops, segments: dict[int, tuple[list[int], list[int]]]):
    """Packed attention runs `_FlashShapedAttention` for every backend."""
    runner = _flash_shaped_runner(flops, segments)
    with mock.patch.dict(attention_module._RUNNERS, {name: runner for name in attention_module._RUNNERS}):
        yield


def segment_lengths(batch) -> tuple[list[int], list[int]]:
    """The query and key lengths of a packed batch's segments, from its real offsets."""
    cu_q, cu_k = batch.cu_seqlens_q.tolist(), batch.cu_seqlens_k.tolist()
    return [b - a for a, b in itertools.pairwise(cu_q)], [b - a for a, b in itertools.pairwise(cu_k)]


class _KernelLaunch:
    """`kernel[grid](*args, **kwargs)` that launches nothing and adds the kernel's FLOPs instead."""

    def __init__(self, flops: FormulaFlops, count):
        self.flops, self.count = flops, count

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.flops.add("LM head (Triton kernels, by formula)", self.count(*args, **kwargs))


class NoLaunch:
    """`kernel[grid](*args, **kwargs)` that launches nothing: an elementwise kernel whose FLOPs are not counted
    (as `FlopCounterMode` counts only products) and which allocates nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _lse_forward_flops(hidden, weight, *args, **kwargs) -> float:
    return 2 * hidden.shape[0] * hidden.shape[1] * weight.shape[0]


def _logp_flops(hidden, *args, **kwargs) -> float:
    return 2 * hidden.shape[0] * hidden.shape[1]


def _logits_gradient_flops(hidden, weight, targets, lse, grad_logp, grad_logits, T, V, D, v_start, num_cols, *args,
                           **kwargs) -> float:
    # The chunk's logits are recomputed (dW = dz^T h is a torch.mm, which the FLOP counter counts).
    return 2 * T * D * num_cols


def _hidden_gradient_flops(grad_logits, weight, grad_hidden, T, D, v_start, num_cols, *args, **kwargs) -> float:
    return 2 * T * D * num_cols


@contextlib.contextmanager
def triton_kernels_replayed(flops: FormulaFlops):
    """`fused_logprobs` takes its Triton path on any device, with its wrapper's allocations at the CUDA launch
    configuration and the kernels replaced by their FLOP counts."""
    module = fused_logprobs_module
    with mock.patch.object(module, "resolve_impl", lambda hidden, impl="auto": "triton"), \
            mock.patch.object(module, "_lse_forward_kernel", _KernelLaunch(flops, _lse_forward_flops)), \
            mock.patch.object(module, "_logp_kernel", _KernelLaunch(flops, _logp_flops)), \
            mock.patch.object(module, "_logits_gradient_chunk_kernel", _KernelLaunch(flops, _logits_gradient_flops)), \
            mock.patch.object(module, "_add_hidden_gradient_kernel", _KernelLaunch(flops, _hidden_gradient_flops)):
        yield


@dataclass
class StepTrace:
    """What one traced step used: bytes by category at its start and at the peak of everything, the peak of
    what is not a model state and its breakdown, and the FLOPs counted (by module) and by formula (by
    stand-in)."""

    start_bytes: int
    peak_bytes: int
    peak_by_category: dict[str, int]
    transient_peak_bytes: int
    transient_by_category: dict[str, int]
    counted_flops: float
    counted_flops_by_module: dict[str, float]
    formula_flops: dict[str, float]

    @property
    def flops(self) -> float:
        return self.counted_flops + sum(self.formula_flops.values())


def trace(step, modules: list, optimizer: torch.optim.Optimizer | None = None,
          formula: FormulaFlops | None = None) -> StepTrace:
    """Run `step()` under the memory tracker, then again under the FLOP counter; `modules` (and `optimizer`)
    have their parameters, gradients and states counted as such. Two runs, because `FlopCounterMode`'s
    module tracking keeps every layer's recomputed activations alive until the backward ends (on 135M
    parameters it multiplied the traced activations by ten, against the real process's)."""
    memory = StepMemory()
    for module in modules:
        memory.track_external(module)
    if optimizer is not None:
        memory.track_external(optimizer)
    with memory:
        start = memory.get_tracker_snapshot()
        step()
    formula = formula or FormulaFlops()
    formula.counts.clear()
    counter = flop_counter()
    with counter:
        step()
    by_module = {name: float(sum(counts.values())) for name, counts in counter.get_flop_counts().items()}
    return StepTrace(
        start_bytes=sum(snapshot[TOTAL] for snapshot in start.values()), peak_bytes=memory.peak_by_category()[TOTAL],
        peak_by_category=memory.peak_by_category(), transient_peak_bytes=memory.transient_peak,
        transient_by_category=memory.transient_snapshot, counted_flops=float(counter.get_total_flops()),
        counted_flops_by_module=by_module, formula_flops=dict(formula.counts),
    )


def _cpu_attention_flops(query_shape, key_shape, *args, out_shape=None, **kwargs) -> int:
    """SDPA's CPU flash kernel, which the padded systems' attention runs on fake CPU tensors, counted as
    `_FlashShapedAttention` counts: 4 Dh per (query, key) pair the causal mask keeps, per head. Their
    mask reaches the kernel as a tensor (on fake tensors transformers cannot see that it has no
    padding); on a GPU, without padding, it is dropped for the causal kernel, which skips the pairs above
    the diagonal."""
    batch, heads, queries, head_dim = query_shape
    return 4 * batch * heads * head_dim * causal_pairs([queries], [key_shape[2]])


def _cpu_attention_backward_flops(grad_shape, query_shape, key_shape, *args, out_shape=None, **kwargs) -> int:
    return int(2.5 * _cpu_attention_flops(query_shape, key_shape))


def _addmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


# Products PyTorch's FLOP counter has no formula for: SDPA's CPU kernels (without them the padded systems'
# attention would count for nothing) and the in-place `addmm_` (TRL's fused LM head accumulates its
# backward products with it).
UNCOUNTED_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
    torch.ops.aten.addmm_: _addmm_flops,
}


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=UNCOUNTED_FLOPS)


def forward_flops(call, formula: FormulaFlops) -> float:
    """FLOPs of `call()` under no_grad (a precomputed reference's scoring pass), counted and by formula."""
    formula.counts.clear()
    counter = flop_counter()
    with counter, torch.no_grad():
        call()
    return counter.get_total_flops() + formula.total


def largest_layer_parameters(model: torch.nn.Module) -> int:
    """Parameters of the largest leaf module: what ZeRO-3 gathers at once (DeepSpeed's estimator's input)."""
    return max((sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules()), default=0)


def gib(size: float) -> float:
    return size / 2**30
