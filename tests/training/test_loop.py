"""The training loop: a whole run, and the gradient of a step under DeepSpeed whatever the micro-batches."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import DEMO_DATA, DEMO_EVAL, TINY_MODELS, random_iopo_examples, tiny_llama, training_config
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad
from transformers import AutoModelForCausalLM

from iopo_fast import IOPO, PreferenceLoss, pack_examples
from iopo_fast.model import naive
from iopo_fast.model.micro_batch_plan import plan_micro_batches
from iopo_fast.config import TrainConfig
from iopo_fast.data.examples import packed_length
from iopo_fast.training.engine import NonFiniteLossError, skip_step
from iopo_fast.training.export import export_model
from iopo_fast.training.loop import accumulate_gradients, build, train, train_step

RECORDS = [
    {"x1": f"Name fruit {i} in lowercase.", "x2": f"Name fruit {i} in UPPERCASE.", "y1": f"fruit {i}", "y2": f"FRUIT {i}"}
    for i in range(4)
]


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_train_writes_metrics_rejections_evaluation_plot_and_a_loadable_model(tmp_path, tiny_model_dir, capsys):
    lines = [json.dumps(r) for r in RECORDS]
    train_path = write_jsonl(tmp_path / "train.jsonl", lines[:2] + ["{broken"] + lines[2:])
    eval_path = write_jsonl(tmp_path / "eval.jsonl", lines[:2])
    output_dir = tmp_path / "out"
    config = TrainConfig(model_name_or_path=str(tiny_model_dir), dataset=train_path, eval_dataset=eval_path,
                         output_dir=str(output_dir), per_device_train_batch_size=1, gradient_accumulation_steps=2,
                         learning_rate=1e-3, lr_scheduler_type="constant")

    results = train(config)

    metrics = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # the 4 good records, 2 per step, one epoch
    for m in metrics:
        assert {"loss", "tokens", "tokens_per_sec", "accuracies/group", "grad_norm", "peak_memory_gib"} <= m.keys()
        assert m["tokens"] > 0 and m["tokens_per_sec"] > 0 and m["grad_norm"] > 0
    assert sorted(metrics[0]["examples"] + metrics[1]["examples"]) == [0, 1, 2, 3]
    rejected = [json.loads(line) for line in (output_dir / "rejected_records.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rejected] == [f"{train_path}:3"]
    assert abs(results["before"]["loss"] - 0.693147) < 1e-4  # policy == reference before training
    assert results["after"]["loss"] != results["before"]["loss"]
    assert json.loads((output_dir / "eval_results.json").read_text()) == results
    assert (output_dir / "training.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "1 rejected (1 invalid JSON" in out and "eval after training" in out
    reloaded = AutoModelForCausalLM.from_pretrained(output_dir / "model")
    assert reloaded.config.vocab_size == tiny_llama(len(AutoModelForCausalLM.from_pretrained(tiny_model_dir)
                                                          .get_input_embeddings().weight)).config.vocab_size


@pytest.mark.parametrize("stage, family, algorithm", [
    (0, "llama", "recompute"), (2, "llama", "recompute"), (3, "llama", "recompute"), (3, "qwen2", "recompute"),
    (0, "llama", "example_chunks"), (3, "qwen2", "example_chunks"),
])
def test_step_gradient_is_the_mean_loss_gradient_whatever_the_micro_batches(generator, tmp_path, stage, family,
                                                                            algorithm):
    """Token-budget micro-batches accumulate in the engine exactly the gradient of the mean loss over the
    step, with either log-prob algorithm, and a step abandoned on a non-finite loss leaves no gradient behind."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    # Qwen2's LM head is tied to its embedding: under ZeRO-3 the kernel reads the gathered shared weight.
    policy, examples = TINY_MODELS[family](), random_iopo_examples(7, 96, generator)
    reference_model = copy.deepcopy(policy).requires_grad_(False)
    with torch.no_grad():  # move the policy away from the reference so the loss has a real gradient
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    objective = PreferenceLoss(IOPO, beta=0.5)
    response_lengths = pack_examples(examples).response_lengths
    losses, _ = objective(naive.sequence_logps(policy, examples), naive.sequence_logps(reference_model, examples),
                          response_lengths)
    names = [name for name, _ in policy.named_parameters()]
    expected = torch.autograd.grad(losses.mean(), list(policy.parameters()))

    models = {"policy": policy, "reference": reference_model}
    indices = list(range(len(examples)))
    budget = max(packed_length(e) for e in examples)
    config = TrainConfig(output_dir=str(tmp_path), zero_stage=stage, max_grad_norm=0.0, pref_beta=0.5,
                         per_device_train_batch_size=len(examples), logprob_algorithm=algorithm)
    for plan in (plan_micro_batches(examples, budget), [indices[:3], indices[3:]], [indices]):
        run = build(config, examples=(examples, []), make_model=lambda name: copy.deepcopy(models[name]))
        before = [full_parameter(p).clone() for p in run.engine.module.parameters()]
        run.model.loss = FailsOnFourExamples(objective)
        assert not accumulate_gradients(run, examples, indices, [indices[:3], indices[3:]]).finite
        skip_step(run.engine)
        for name, param, value in zip(names, run.engine.module.parameters(), before):
            assert torch.equal(full_parameter(param), value), name

        run.model.loss = objective
        outcome = accumulate_gradients(run, examples, indices, plan)
        assert outcome.finite and abs(outcome.totals["loss"] / len(examples) - float(losses.detach().mean())) < 1e-5
        for name, param, grad in zip(names, run.engine.module.parameters(), expected):
            torch.testing.assert_close(safe_get_full_grad(param), grad, rtol=1e-4, atol=1e-6, msg=name)


