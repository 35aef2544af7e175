"""`sequence_logps` on a batch equals the naive one-sequence-at-a-time reference, values and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    TINY_MODELS, TRITON_RUNS_HERE, random_dpo_examples, random_iopo_examples, rerun_under_triton_interpreter,
    triton_only,
)

from iopo_fast import IOPOExample, iopo_loss, pack_examples, pad_examples, reference, sequence_logps
from iopo_fast.kernels.example_chunked_loss import _DEFAULT_CHUNK_LOGITS
from iopo_fast.logprobs import ALGORITHMS, loss_forward
from iopo_fast.packing import unpacked_length
from iopo_fast.model import enable_gradient_checkpointing


def parameter_grads(model, scores: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (scores * weights).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("family", TINY_MODELS)
@pytest.mark.parametrize("make_examples", [random_iopo_examples, random_dpo_examples])
@pytest.mark.parametrize("layout", [pack_examples, pad_examples])
def test_sequence_logps_matches_reference(generator, family, make_examples, layout):
    check_against_reference(generator, family, make_examples, layout, impl="chunked")


@triton_only
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_sequence_logps_through_triton_kernel_matches_reference(generator, family):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU under the interpreter
    check_against_reference(generator, family, random_iopo_examples, pack_examples, impl="triton", device=device)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_loss_forward_matches_reference(generator, monkeypatch, family, algorithm):
    check_loss_against_reference(generator, monkeypatch, family, algorithm, impl="chunked")


@triton_only
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_loss_forward_through_triton_kernel_matches_reference(generator, monkeypatch, algorithm):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU under the interpreter
    check_loss_against_reference(generator, monkeypatch, "qwen2", algorithm, impl="triton", device=device)


@pytest.mark.skipif(TRITON_RUNS_HERE, reason="the Triton cases run in this process")
def test_triton_path_under_interpreter():
    rerun_under_triton_interpreter(__file__, "through_triton_kernel")


def check_against_reference(generator, family, make_examples, layout, impl, device=torch.device("cpu")):
    """Scores and the gradients of every parameter, against `iopo_fast.reference`, in fp32."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model = TINY_MODELS[family]().to(device)
    examples = make_examples(5, model.config.vocab_size, generator)
    weights = torch.randn(len(examples), len(examples[0].roles), generator=generator).to(device)

    batch = layout(examples).to(device)
    scores = sequence_logps(model, batch, impl=impl)
    expected = reference.sequence_logps(model, examples)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)

    grads = parameter_grads(model, scores, weights)
    expected_grads = parameter_grads(model, expected, weights)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def check_loss_against_reference(generator, monkeypatch, family, algorithm, impl, device=torch.device("cpu")):
    """`loss_forward`'s summed IOPO loss, its scores and the gradients of every parameter, against the loss
    of `iopo_fast.reference`'s scores, in fp32; example_chunks in chunks of about two examples."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model = TINY_MODELS[family]().to(device)
    examples = random_iopo_examples(7, model.config.vocab_size, generator)
    monkeypatch.setitem(_DEFAULT_CHUNK_LOGITS, device.type, 2 * max(unpacked_length(e) for e in examples) *
                        model.config.vocab_size)
    reference_logps = (torch.randn(len(examples), 4, generator=generator) - 20).to(device)

    def example_losses(scores, examples=slice(None)):
        return iopo_loss(scores, reference_logps[examples], beta=0.5)[0]

    with loss_forward(model, example_losses, impl=impl, algorithm=algorithm):
        loss, scores = model(pack_examples(examples).to(device))
    expected_scores = reference.sequence_logps(model, examples)
    expected_loss = example_losses(expected_scores).sum()
    assert not scores.requires_grad
    torch.testing.assert_close(scores, expected_scores.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, expected_loss.detach(), rtol=1e-5, atol=1e-6)

    parameters = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, list(parameters.values()))
    expected_grads = torch.autograd.grad(expected_loss, list(parameters.values()))
    for name, grad, expected in zip(parameters, grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5, msg=name)


def test_gradient_checkpointing_keeps_packed_gradients(generator):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model = TINY_MODELS["llama"]()
    examples = random_iopo_examples(4, model.config.vocab_size, generator)
    weights = torch.randn(len(examples), 4, generator=generator)
    batch = pack_examples(examples)
    model.train()
    expected = parameter_grads(model, sequence_logps(model, batch), weights)
    enable_gradient_checkpointing(model)
    grads = parameter_grads(model, sequence_logps(model, batch), weights)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_unsupported_attention_is_refused(generator):
    model = TINY_MODELS["mistral"]()
    model.config.sliding_window = 4
    examples = random_iopo_examples(2, model.config.vocab_size, generator)
    with pytest.raises(NotImplementedError, match="sliding-window attention"):
        sequence_logps(model, pack_examples([IOPOExample([1] * 9, [2], [3], [4])] + examples))
