"""`varlen_attention` against plain causal attention of the unpacked sequences, in float64.

Every packed segment must compute exactly the rows of its unpacked sequence that it holds, with the
bottom-right causal alignment of DESIGN.md ("Packing layout"), and the same gradients w.r.t. q, k, v.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from iopo_fast.config import TrainConfig
from iopo_fast.model import attention as attention_module
from iopo_fast.model.attention import resolve_backend, varlen_attention

HEAD_DIM = 8
HEADS = [(4, 2), (4, 4)]  # (query heads, key/value heads): GQA and plain multi-head
HEAD_IDS = ["gqa", "mha"]
FLOAT64_ATOL = 1e-10


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Float64 agreement to FLOAT64_ATOL (the packed and unpacked sums differ only in rounding)."""
    error = (actual - expected).abs().max().item()
    print(f"{what}: max abs error {error:.2e}")
    assert actual.shape == expected.shape, what
    assert error <= FLOAT64_ATOL, what


def random_qkv(length: int, heads: tuple[int, int], generator: torch.Generator) -> list[torch.Tensor]:
    """Leaf tensors q [length, H, Dh], k and v [length, Hkv, Dh] in float64."""
    num_heads, num_kv_heads = heads
    shapes = [(length, num_heads, HEAD_DIM), (length, num_kv_heads, HEAD_DIM), (length, num_kv_heads, HEAD_DIM)]
    return [torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_() for shape in shapes]


def causal_attention(query, key, value, scale=None) -> torch.Tensor:
    """Plain causal attention of one unpacked sequence, [L, H, Dh], K/V heads repeated for GQA."""
    repeats = query.shape[1] // key.shape[1]
    key, value = (t.repeat_interleave(repeats, dim=1) for t in (key, value))
    output = F.scaled_dot_product_attention(
        query.transpose(0, 1)[None], key.transpose(0, 1)[None], value.transpose(0, 1)[None],
        is_causal=True, scale=scale,
    )
    return output[0].transpose(0, 1)


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)


def random_int(low: int, high: int, generator: torch.Generator) -> int:
    """A random integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def sequence_shapes(layout: str, generator: torch.Generator) -> list[tuple[int, int]]:
    """(sequence length L, queries m) per segment: m = L for square segments, m <= L for suffixes.

    Fixed edge cases (length-1 sequences, a length-1 prompt: L = m + 1, long next to short) and
    random ones.
    """
    shapes = [(1, 1), (2, 1), (9, 8), (40, 3), (5, 5), (1, 1)]
    for _ in range(4):
        length = random_int(1, 48, generator)
        shapes.append((length, random_int(1, length, generator)))
    return [(length, length) for length, _ in shapes] if layout == "square" else shapes


@pytest.mark.parametrize("scale", [None, 0.37])
@pytest.mark.parametrize("layout", ["square", "suffix"])
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_packed_attention_equals_unpacked_causal_attention(generator, heads, layout, scale):
    """Segment i holds the last m_i queries and all L_i keys of sequence i: bottom-right causal
    attention must give the last m_i rows of the sequence's full causal attention."""
    shapes = sequence_shapes(layout, generator)
    sequences = [random_qkv(length, heads, generator) for length, _ in shapes]
    query_lengths = [num_queries for _, num_queries in shapes]
    key_lengths = [length for length, _ in shapes]

    packed = varlen_attention(
        torch.cat([q[-m:] for (q, _, _), m in zip(sequences, query_lengths)]),
        torch.cat([k for _, k, _ in sequences]),
        torch.cat([v for _, _, v in sequences]),
        cu_seqlens(query_lengths), cu_seqlens(key_lengths), max(query_lengths), max(key_lengths), scale=scale,
    )
    unpacked = torch.cat([causal_attention(*sequence, scale=scale)[-m:]
                          for sequence, m in zip(sequences, query_lengths)])
    assert_close(packed, unpacked, "output")

    upstream = torch.randn(packed.shape, generator=generator, dtype=torch.float64)
    leaves = [t for sequence in sequences for t in sequence]
    packed_grads = torch.autograd.grad(packed, leaves, upstream)
    unpacked_grads = torch.autograd.grad(unpacked, leaves, upstream)
    for index, (actual, expected) in enumerate(zip(packed_grads, unpacked_grads)):
        assert_close(actual, expected, f"grad of sequence {index // 3}'s {'qkv'[index % 3]}")


