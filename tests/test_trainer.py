"""The training loop end to end on a tiny random model with the real SmolLM2 tokenizer."""

from __future__ import annotations

import copy
import functools
import json

import torch
from conftest import random_iopo_examples, tiny_llama
from transformers import AutoModelForCausalLM

from iopo_fast import iopo_loss, reference
from iopo_fast.batching import plan_micro_batches
from iopo_fast.config import TrainConfig
from iopo_fast.packing import packed_length
from iopo_fast.trainer import Scorer, train

RECORDS = [
    {"x1": f"Name fruit {i} in lowercase.", "x2": f"Name fruit {i} in UPPERCASE.", "y1": f"fruit {i}", "y2": f"FRUIT {i}"}
    for i in range(4)
]


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_train_writes_metrics_rejections_evaluation_and_a_loadable_model(tmp_path, smollm2_tokenizer, capsys):
    model_dir = tmp_path / "tiny"
    tiny_llama(vocab_size=len(smollm2_tokenizer)).save_pretrained(model_dir)
    smollm2_tokenizer.save_pretrained(model_dir)
    lines = [json.dumps(r) for r in RECORDS]
    train_path = write_jsonl(tmp_path / "train.jsonl", lines[:2] + ["{broken"] + lines[2:])
    eval_path = write_jsonl(tmp_path / "eval.jsonl", lines[:2])
    output_dir = tmp_path / "out"
    config = TrainConfig(model_name_or_path=str(model_dir), dataset=train_path, eval_dataset=eval_path,
                         output_dir=str(output_dir), per_device_train_batch_size=1, gradient_accumulation_steps=2,
                         learning_rate=1e-3, lr_scheduler_type="constant")

    results = train(config)

    metrics = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # the 4 good records, 2 per step, one epoch
    for m in metrics:
        assert {"loss", "tokens", "tokens_per_sec", "accuracies/group", "grad_norm"} <= m.keys()
        assert m["tokens"] > 0 and m["tokens_per_sec"] > 0
    rejected = [json.loads(line) for line in (output_dir / "rejected_records.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rejected] == [f"{train_path}:3"]
    assert abs(results["before"]["loss"] - 0.693147) < 1e-4  # policy == reference before training
    assert results["after"]["loss"] != results["before"]["loss"]
    assert json.loads((output_dir / "eval_results.json").read_text()) == results
    out = capsys.readouterr().out
    assert "1 rejected (1 invalid JSON" in out and "eval after training" in out
    reloaded = AutoModelForCausalLM.from_pretrained(output_dir / "model")
    assert reloaded.config.vocab_size == len(smollm2_tokenizer)


def test_step_gradient_is_the_mean_loss_gradient_whatever_the_micro_batches(generator):
    """Token-budget micro-batches accumulate exactly the gradient of the mean loss over the step."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    policy, examples = tiny_llama(), random_iopo_examples(7, 96, generator)
    reference_model = copy.deepcopy(policy).requires_grad_(False)
    with torch.no_grad():  # move the policy away from the reference so the loss has a real gradient
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    objective = functools.partial(iopo_loss, beta=0.5)
    scorer = Scorer(policy, reference_model, objective, torch.device("cpu"), "auto", "auto")

    losses, _ = objective(reference.sequence_logps(policy, examples), reference.sequence_logps(reference_model, examples))
    expected = torch.autograd.grad(losses.mean(), list(policy.parameters()))
    budget = max(packed_length(e) for e in examples)
    for plan in (plan_micro_batches(examples, budget), [list(range(len(examples)))]):
        policy.zero_grad(set_to_none=True)
        scorer.backward(examples, plan)
        for (name, p), grad in zip(policy.named_parameters(), expected):
            torch.testing.assert_close(p.grad, grad, rtol=1e-4, atol=1e-6, msg=name)
