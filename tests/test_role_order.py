"""The roles are defined once, by the `Objective`: the IOPO objective with its roles in another, equivalent
order gives the same losses on every path (packing, both log-prob algorithms, the precomputed reference
and its cache, the DPO and SFT examples derived from IOPO records)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import permuted_roles, random_iopo_examples, tiny_llama

from iopo_fast import IOPO, IOPOExample, PreferenceLoss, PreferenceModel, pack_examples
from iopo_fast.data.records import load_examples
from iopo_fast.training.reference_model import LiveReference, cache_path, precompute

# x2's roles first; and the roles of one prompt apart, so that an example's rows are not in role order.
ORDERS = [(2, 3, 0, 1), (1, 2, 3, 0)]
SETTINGS = {"dtype": "torch.float32", "attention": "per_segment_sdpa", "logprobs": "chunked", "liger": False,
            "finetuning": "full"}


def losses_and_gradients(model, reference, examples, algorithm, cache_file):
    """The loss of the examples (with an SFT term, which reads the preferred roles), the scores, the reference
    table precomputed into `cache_file`, and the policy's gradients."""
    loss = PreferenceLoss(IOPOExample.objective, beta=0.5, ftx=0.3)
    table = precompute(LiveReference(PreferenceModel(reference)), examples, cache_file, batch_size=2,
                       device=torch.device("cpu")).table
    policy = PreferenceModel(model, loss, logprob_impl="chunked", logprob_algorithm=algorithm, max_chunk_logits=500)
    output = policy(pack_examples(examples), table)
    output.loss.backward()
    return output, table, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("algorithm", ["recompute", "example_chunks"])
@pytest.mark.parametrize("order", ORDERS)
def test_a_permuted_role_order_gives_the_same_losses_on_every_path(generator, monkeypatch, tmp_path, order, algorithm):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model, examples = tiny_llama(), random_iopo_examples(5, 96, generator)
    reference = tiny_llama()  # another model: the reference scores are not the policy's
    runs = {}
    for name, objective in (("defined", IOPO), ("permuted", permuted_roles(IOPO, order))):
        monkeypatch.setattr(IOPOExample, "objective", objective)
        cache_file = cache_path(tmp_path, "tiny", examples, SETTINGS)
        runs[name] = (*losses_and_gradients(copy.deepcopy(model), reference, examples, algorithm, cache_file),
                      cache_file)

    (defined, defined_table, defined_grads, defined_cache) = runs["defined"]
    (permuted, permuted_table, permuted_grads, permuted_cache) = runs["permuted"]
    assert permuted_cache != defined_cache
    # The packed streams differ (x2's prompt first, say): DESIGN.md's fp32 tolerance of packed sequence scores.
    torch.testing.assert_close(permuted.scores, defined.scores[:, list(order)], rtol=0, atol=1e-4)
    torch.testing.assert_close(permuted_table, defined_table[:, list(order)], rtol=0, atol=1e-4)
    torch.testing.assert_close(permuted.loss, defined.loss, rtol=0, atol=1e-4)
    for name in ("loss", "rewards/margin", "accuracies/group", "accuracies/output_v1", "accuracies/input_y2"):
        torch.testing.assert_close(permuted.metrics[name], defined.metrics[name], rtol=0, atol=1e-4)
    # The same sums in another order: DESIGN.md's fp32 gradient tolerance, as a norm per parameter.
    for permuted_grad, defined_grad in zip(permuted_grads, defined_grads):
        assert (permuted_grad - defined_grad).norm() <= 1e-4 * defined_grad.norm()


@pytest.mark.parametrize("loss", ["dpo", "sft"])
def test_dpo_and_sft_examples_derived_from_iopo_records_do_not_depend_on_the_role_order(
        smollm2_tokenizer, monkeypatch, tmp_path, loss):
    records = [{"x1": f"Write about topic {i} in lowercase.", "x2": f"Write about topic {i} in UPPERCASE.",
                "y1": f"topic {i} in lowercase.", "y2": f"TOPIC {i} IN UPPERCASE."} for i in range(3)]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    derived = {}
    for name, objective in (("defined", IOPO), ("permuted", permuted_roles(IOPO, ORDERS[0]))):
        monkeypatch.setattr(IOPOExample, "objective", objective)
        derived[name] = load_examples(path, smollm2_tokenizer, loss=loss)[0]
    assert len(derived["defined"]) == 2 * len(records)
    assert sorted(map(repr, derived["permuted"])) == sorted(map(repr, derived["defined"]))
    y1 = smollm2_tokenizer.encode(records[0]["y1"], add_special_tokens=False)
    first = derived["defined"][0]  # x1's example keeps y1, its own response, as the preferred one
    assert (first.chosen if loss == "dpo" else first.response)[:len(y1)] == y1
