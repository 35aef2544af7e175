"""`PreferenceModel` on a batch equals the naive one-sequence-at-a-time path (`iopo_fast.model.naive`): scores,
loss, gradients.

The naive path always scores a copy of the model made before the `PreferenceModel` took it over, so it
runs the model exactly as transformers loaded it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    TINY_MODELS, TRITON_RUNS_HERE, random_dpo_examples, random_iopo_examples, random_sft_examples,
    rerun_under_triton_interpreter, triton_only,
)

from iopo_fast import (
    IOPO, IOPOExample, PreferenceLoss, PreferenceModel, SFTLoss, pack_examples, pad_examples,
)
from iopo_fast.model import naive
from iopo_fast.model.loading import enable_gradient_checkpointing
from iopo_fast.data.examples import unpacked_length
from iopo_fast.model.preference_model import ALGORITHMS

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU under the Triton interpreter


def seeded_model(generator, family: str, device=torch.device("cpu")):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    return TINY_MODELS[family]().to(device)


def adopt(model, **settings):
    """(a PreferenceModel around `model`, a copy of `model` as it was before, for the naive path)."""
    original = copy.deepcopy(model)
    return PreferenceModel(model, **settings), original


def assert_same_grads(preference_model, original, loss, expected_loss, tolerance=1e-5):
    """d loss / d parameter of the adopted model against d expected_loss / d parameter of the original, as
    DESIGN.md measures whole-model gradients: relative error as a norm per parameter (fp32 summation order
    alone moves single elements of a gradient as large as 10 by more than 1e-6)."""
    parameters = dict(preference_model.model.named_parameters())
    expected_parameters = dict(original.named_parameters())
    assert parameters.keys() == expected_parameters.keys()
    grads = torch.autograd.grad(loss, list(parameters.values()))
    expected_grads = torch.autograd.grad(expected_loss, list(expected_parameters.values()))
    for name, grad, expected in zip(parameters, grads, expected_grads, strict=True):
        relative_error = ((grad - expected).norm() / expected.norm()).item()
        assert relative_error <= tolerance, f"{name}: relative error {relative_error:.2e} > {tolerance:.0e}"


@pytest.mark.parametrize("family", TINY_MODELS)
@pytest.mark.parametrize("make_examples", [random_iopo_examples, random_dpo_examples, random_sft_examples])
@pytest.mark.parametrize("layout", [pack_examples, pad_examples])
def test_scores_match_naive(generator, family, make_examples, layout):
    check_scores(generator, family, make_examples, layout, impl="chunked")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sft_loss_is_transformers_own_language_modeling_loss(generator, algorithm):
    """The SFT loss of a packed batch against each sequence's `model(input_ids, labels=...).loss` (the mean
    cross-entropy over its response tokens, the prompt labelled -100), averaged over the examples."""
    model = seeded_model(generator, "qwen2")
    examples = random_sft_examples(5, model.config.vocab_size, generator)
    preference_model, original = adopt(model, loss=SFTLoss(), logprob_algorithm=algorithm)

    output = preference_model(pack_examples(examples))

    expected = []
    for example in examples:
        input_ids = torch.tensor([example.prompt + example.response])
        labels = torch.tensor([[-100] * len(example.prompt) + example.response])
        expected.append(original(input_ids=input_ids, labels=labels).loss)
    expected_loss = torch.stack(expected).sum()
    torch.testing.assert_close(output.loss, expected_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.metrics["loss"], torch.stack(expected).detach(), rtol=1e-5, atol=1e-6)
    assert_same_grads(preference_model, original, output.loss, expected_loss)


@pytest.mark.parametrize("layout", [pack_examples, pad_examples])
def test_full_logits_head_matches_naive(generator, layout):
    check_scores(generator, "qwen2", random_iopo_examples, layout, impl="full_logits")


@triton_only
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_scores_through_triton_kernel_match_naive(generator, family):
    check_scores(generator, family, random_iopo_examples, pack_examples, impl="triton", device=DEVICE)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_loss_matches_naive(generator, family, algorithm):
    check_loss(generator, family, algorithm, impl="chunked")


@triton_only
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_loss_through_triton_kernel_matches_naive(generator, algorithm):
    check_loss(generator, "qwen2", algorithm, impl="triton", device=DEVICE)


@pytest.mark.skipif(TRITON_RUNS_HERE, reason="the Triton cases run in this process")
def test_triton_path_under_interpreter():
    rerun_under_triton_interpreter(__file__, "through_triton_kernel")


def check_scores(generator, family, make_examples, layout, impl, device=torch.device("cpu")):
    """Scores and the gradients of every parameter, against `iopo_fast.model.naive`, in fp32."""
    preference_model, original = adopt(seeded_model(generator, family, device), logprob_impl=impl)
    examples = make_examples(5, original.config.vocab_size, generator)
    weights = torch.randn(len(examples), examples[0].objective.num_roles, generator=generator).to(device)

    output = preference_model(layout(examples).to(device))
    expected = naive.sequence_logps(original, examples)
    assert output.loss is None and not output.metrics
    torch.testing.assert_close(output.scores, expected, rtol=0, atol=1e-5)
    assert_same_grads(preference_model, original, (output.scores * weights).sum(), (expected * weights).sum())


def check_loss(generator, family, algorithm, impl, device=torch.device("cpu")):
    """The summed IOPO loss, the scores, the metrics and the gradients of every parameter against the loss of
    `iopo_fast.model.naive`'s scores, in fp32; example_chunks in chunks of about two examples."""
    model = seeded_model(generator, family, device)
    examples = random_iopo_examples(7, model.config.vocab_size, generator)
    loss = PreferenceLoss(IOPO, beta=0.5, ftx=0.3)
    chunk_logits = 2 * max(unpacked_length(e) for e in examples) * model.config.vocab_size
    preference_model, original = adopt(model, loss=loss, logprob_impl=impl, logprob_algorithm=algorithm,
                                       max_chunk_logits=chunk_logits)
    batch = pack_examples(examples).to(device)
    reference_scores = (torch.randn(len(examples), 4, generator=generator) - 20).to(device)

    output = preference_model(batch, reference_scores)
    expected_scores = naive.sequence_logps(original, examples)
    expected_losses, expected_metrics = loss(expected_scores, reference_scores, batch.response_lengths)
    torch.testing.assert_close(output.scores.detach(), expected_scores.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(output.loss, expected_losses.sum().detach(), rtol=1e-5, atol=1e-6)
    assert output.metrics.keys() == expected_metrics.keys()
    for name, values in output.metrics.items():
        torch.testing.assert_close(values, expected_metrics[name], rtol=1e-4, atol=1e-5, msg=name)
    assert_same_grads(preference_model, original, output.loss, expected_losses.sum())


def test_ordinary_forward_is_unchanged(generator):
    """After the take-over, an ordinary call (as generation makes) gives the logits of the model as loaded."""
    preference_model, original = adopt(seeded_model(generator, "llama"))
    input_ids = torch.randint(0, original.config.vocab_size, (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # left padding
    logits = preference_model.model(input_ids=input_ids, attention_mask=attention_mask).logits
    expected = original(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_tied_head_stays_tied(generator):
    preference_model, _ = adopt(seeded_model(generator, "qwen2"))
    assert preference_model.head.weight is preference_model.model.get_input_embeddings().weight


def test_naive_refuses_a_model_taken_over(generator):
    preference_model, _ = adopt(seeded_model(generator, "llama"))
    examples = random_iopo_examples(1, preference_model.model.config.vocab_size, generator)
    with pytest.raises(ValueError, match="a copy made before"):
        naive.sequence_logps(preference_model.model, examples)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_checkpointing_recomputes_each_layer_with_the_same_gradients(generator, checkpointing):
    """With checkpointing every decoder layer runs twice per step (forward, recomputed in the backward),
    else once; the gradients are those of the reference either way. (Counted by each layer's MLP `forward`: a
    recomputation runs no module hooks.)"""
    model = seeded_model(generator, "llama")
    examples = random_iopo_examples(4, model.config.vocab_size, generator)
    weights = torch.randn(len(examples), 4, generator=generator)
    original = copy.deepcopy(model)
    if checkpointing:
        enable_gradient_checkpointing(model)
    preference_model = PreferenceModel(model).train()
    calls = []
    for layer in model.model.layers:
        layer.mlp.forward = counted(layer.mlp.forward, calls)

    scores = preference_model(pack_examples(examples)).scores
    assert len(calls) == len(model.model.layers)
    expected = naive.sequence_logps(original, examples)
    assert_same_grads(preference_model, original, (scores * weights).sum(), (expected * weights).sum())
    assert len(calls) == len(model.model.layers) * (2 if checkpointing else 1)


def counted(forward, calls: list):
    def forward_and_count(*args, **kwargs):
        calls.append(forward)
        return forward(*args, **kwargs)

    return forward_and_count


def test_a_sliding_window_shorter_than_a_sequence_is_refused_and_a_longer_one_runs(generator):
    model = TINY_MODELS["mistral"]()
    model.config.sliding_window = 9  # as Mistral-7B-v0.1 sets one, with no use_sliding_window flag
    preference_model = PreferenceModel(model)
    short = [IOPOExample([1] * 4, [2] * 4, [3], [4])]  # the longest sequence: 4 + 1 + 1 keys
    assert preference_model(pack_examples(short)).scores.shape == (1, 4)
    with pytest.raises(NotImplementedError, match="sliding-window attention"):
        preference_model(pack_examples([IOPOExample([1] * 9, [2], [3], [4])] + short))
