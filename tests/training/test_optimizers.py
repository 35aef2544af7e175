"""The optimizers: the step inside the backward, 8-bit states, pure bf16 with stochastic rounding."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_iopo_examples
from transformers import LlamaConfig, LlamaForCausalLM

from iopo_fast.config import ConfigError, TrainConfig
from iopo_fast.training.loop import build, train_step
from iopo_fast.training.optimizers import NonFiniteGradientError, OptimizerInBackward, adamw, parameter_groups

VOCAB = 96


def small_llama() -> LlamaForCausalLM:
    """Large enough that torchao keeps 8-bit states for its MLP matrices (64 x 128: 4,096 values or more)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def examples():
    return random_iopo_examples(16, VOCAB, torch.Generator().manual_seed(0))


def trained(tmp_path, examples, steps: int = 4, *, first_step: int = 1, stop_after: int | None = None, **settings):
    """(step records, parameters before, parameters after, optimizer) of a run of `steps` steps of 4 examples,
    from `first_step` to the last, or to `stop_after`, checkpointed then."""
    config = TrainConfig(**{
        "output_dir": str(tmp_path), "per_device_train_batch_size": 4, "max_steps": steps, "learning_rate": 1e-3,
        "max_grad_norm": 0.0, "weight_decay": 0.1, "lr_scheduler_type": "cosine", "warmup_ratio": 0.25,
        "resume": "never" if first_step == 1 else "auto", **settings})
    model = small_llama().to(config.model_dtype)
    run = build(config, examples=(examples, []), make_model=lambda name: copy.deepcopy(model))
    try:
        assert run.trainer_state["step"] == first_step - 1
        before = [param.detach().clone() for param in run.model.parameters()]
        records = [train_step(run, step) for step in range(first_step, (stop_after or steps) + 1)]
        if stop_after:
            run.checkpoints.save(run.engine, run.trainer_state)
        return records, before, [param.detach().clone() for param in run.model.parameters()], run.engine.optimizer
    finally:
        run.engine.destroy()


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_8bit"])
def test_the_step_in_the_backward_equals_the_step_after_it(tmp_path, examples, finetuning_type, optim):
    """fp32: the same losses, gradient norms and weights, the schedule's learning rate and the weight decay
    included (the first step's learning rate is 0, in warm-up)."""
    settings = {"finetuning_type": finetuning_type, "optim": optim}
    after_backward = trained(tmp_path / "after", examples, **settings)
    in_backward = trained(tmp_path / "in", examples, optimizer_in_backward=True, **settings)
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in in_backward[0]] == pytest.approx([r[key] for r in after_backward[0]], rel=1e-6)
    changed = 0
    for got, want, initial in zip(in_backward[2], after_backward[2], after_backward[1]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        changed += not torch.equal(want, initial)
    trained_tensors = sum(len(group["params"]) for group in after_backward[3].param_groups)
    assert changed == trained_tensors > 0  # every trained tensor moved, and only those


def test_bf16_parameters_are_stepped_through_fp32_masters():
    """In the backward, against the plain twin: the whole gradient first, then AdamW on fp32 copies that
    are rounded into the bf16 weights. At this learning rate most updates are below half a bf16 step, and
    only the masters keep them."""
    config = TrainConfig(learning_rate=1e-5, weight_decay=0.1, bf16=True)
    model, twin = small_llama().bfloat16(), small_llama().bfloat16()
    optimizer = OptimizerInBackward(parameter_groups(model, config), lambda groups: adamw(groups, config),
                                    master_weights=True, lr=config.learning_rate)
    masters = [param.detach().float() for param in twin.parameters()]
    twin_optimizer = torch.optim.AdamW(masters, lr=config.learning_rate, weight_decay=0.1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids = torch.randint(0, VOCAB, (2, 24), generator=generator)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        assert all(param.grad is None for param in model.parameters())  # each freed as soon as it was used
        twin(ids, labels=ids).loss.backward()
        for master, param in zip(masters, twin.parameters()):
            master.grad = param.grad.float()
        twin_optimizer.step()
        with torch.no_grad():
            for master, param in zip(masters, twin.parameters()):
                param.copy_(master)
                param.grad = None
    for got, want in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    own_masters = optimizer.state_dict()["masters"]
    assert all(master.dtype == torch.float32 for master in own_masters) and len(own_masters) == len(masters)
    in_group_order = [param for group in optimizer.param_groups for param in group["params"]]
    moved = sum(int((master != param.float()).sum()) for master, param in zip(own_masters, in_group_order))
    assert moved > 0.5 * sum(master.numel() for master in own_masters)


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_8bit"])
def test_pure_bf16_keeps_updates_below_half_a_bf16_step_on_average(optim):
    """1 - 1e-3 rounds back to 1 in bf16 (its step below 1 is 2^-8); with stochastic rounding, ten steps of
    about 1e-3 take the mean to 0.99. The states that are not 8-bit are fp32, the small tensor's too: in
    bf16, Adam's second moment could not decay by 0.1% a step."""
    config = TrainConfig(bf16=True, pure_bf16=True, optim=optim, learning_rate=1e-3, weight_decay=0.0)
    weight = torch.nn.Parameter(torch.ones(64, 64, dtype=torch.bfloat16))
    norm = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    optimizer = adamw([{"params": [weight, norm]}], config)
    for _ in range(10):
        weight.grad, norm.grad = torch.ones_like(weight), torch.ones_like(norm)
        optimizer.step()
    assert weight.dtype == torch.bfloat16
    assert float(weight.detach().float().mean()) == pytest.approx(0.99, abs=1e-3)
    assert optimizer.state[norm]["exp_avg_sq"].dtype == torch.float32
    expected = "OptimState8bit" if optim == "adamw_torch_8bit" else "Tensor"
    assert type(optimizer.state[weight]["exp_avg_sq"]).__name__ == expected


def test_8bit_states_except_for_the_embeddings_and_no_weight_jumps(tmp_path, examples):
    """The MLP matrices get 8-bit states, the embedding and the LM head fp32 ones: in 8 bits, the embedding's
    rows of rare tokens would move by hundreds of learning rates in two steps (seen: 754)."""
    records, before, after, optimizer = trained(tmp_path, examples, steps=2, optim="adamw_torch_8bit",
                                                optimizer_in_backward=True, lr_scheduler_type="constant",
                                                warmup_ratio=0.0, weight_decay=0.0)
    names = [name for name, _ in small_llama().named_parameters()]
    for name, initial, final in zip(names, before, after):
        assert float((final - initial).abs().max()) < 3 * 1e-3, name  # two steps of Adam, about 1e-3 each
    state_types = {}  # by shape: (96, 64) the embedding and the LM head, (128, 64) two MLP matrices
    for _, param, master, parameter_optimizer in optimizer._steppers:
        state_types.setdefault(tuple(param.shape), set()).add(type(parameter_optimizer.state[master]["exp_avg"]).__name__)
    assert state_types[(128, 64)] == {"OptimState8bit"} and state_types[(VOCAB, 64)] == {"Tensor"}


@pytest.mark.parametrize("settings", [
    {"optim": "adamw_torch_8bit"},
    {"optim": "adamw_torch_8bit", "optimizer_in_backward": True, "bf16": True},
    {"optim": "adamw_torch_8bit", "optimizer_in_backward": True, "bf16": True, "pure_bf16": True},
    {"bf16": True, "pure_bf16": True, "max_grad_norm": 1.0, "gradient_accumulation_steps": 2},
], ids=["8bit", "8bit-in-backward-masters", "8bit-in-backward-pure-bf16", "pure-bf16-after-backward"])
def test_a_resumed_run_continues_exactly(tmp_path, examples, settings):
    """Stopped after step 3 of 6 and resumed from its checkpoint: the 8-bit states, the fp32 masters, the
    fp32 states of bf16 weights and the random draws of stochastic rounding are all restored, so the last
    three steps are the uninterrupted run's. Pure bf16 also runs after the backward, where DeepSpeed steps it
    with clipping and accumulation."""
    uninterrupted = trained(tmp_path / "uninterrupted", examples, steps=6, **settings)
    trained(tmp_path / "stopped", examples, steps=6, stop_after=3, **settings)
    resumed = trained(tmp_path / "stopped", examples, steps=6, first_step=4, **settings)
    assert [r["loss"] for r in resumed[0]] == [r["loss"] for r in uninterrupted[0][3:]]
    for got, want in zip(resumed[2], uninterrupted[2]):
        assert torch.equal(got, want)


def test_a_non_finite_loss_skips_the_step_and_a_non_finite_gradient_stops(tmp_path, examples):
    config = TrainConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
                         max_grad_norm=0.0, optimizer_in_backward=True, resume="never")
    model = small_llama()
    run = build(config, examples=(examples, []), make_model=lambda name: copy.deepcopy(model))
    try:
        weights = [param.detach().clone() for param in run.model.parameters()]
        loss = run.model.loss

        def nan_loss(*args):
            losses, metrics = loss(*args)
            return losses * float("nan"), metrics

        run.model.loss = nan_loss
        assert "grad_norm" not in train_step(run, 1)
        assert run.trainer_state["nonfinite_in_a_row"] == 1
        assert all(torch.equal(p, w) for p, w in zip(run.model.parameters(), weights))
        run.model.loss = loss
        handle = next(run.model.parameters()).register_hook(lambda grad: grad * float("nan"))
        with pytest.raises(NonFiniteGradientError, match="non-finite gradient"):
            train_step(run, 2)
        handle.remove()
    finally:
        run.engine.destroy()


@pytest.mark.parametrize("settings", [{}, {"bf16": True, "pure_bf16": True, "optim": "adamw_torch_8bit"}],
                         ids=["fp32", "pure-bf16"])
def test_a_non_finite_gradient_of_a_finite_loss_skips_the_step_after_the_backward(tmp_path, examples, settings):
    """Without DeepSpeed's bf16 optimizer, which checks the gradient itself, the loop does."""
    config = TrainConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, resume="never",
                         **settings)
    model = small_llama().to(config.model_dtype)
    run = build(config, examples=(examples, []), make_model=lambda name: copy.deepcopy(model))
    try:
        weights = [param.detach().clone() for param in run.model.parameters()]
        handle = next(run.model.parameters()).register_hook(lambda grad: grad * float("nan"))
        assert "grad_norm" not in train_step(run, 1) and run.trainer_state["nonfinite_in_a_row"] == 1
        assert all(torch.equal(p, w) for p, w in zip(run.model.parameters(), weights))
        handle.remove()
        assert train_step(run, 2)["grad_norm"] > 0 and run.trainer_state["nonfinite_in_a_row"] == 0
    finally:
        run.engine.destroy()