@pytest.mark.parametrize("lengths", [(1, 1, 1), (1, 6, 2), (7, 1, 4), (5, 3, 1), "random"])
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_shared_prefix_layout_equals_two_unpacked_sequences(generator, heads, lengths):
    """DESIGN.md "Packing layout", pack A: the physical stream is [x1 | y1 | y2] (P + L1 + L2 rows).

    Segment A.1: queries rows [0, P + L1), keys the same rows (x1 y1, square).
    Segment A.2: queries rows [P + L1, P + L1 + L2), keys rows [0, P) ++ [P + L1, P + L1 + L2)
    (x1 y2, gathered by kv_index), bottom-right aligned.
    Outputs must equal the unpacked sequences (x1 y1) and (x1 y2), and the gradients w.r.t. the
    physical q, k, v the sum of theirs: x1's K/V rows serve both sequences.
    """
    if lengths == "random":
        lengths = tuple(random_int(1, 20, generator) for _ in range(3))
    prompt_length, length1, length2 = lengths
    y1_end = prompt_length + length1
    stream_length = y1_end + length2
    physical = random_qkv(stream_length, heads, generator)
    kv_index = torch.cat([torch.arange(0, y1_end), torch.arange(0, prompt_length), torch.arange(y1_end, stream_length)])
    cu_seqlens_q = cu_seqlens([y1_end, length2])
    cu_seqlens_k = cu_seqlens([y1_end, prompt_length + length2])

    query, key, value = physical
    packed = varlen_attention(query, key[kv_index], value[kv_index], cu_seqlens_q, cu_seqlens_k,
                              max(y1_end, length2), max(y1_end, prompt_length + length2))
    upstream = torch.randn(packed.shape, generator=generator, dtype=torch.float64)
    packed_grads = torch.autograd.grad(packed, physical, upstream)

    # The two unpacked sequences, each with its own leaves.
    x1_y1 = [t[:y1_end].detach().requires_grad_() for t in physical]
    x1_y2 = [torch.cat([t[:prompt_length], t[y1_end:]]).detach().requires_grad_() for t in physical]
    output1 = causal_attention(*x1_y1)
    output2 = causal_attention(*x1_y2)[prompt_length:]  # the packed stream holds y2's rows of (x1, y2)
    assert_close(packed, torch.cat([output1, output2]), "output")
    grads1 = torch.autograd.grad(output1, x1_y1, upstream[:y1_end])
    grads2 = torch.autograd.grad(output2, x1_y2, upstream[y1_end:])

    for name, actual, grad1, grad2 in zip("qkv", packed_grads, grads1, grads2):
        expected = torch.cat([grad1[:prompt_length] + grad2[:prompt_length], grad1[prompt_length:],
                              grad2[prompt_length:]])
        assert_close(actual, expected, f"grad of physical {name}")


def backend_unavailable(backend: str) -> str | None:
    """Why `backend` cannot run bf16 on this machine's GPU, or None."""
    if not torch.cuda.is_available():
        return "needs CUDA"
    try:
        resolve_backend(torch.device("cuda"), torch.bfloat16, backend)
    except ValueError as error:
        return str(error)
    return None


@pytest.mark.parametrize("backend", ["flash_attn", "torch_varlen"])
@pytest.mark.parametrize("heads", [(8, 2), (4, 4)], ids=HEAD_IDS)
def test_cuda_backends_are_as_accurate_as_pytorch_attention_in_bf16(generator, heads, backend):
    """A fast backend on the shared-prefix segments, in bf16, against float64 on the same inputs: its
    error must stay within twice that of per_segment_sdpa (PyTorch) run in bf16 (flash-attn's
    own criterion), for the output and the gradients of q, k and v."""
    reason = backend_unavailable(backend)
    if reason is not None:
        pytest.skip(reason)
    shapes = sequence_shapes("suffix", generator) + [(512, 200), (300, 300)]
    query_lengths, key_lengths = [m for _, m in shapes], [length for length, _ in shapes]
    num_heads, num_kv_heads = heads
    query = torch.randn(sum(query_lengths), num_heads, 64, generator=generator).to(torch.bfloat16)
    key, value = (torch.randn(sum(key_lengths), num_kv_heads, 64, generator=generator).to(torch.bfloat16)
                  for _ in range(2))
    upstream = torch.randn(query.shape, generator=generator).to(torch.bfloat16)
    segments = (cu_seqlens(query_lengths), cu_seqlens(key_lengths), max(query_lengths), max(key_lengths))

    def run(name: str, dtype: torch.dtype, device: str):
        leaves = [t.to(device, dtype).requires_grad_() for t in (query, key, value)]
        output = varlen_attention(*leaves, *(s.to(device) if torch.is_tensor(s) else s for s in segments),
                                  backend=name)
        return [output, *torch.autograd.grad(output, leaves, upstream.to(device, dtype))]

    exact = run("per_segment_sdpa", torch.float64, "cpu")
    pytorch_bf16 = run("per_segment_sdpa", torch.bfloat16, "cuda")
    fast = run(backend, torch.bfloat16, "cuda")
    for name, expected, baseline, actual in zip(["output", "dq", "dk", "dv"], exact, pytorch_bf16, fast):
        baseline_error = (baseline.double().cpu() - expected).abs().max().item()
        error = (actual.double().cpu() - expected).abs().max().item()
        print(f"{backend} {name}: max abs error {error:.2e} (PyTorch bf16: {baseline_error:.2e})")
        assert error <= 2 * baseline_error + 1e-5, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cpu_resolves_to_per_segment_sdpa(dtype):
    assert resolve_backend(torch.device("cpu"), dtype) == "per_segment_sdpa"
    assert resolve_backend(torch.device("cpu"), dtype, "per_segment_sdpa") == "per_segment_sdpa"