class FailsOnFourExamples:
    """A loss that is NaN for the micro-batch of four examples."""

    def __init__(self, loss: PreferenceLoss):
        self.loss = loss

    def __call__(self, scores, *args):
        losses, metrics = self.loss(scores, *args)
        return (losses * float("nan") if len(scores) == 4 else losses), metrics


def test_export_writes_the_trained_weights(tmp_path, tiny_model_dir):
    run = build(training_config(tiny_model_dir, tmp_path, max_steps=2))
    for step in (1, 2):
        train_step(run, step)
    export_model(run.engine, run.config, run.tokenizer, run.log)
    trained = run.model.model.state_dict()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert exported.keys() == trained.keys()
    for name, weight in exported.items():
        assert torch.equal(weight, trained[name]), name
        assert not torch.equal(weight, initial[name]), name


def full_parameter(param: torch.Tensor) -> torch.Tensor:
    """The whole fp32 value of a parameter, gathered from its ZeRO partitions if it has any."""
    value = safe_get_full_fp32_param(param)
    return param.detach() if value is None else value


def test_nonfinite_steps_are_skipped_logged_and_stop_the_run(tmp_path, tiny_model_dir, monkeypatch):
    import iopo_fast.training.loop as loop

    steps = []

    def counting_steps(*args, **kwargs):
        steps.append(1)
        return accumulate_gradients(*args, **kwargs)

    loss = PreferenceLoss.__call__

    def nonfinite_on_steps_two_and_three(self, *args):
        losses, metrics = loss(self, *args)
        return (losses * float("nan") if torch.is_grad_enabled() and len(steps) in (2, 3) else losses), metrics

    monkeypatch.setattr(loop, "accumulate_gradients", counting_steps)
    monkeypatch.setattr(PreferenceLoss, "__call__", nonfinite_on_steps_two_and_three)
    train(training_config(tiny_model_dir, tmp_path / "a", max_steps=4, max_nonfinite_steps=3, zero_stage=2))
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped") for r in records] == [None, "non-finite loss", "non-finite loss", None]
    assert all(math.isfinite(r["loss"]) for r in (records[0], records[3]))

    steps.clear()
    with pytest.raises(NonFiniteLossError, match="2 steps in a row had a non-finite loss; stopped at step 3"):
        train(training_config(tiny_model_dir, tmp_path / "b", max_steps=4, max_nonfinite_steps=2))


