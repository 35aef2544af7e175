"""The DeepSpeed engine: its config, the optimizer and schedule, the full state dict, and steps skipped
after a non-finite loss (and the stop after too many in a row).

The loop owns gradient accumulation (micro-batches hold a variable number of examples, see
`loop.py`), so DeepSpeed sees one micro-batch per step boundary decision that the loop makes with
`set_gradient_accumulation_boundary`, and `gradient_accumulation_steps` is 1 in its config.
"""

from __future__ import annotations

import contextlib

import deepspeed
import torch
from transformers import get_scheduler

from ..compat import optimizer_checks_gradients, zero3_full_state_dict
from ..config import ConfigError, TrainConfig
from ..utils import read_json
from .optimizers import OptimizerInBackward, adamw, parameter_groups


def deepspeed_config(config: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed config: the user's JSON with its "auto" values filled, or one built from `config`."""
    if config.deepspeed:
        ds_config = read_json(config.deepspeed, ConfigError)
    else:
        zero = {"stage": config.zero_stage}
        if config.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if config.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if config.zero_stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        ds_config = {"zero_optimization": zero, "bf16": {"enabled": config.deepspeed_bf16}}
        if config.offload_optimizer:
            # Offloaded states need DeepSpeed's own CPU Adam, which it builds from this section.
            ds_config["optimizer"] = {"type": "AdamW", "params": {"lr": config.learning_rate,
                                                                  "weight_decay": config.weight_decay}}
    ds_config = _fill_auto(ds_config, {
        "optimizer.params.lr": config.learning_rate,
        "optimizer.params.weight_decay": config.weight_decay,
        "bf16.enabled": config.deepspeed_bf16,
        "gradient_clipping": config.max_grad_norm,
    })
    ds_config.update(
        train_micro_batch_size_per_gpu=config.per_device_train_batch_size,
        gradient_accumulation_steps=1,  # the loop accumulates; see the module docstring
        train_batch_size=config.per_device_train_batch_size * world_size,
        zero_allow_untested_optimizer=True,
        steps_per_print=2**62,
    )
    ds_config.setdefault("gradient_clipping", config.max_grad_norm)
    ds_config.setdefault("zero_optimization", {"stage": 0})
    # The models are loaded in the config's dtype, and the policy's optimizer runs in the JSON's.
    json_bf16 = ds_config.get("bf16", {}).get("enabled", False)
    if json_bf16 != config.deepspeed_bf16:
        raise ConfigError(f"deepspeed: {config.deepspeed}: bf16.enabled is {json_bf16}, but bf16 is {config.bf16}: "
                          "set them alike, or bf16.enabled to \"auto\"")
    if ds_config.get("fp16", {}).get("enabled", False):
        raise ConfigError(f"deepspeed: {config.deepspeed}: fp16 is not supported; use bf16")
    # DeepSpeed's bf16 optimizer skips a step whose gradient is not finite (see skip_step); elsewhere the loop does.
    ds_config.setdefault("bf16", {}).setdefault("check_grad_overflow", True)
    ds_config.pop("scheduler", None)  # the schedule is lr_scheduler_type's, stepped by the engine
    if config.optimizer_in_backward and world_size > 1:
        raise ConfigError(f"optimizer_in_backward: runs in one process, whose gradients are never reduced across "
                          f"ranks (got {world_size}); on several GPUs, pure_bf16 with optim: adamw_torch_8bit runs "
                          "without it")
    return ds_config


def partitions_parameters(ds_config: dict) -> bool:
    """ZeRO-3: every rank holds only its partition of each parameter."""
    return ds_config["zero_optimization"].get("stage", 0) == 3


@contextlib.contextmanager
def partitioned_loading(ds_config: dict):
    """Within it, under ZeRO-3, the models transformers loads or builds are created straight into their
    partitions (transformers' `HfDeepSpeedConfig`, in force while referenced); elsewhere it does nothing."""
    if not partitions_parameters(ds_config):
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    in_force = HfDeepSpeedConfig(ds_config)
    yield
    del in_force


def build_engine(model: torch.nn.Module, config: TrainConfig, ds_config: dict, total_steps: int):
    """The DeepSpeed engine around `model`, with the optimizer (DeepSpeed's own where its JSON names one) and the
    learning-rate schedule."""
    trainable = [p for p in model.parameters() if p.requires_grad]

    def optimizer(parameters):  # built by DeepSpeed once it has moved the model to its device
        if config.optimizer_in_backward:
            return OptimizerInBackward(parameter_groups(model, config), lambda groups: adamw(groups, config),
                                       master_weights=not config.pure_bf16, lr=config.learning_rate)
        return adamw(parameter_groups(model, config), config)

    def schedule(optimizer):
        return get_scheduler(config.lr_scheduler_type, optimizer, int(config.warmup_ratio * total_steps), total_steps)

    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=trainable, optimizer=None if "optimizer" in ds_config else optimizer,
        lr_scheduler=schedule, config=ds_config
    )
    if config.optimizer_in_backward:
        # One rank, and no gradient left after the backward: DeepSpeed's reduction would create zero ones.
        engine.enable_backward_allreduce = False
    return engine, scheduler