@pytest.mark.parametrize("settings, message", [
    ({"optimizer_in_backward": True, "gradient_accumulation_steps": 2}, "set gradient_accumulation_steps: 1"),
    ({"optimizer_in_backward": True, "max_tokens_per_micro_batch": 512}, "max_tokens_per_micro_batch: 0"),
    ({"optimizer_in_backward": True}, "set max_grad_norm: 0"),
    ({"optimizer_in_backward": True, "max_grad_norm": 0, "zero_stage": 2}, "optimizer_in_backward: runs without ZeRO"),
    ({"pure_bf16": True}, "pure_bf16: needs bf16: true"),
    ({"pure_bf16": True, "bf16": True, "zero_stage": 1}, "pure_bf16: runs without ZeRO"),
    ({"optim": "adamw_torch_8bit", "zero_stage": 2}, "adamw_torch_8bit steps whole tensors"),
    ({"optim": "adamw_torch_8bit", "bf16": True}, "with bf16, optimizer_in_backward or pure_bf16"),
    ({"optim": "adam"}, "optim: 'adam' is not one of adamw_torch, adamw_torch_8bit"),
])
def test_settings_the_optimizer_cannot_honour_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings)


@pytest.mark.parametrize("settings", [{"optim": "adamw_torch_8bit"}, {"bf16": True, "pure_bf16": True}])
def test_torchao_missing_is_a_config_error_naming_the_extra(monkeypatch, settings):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "torchao" else find_spec(name, *args))
    with pytest.raises(ConfigError, match=r"runs torchao's optimizers: pip install 'iopo-fast\[torchao\]'"):
        TrainConfig(**settings)