@pytest.mark.parametrize("stage, reference_mode", [(2, "precomputed"), (3, "live")])
def test_lora_run_trains_only_the_adapters_and_exports_them_merged(tmp_path, tiny_model_dir, stage, reference_mode):
    """LoRA with gradient checkpointing; its reference is the base model, precomputed or live."""
    train(training_config(tiny_model_dir, tmp_path, finetuning_type="lora", lora_rank=4, lora_merge_on_export=True,
                          zero_stage=stage, gradient_checkpointing=True, reference=reference_mode, max_steps=2))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert abs(losses[0] - math.log(2)) < 1e-5  # the adapted policy starts as its reference, the base model
    assert abs(losses[1] - math.log(2)) > 1e-6  # and then leaves it: the reference is not the adapted policy

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    merged_weights, base_weights = merged.state_dict(), base.state_dict()
    assert merged_weights.keys() == base_weights.keys()
    for name, weight in base_weights.items():
        adapted = name.endswith("proj.weight")  # lora_target "all": every linear layer but the LM head
        assert torch.equal(merged_weights[name], weight) != adapted, name


def test_eval_steps_write_held_out_metrics_during_training(tmp_path, tiny_model_dir):
    """With the held-out set named through a LLaMA-Factory dataset_info.json."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"demo_eval": {
        "file_name": str(DEMO_EVAL), "ranking": True, "formatting": "sharegpt"}}))
    results = train(training_config(tiny_model_dir, tmp_path, eval_dataset="demo_eval",
                                    dataset_dir=str(tmp_path / "data"), eval_steps=2, max_steps=5, logging_steps=10))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # Written at every evaluation (steps 2 and 4) and at the last step, whatever logging_steps says.
    assert [r["step"] for r in records] == [2, 4, 5]
    assert [("eval/loss" in r, "eval/accuracies/group" in r) for r in records] == [(True, True)] * 2 + [(False, False)]
    assert records[0]["eval/loss"] != records[1]["eval/loss"] and results["after"]["loss"] != records[1]["eval/loss"]


def test_sft_run_trains_the_preferred_responses_without_a_reference_model(tmp_path, tiny_model_dir):
    config = training_config(tiny_model_dir, tmp_path / "out", loss="sft", eval_dataset=str(DEMO_EVAL),
                             max_steps=4)
    loaded = []

    def make_model(name):
        loaded.append(name)
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    run = build(config, make_model=make_model)
    assert loaded == ["policy"] and run.train_reference is None and run.eval_reference is None
    assert len(run.train_examples) == 80  # (x1, y1) and (x2, y2) of each of the 40 records

    results = train(config)

    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all("logps/response" in r and not any(k.startswith("accuracies/") for k in r) for r in records)
    assert results["after"]["loss"] < results["before"]["loss"]
    assert (tmp_path / "out" / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_benchmarks_judge_the_initial_and_the_trained_model(tmp_path, tiny_model_dir):
    output_dir = tmp_path / "out"
    config = training_config(tiny_model_dir, output_dir, max_steps=2, eval_max_new_tokens=3, eval_dtype="bfloat16",
                             eval_benchmarks=f"demo:{DEMO_EVAL}")

    results = train(config)

    for stage, model in (("before", str(tiny_model_dir)), ("after", str(output_dir / "model"))):
        generation = json.loads((output_dir / "eval" / stage / "demo" / "generation.json").read_text())
        assert generation["model"] == model and generation["generation"]["dtype"] == "bfloat16"
        summary = json.loads((output_dir / "eval" / stage / "demo" / "summary.json").read_text())["summary"]
        assert summary == results["benchmarks"][stage]["demo"]
        assert summary["strict"]["prompts"] == 80  # x1 and x2 of the 40 held-out records
    assert json.loads((output_dir / "eval_results.json").read_text())["benchmarks"] == results["benchmarks"]
    first_model = json.loads((output_dir / "eval" / "after" / "demo" / "generation.json").read_text())
    train(config)  # a new run's model replaces the old run's responses
    second_model = json.loads((output_dir / "eval" / "after" / "demo" / "generation.json").read_text())
    assert second_model["model_fingerprint"] != first_model["model_fingerprint"]


def test_comma_separated_datasets_are_mixed_in_their_proportions(tmp_path, tiny_model_dir, capsys):
    both = f"{DEMO_EVAL},{DEMO_DATA / 'train.jsonl'}"  # 40 and 300 examples
    run = build(training_config(tiny_model_dir, tmp_path, dataset=both, interleave_probs="0.5,0.5"))
    assert len(run.train_examples) == 80  # the 40 of the smaller set are half of the mixture
    assert "80 examples mixed from" in capsys.readouterr().out
    assert len(build(training_config(tiny_model_dir, tmp_path / "all", dataset=both)).train_examples) == 340