def reference_engine(model: torch.nn.Module, ds_config: dict):
    """A frozen reference model partitioned like the policy under ZeRO-3 (forward only)."""
    inference_config = {key: ds_config[key] for key in ("train_micro_batch_size_per_gpu", "bf16") if key in ds_config}
    inference_config["zero_optimization"] = {"stage": 3, **{
        key: value for key, value in ds_config["zero_optimization"].items() if key == "offload_param"}}
    engine, *_ = deepspeed.initialize(model=model, config=inference_config)
    engine.eval()
    return engine.module


def full_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The model's whole state dict on rank 0 (gathered from the partitions under ZeRO-3), None elsewhere.

    A collective under ZeRO-3: every rank calls it.
    """
    if engine.zero_optimization_partition_weights():
        return zero3_full_state_dict(engine)
    return engine.module.state_dict() if engine.global_rank == 0 else None


def grad_norm_before_step(engine) -> float | None:
    """The norm of the step's gradient where DeepSpeed does not record it (None where it does)."""
    if optimizer_checks_gradients(engine):
        return None
    if isinstance(engine.optimizer, OptimizerInBackward):
        return engine.optimizer.grad_norm()
    grads = [p.grad.float().norm() for p in engine.module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def skip_step(engine) -> None:
    """End a step whose gradient is poisoned (see `accumulate_gradients`) without updating anything.

    An optimizer that checks the gradients (see `compat.optimizer_checks_gradients`) finds the norm
    non-finite, skips the update and clears every gradient buffer itself (the learning-rate schedule
    is not advanced). Otherwise the gradients live in the parameters only and are dropped here.
    """
    if optimizer_checks_gradients(engine):
        engine.step()
    else:
        engine.optimizer.zero_grad(set_to_none=True)
        engine.zero_grad()


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a non-finite loss."""


def stop_after_nonfinite_steps(in_a_row: int, step: int, max_in_a_row: int, log) -> None:
    """Log a skipped step `step`, the last of `in_a_row` (0: the step was not skipped); raise
    `NonFiniteLossError` when `max_in_a_row` were skipped in a row."""
    if not in_a_row:
        return
    log(f"step {step}: non-finite loss, step skipped ({in_a_row} in a row)")
    if in_a_row >= max_in_a_row:
        raise NonFiniteLossError(f"{in_a_row} steps in a row had a non-finite loss; stopped at step {step} "
                                 f"(max_nonfinite_steps={max_in_a_row})")


def _fill_auto(ds_config: dict, values: dict[str, object]) -> dict:
    """Replace the "auto" entries at the dotted paths of `values` (Hugging Face's convention)."""
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = ds_config
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf) == "auto":
            node[leaf] = value
    return ds_config