def test_the_backend_s_earlier_name_is_accepted_with_a_warning():
    with pytest.warns(FutureWarning, match="'reference' is now called 'per_segment_sdpa'"):
        assert resolve_backend(torch.device("cpu"), torch.float32, "reference") == "per_segment_sdpa"
    with pytest.warns(FutureWarning, match="'reference' is now called 'per_segment_sdpa'"):
        assert TrainConfig(attention_backend="reference").attention_backend == "per_segment_sdpa"


@pytest.mark.parametrize("backend", ["flash_attn", "torch_varlen"])
def test_forcing_a_cuda_backend_on_cpu_raises(generator, backend):
    with pytest.raises(ValueError, match=f"'{backend}' cannot run: it needs a CUDA device, got cpu"):
        resolve_backend(torch.device("cpu"), torch.bfloat16, backend)
    query, key, value = random_qkv(3, (2, 2), generator)
    with pytest.raises(ValueError, match=f"'{backend}' cannot run"):
        varlen_attention(query, key, value, cu_seqlens([3]), cu_seqlens([3]), 3, 3, backend=backend)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="must be one of"):
        resolve_backend(torch.device("cpu"), torch.float32, "sdpa")


# Valid call: Tq = 6, Tk = 9, segments (lq, lk) = (2, 3) and (4, 6); each case changes one argument.
BAD_INPUTS = {
    "q offsets end before Tq": ({"cu_seqlens_q": [0, 2, 5]}, "from 0 to the stream lengths"),
    "k offsets end after Tk": ({"cu_seqlens_k": [0, 3, 10]}, "from 0 to the stream lengths"),
    "offsets start after 0": ({"cu_seqlens_q": [1, 2, 6]}, "from 0 to the stream lengths"),
    "decreasing offsets": ({"cu_seqlens_q": [0, 7, 6]}, "must not decrease"),
    "fewer keys than queries": ({"cu_seqlens_q": [0, 4, 6]}, r"segment 0 has fewer keys \(3\) than queries \(4\)"),
    "segment counts differ": ({"cu_seqlens_q": [0, 6]}, "n \\+ 1 >= 2 offsets"),
    "max_seqlen_q too small": ({"max_seqlen_q": 3}, "below the longest segments"),
    "heads not a multiple": ({"key_heads": 3}, "multiple of key/value heads"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise(generator, case):
    change, message = BAD_INPUTS[case]
    arguments = {"cu_seqlens_q": [0, 2, 6], "cu_seqlens_k": [0, 3, 9], "max_seqlen_q": 4, "max_seqlen_k": 6,
                 "key_heads": 2} | change
    query = torch.randn(6, 4, HEAD_DIM, generator=generator, dtype=torch.float64)
    key, value = (torch.randn(9, arguments["key_heads"], HEAD_DIM, generator=generator, dtype=torch.float64)
                  for _ in range(2))
    with pytest.raises(ValueError, match=message):
        varlen_attention(
            query, key, value,
            torch.tensor(arguments["cu_seqlens_q"], dtype=torch.int32),
            torch.tensor(arguments["cu_seqlens_k"], dtype=torch.int32),
            arguments["max_seqlen_q"], arguments["max_seqlen_k"],
        )


# The library functions the CUDA backends call, and where each is imported from. On a machine without a GPU
# the call is checked against the installed library's signature (flash-attn does not install there).
CUDA_LIBRARY_CALLS = {
    "torch_varlen": ("torch.nn.attention.varlen", "varlen_attn", attention_module._run_torch_varlen),
    "flash_attn": ("flash_attn", "flash_attn_varlen_func", attention_module._run_flash_attn),
}


@pytest.mark.parametrize("backend", sorted(CUDA_LIBRARY_CALLS))
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_cuda_backends_call_their_library_as_its_signature_reads(generator, monkeypatch, backend, heads):
    """The arguments a CUDA backend passes bind to the installed library function's signature (names,
    positions, keyword-only ones), and the causal window is the tuple varlen_attn compares against."""
    module_name, function_name, run = CUDA_LIBRARY_CALLS[backend]
    library = pytest.importorskip(module_name, reason=f"{module_name} is not installed here")
    real = getattr(library, function_name)
    calls = []

    def recorder(*args, **kwargs):
        calls.append(inspect.signature(real).bind(*args, **kwargs).arguments)
        return torch.zeros_like(args[0])

    monkeypatch.setattr(library, function_name, recorder)
    query, key, value = random_qkv(9, heads, generator)
    cu_seqlens = torch.tensor([0, 4, 9])
    output = run(query, key, value, cu_seqlens, cu_seqlens, 5, 5, 0.5)
    [arguments] = calls
    assert output.shape == query.shape
    if backend == "torch_varlen":
        assert arguments["window_size"] == (-1, 0) and arguments["scale"] == 0.5
        assert arguments["enable_gqa"] == (heads[0] != heads[1])
    else:
        assert arguments["causal"] is True and arguments["softmax_scale"] == 0.5
