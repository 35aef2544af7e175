"""The training loop: set up the engine, then for each step its micro-batches, loss, backward, step, log.

One loop for one process or many (`torchrun`, `deepspeed`), ZeRO 0-3, full or LoRA training. A
step takes `per_device_train_batch_size * gradient_accumulation_steps` examples per rank from a
seeded order that depends only on the step number, so a resumed run sees exactly the examples an
uninterrupted one would. Its gradient is that of the mean loss over the examples of all ranks,
whatever the micro-batch split (see `accumulate_gradients`).
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .attention import resolve_backend
from .batching import fill_ratio, micro_batches
from .checkpoint import Checkpoints, StopRequest
from .config import ConfigError, TrainConfig
from .data import RejectionLog, load_examples
from .distributed import all_reduce, barrier, init_distributed, is_main, rank, rank_batches, world_size
from .engine import (build_engine, deepspeed_config, full_state_dict, partitioned_loading, partitions_parameters,
                     reference_engine)
from .kernels import resolve_impl
from .kernels.example_chunked_loss import check_supported
from .logprobs import loss_forward, sequence_logps
from .loss import dpo_loss, iopo_loss
from .model import (apply_liger_kernels, apply_lora, enable_gradient_checkpointing, load_model, load_tokenizer,
                    resolve_model_path)
from .monitor import MetricsLog, device_peak_flops, peak_memory_gib, plot_metrics, step_flops
from .packing import Example, pack_examples, packed_length, unpacked_length
from .reference_logps import LiveReference, cache_path, precompute


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a non-finite loss."""


def train(config: TrainConfig) -> dict[str, dict[str, float]]:
    """Train with `config`; returns the held-out metrics before and after (empty without eval data)."""
    device = init_distributed()
    _seed_everything(config.seed)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log = functools.partial(print, flush=True) if is_main() else (lambda *args: None)
    log(f"fast paths: {_fast_paths(config, device)}")

    tokenizer = load_tokenizer(config.model_name_or_path)
    rejection_log = RejectionLog(output_dir / "rejected_records.jsonl" if is_main() else None, strict=config.strict)
    load = functools.partial(
        load_examples, tokenizer=tokenizer, loss=config.loss, cutoff_len=config.cutoff_len, rejection_log=rejection_log
    )
    train_examples, stats = load(config.dataset)
    log(f"data: {stats.summary(rejection_log)}")
    eval_examples = []
    if config.eval_dataset:
        eval_examples, stats = load(config.eval_dataset)
        log(f"data: {stats.summary(rejection_log)}")

    longest = max(packed_length(example) for example in train_examples)
    if 0 < config.max_tokens_per_micro_batch < longest:
        raise ConfigError(f"max_tokens_per_micro_batch: {config.max_tokens_per_micro_batch} is below the longest "
                          f"example ({longest} packed tokens); raise it or lower cutoff_len")
    examples_per_rank = config.per_device_train_batch_size * config.gradient_accumulation_steps
    examples_per_step = examples_per_rank * world_size()
    checkpoints = Checkpoints(output_dir, config.save_total_limit)
    latest = _checkpoint_to_resume(checkpoints, config, examples_per_step)
    ds_config = deepspeed_config(config, world_size())
    steps_per_epoch = math.ceil(len(train_examples) / examples_per_step)
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_train_epochs * steps_per_epoch)
    score = functools.partial(sequence_logps, impl=config.logprob_impl, attention_backend=config.attention_backend)
    forward = functools.partial(loss_forward, impl=config.logprob_impl, attention_backend=config.attention_backend,
                                algorithm=config.logprob_algorithm)
    objective = functools.partial(
        iopo_loss if config.loss == "iopo" else dpo_loss,
        beta=config.pref_beta, loss_type=config.pref_loss, label_smoothing=config.label_smoothing, ftx=config.pref_ftx,
    )
    with partitioned_loading(ds_config):  # the policy and a live reference model
        engine, scheduler = build_engine(_load_policy(config, log), config, ds_config, total_steps)
        policy = engine.module
        train_reference, eval_reference = _references(config, policy, score, ds_config, device, train_examples,
                                                      eval_examples, log)
    scorer = Scorer(engine, train_reference, objective, device, forward)
    eval_scorer = Scorer(engine, eval_reference, objective, device, forward)

    state = {"step": 0, "examples_per_step": examples_per_step, "nonfinite_in_a_row": 0, "results": {}}
    if latest is not None:
        state = checkpoints.load(engine, latest)
        log(f"resumed from {latest} (step {state['step']} of {total_steps})")
    results = state["results"]
    if eval_examples and "before" not in results:
        results["before"] = eval_scorer.evaluate(eval_examples, config.per_device_eval_batch_size)
        log(f"eval before training: {_describe(results['before'])}")

    num_parameters = sum(_numel(p) for p in policy.parameters())
    num_trainable = sum(_numel(p) for p in policy.parameters() if p.requires_grad)
    peak_flops = device_peak_flops(device)
    order = ExampleOrder(len(train_examples), config.seed)
    metrics_log = MetricsLog(output_dir, state["step"], config.report_to == "tensorboard") if is_main() else None
    stop = StopRequest()
    progress = tqdm(range(state["step"] + 1, total_steps + 1), desc="train", dynamic_ncols=True, disable=not is_main(),
                    initial=state["step"], total=total_steps)
    try:
        for step in progress:
            started = time.perf_counter()
            indices = order.step_indices(step, examples_per_step)[rank() :: world_size()]
            examples = [train_examples[i] for i in indices]
            plan = micro_batches(examples, config.max_tokens_per_micro_batch, config.per_device_train_batch_size)
            outcome = accumulate_gradients(engine, scorer, examples, indices, plan, examples_per_step)
            if outcome.finite:
                grad_norm = _grad_norm_before_step(engine)
                engine.step()
                grad_norm = engine.get_global_grad_norm() if grad_norm is None else grad_norm
                state["nonfinite_in_a_row"] = 0
            else:
                skip_step(engine)
                state["nonfinite_in_a_row"] += 1
            state["step"] = step
            elapsed = time.perf_counter() - started

            # Useful tokens: those of the examples' separate sequences, the same count for any layout.
            tokens = int(all_reduce(torch.tensor(sum(unpacked_length(e) for e in examples))))
            stream_tokens = int(all_reduce(torch.tensor(outcome.stream_tokens)))
            record = {"step": step, "epoch": step / steps_per_epoch}
            if outcome.finite:
                record.update(_means(outcome.totals, examples_per_step), grad_norm=float(grad_norm))
            else:
                record.update(loss=float("nan"), skipped="non-finite loss")
            record.update(
                tokens=tokens, tokens_per_sec=tokens / elapsed, stream_tokens=stream_tokens,
                micro_batches=len(plan), learning_rate=scheduler.get_last_lr()[0], step_time=elapsed,
                peak_memory_gib=peak_memory_gib(device),
                # Every rank's examples, in rank order: the record of what the step trained on.
                examples=_gather_indices(indices, examples_per_rank),
            )
            if config.max_tokens_per_micro_batch:
                record["fill_ratio"] = fill_ratio(examples, [g for g in plan if g], config.max_tokens_per_micro_batch)
            if peak_flops:
                flops = step_flops(num_parameters, num_trainable / num_parameters, stream_tokens,
                                   config.reference == "live")
                record["mfu"] = flops / (elapsed * peak_flops * world_size())
            if is_main():
                progress.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record.get(_accuracy_key(config), 0):.2f}",
                                     tok_s=f"{record['tokens_per_sec']:.0f}")
                if step % config.logging_steps == 0 or step == total_steps or not outcome.finite:
                    metrics_log.write(record)
            if not outcome.finite:
                log(f"step {step}: non-finite loss, step skipped ({state['nonfinite_in_a_row']} in a row)")
                if state["nonfinite_in_a_row"] >= config.max_nonfinite_steps:
                    raise NonFiniteLossError(f"{state['nonfinite_in_a_row']} steps in a row had a non-finite loss; "
                                             f"stopped at step {step} (max_nonfinite_steps={config.max_nonfinite_steps})")
            stop_requested = bool(all_reduce(torch.tensor(int(stop.signal is not None)), "max"))
            if stop_requested or (config.save_steps and step % config.save_steps == 0 and step < total_steps):
                checkpoints.save(engine, state)
                if stop_requested:
                    log(f"stopped by a signal: checkpoint of step {step} saved in {checkpoints.root}")
                    return results
    finally:
        stop.restore()
        if metrics_log is not None:
            metrics_log.close()

    if eval_examples:
        results["after"] = eval_scorer.evaluate(eval_examples, config.per_device_eval_batch_size)
        log(f"eval before training: {_describe(results['before'])}")
        log(f"eval after training:  {_describe(results['after'])}")
    if is_main():
        if eval_examples:
            (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
        plot_metrics(output_dir / "metrics.jsonl", output_dir / "training.png")
    _export(engine, config, tokenizer, output_dir, log)
    return results


def _checkpoint_to_resume(checkpoints: Checkpoints, config: TrainConfig, examples_per_step: int) -> Path | None:
    """The checkpoint a run continues from, or None; a run that cannot continue it exactly is refused.

    The data position is the step times the examples per step, so those must not change; and a fresh
    start (`resume: never`) must not mix its checkpoints with an earlier run's.
    """
    latest = checkpoints.latest()
    if latest is None:
        return None
    if config.resume == "never":
        raise ConfigError(f"resume: never, but {checkpoints.root} holds an earlier run's checkpoints ({latest.name}); "
                          "set resume: auto to continue it, or choose another output_dir")
    saved = json.loads((latest / "trainer_state.json").read_text(encoding="utf-8"))["examples_per_step"]
    if saved != examples_per_step:
        raise ConfigError(f"resume: {latest} took {saved} examples per step, this run takes {examples_per_step} "
                          "(ranks x per_device_train_batch_size x gradient_accumulation_steps): resume with the "
                          "same, or choose another output_dir")
    return latest


def _model_dtype(config: TrainConfig) -> torch.dtype:
    return torch.bfloat16 if config.bf16 else torch.float32


def _fast_paths(config: TrainConfig, device: torch.device) -> str:
    """Which attention backend and log-prob implementation run; a forced one that cannot is a ConfigError."""
    try:
        attention = resolve_backend(device, _model_dtype(config), config.attention_backend)
        logprobs = resolve_impl(torch.empty(0, device=device), config.logprob_impl)
        if config.logprob_algorithm == "example_chunks":
            check_supported(device, _model_dtype(config))
    except (ValueError, RuntimeError) as error:
        raise ConfigError(str(error)) from None
    return f"packed attention {attention}, log-probs {logprobs} ({config.logprob_algorithm})"


def _load_policy(config: TrainConfig, log) -> torch.nn.Module:
    policy = load_model(config.model_name_or_path, _model_dtype(config))
    if config.liger_kernels and apply_liger_kernels(policy):
        log("model: Liger-Kernel RMSNorm, RoPE and SwiGLU applied")
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if config.finetuning_type == "lora":
        policy = apply_lora(policy, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target)
        if config.gradient_checkpointing:  # the frozen embeddings would otherwise cut the graph at the input
            policy.enable_input_require_grads()
    return policy


def _references(config, policy, score, ds_config, device, train_examples, eval_examples, log):
    """The reference scores of the training and the held-out examples (None when reference-free)."""
    if config.reference == "none":
        return None, None
    lora = config.finetuning_type == "lora"
    if lora or config.reference == "precomputed":
        # The initial policy is the reference: with LoRA its base model (adapters disabled), and
        # before the first step (precomputed) the policy itself.
        live = LiveReference(policy, score, disable_adapter=lora)
    else:
        model = load_model(config.model_name_or_path, _model_dtype(config))
        if config.liger_kernels:
            apply_liger_kernels(model)
        if partitions_parameters(ds_config):
            model = reference_engine(model, ds_config)
        else:
            model = model.to(device)
        live = LiveReference(model.eval().requires_grad_(False), score)
    if config.reference == "live":
        return live, live
    model_path = resolve_model_path(config.model_name_or_path)
    tables = []
    policy.eval()
    for examples in (train_examples, eval_examples):
        if not examples:
            tables.append(None)
            continue
        cache_file = cache_path(config.output_dir, model_path, examples)
        tables.append(precompute(live, examples, cache_file, config.per_device_eval_batch_size, device))
        log(f"reference log-probs of {len(examples)} examples: {cache_file}")
    policy.train()
    return tables[0], tables[1]


@dataclass
class StepOutcome:
    totals: dict[str, float] = field(default_factory=dict)  # per-example metrics summed over all ranks
    stream_tokens: int = 0  # packed tokens this rank processed
    finite: bool = True


def accumulate_gradients(engine, scorer: Scorer, examples: list[Example], indices: list[int],
                         plan: list[list[int]], examples_per_step: int) -> StepOutcome:
    """Accumulate in `engine` the gradient of the mean loss over the step's examples of all ranks.

    Each micro-batch's summed loss is scaled by world_size / examples_per_step: DeepSpeed averages
    the gradients over ranks, so the result is the gradient of (sum of all losses) / examples_per_step
    whatever the split into micro-batches and ranks. Ranks run the same number of micro-batches
    (collectives must match); a rank with fewer pads with an empty group, run as example 0 weighted
    0. A non-finite loss on any rank ends the step early with a backward of NaN, which every rank
    joins (their collectives stay matched) and `skip_step` then discards whole.
    """
    count = int(all_reduce(torch.tensor(len(plan)), "max"))
    plan = plan + [[]] * (count - len(plan))
    outcome = StepOutcome()
    scale = world_size() / examples_per_step
    for position, group in enumerate(plan):
        engine.set_gradient_accumulation_boundary(position == count - 1)
        weight = scale if group else 0.0
        group = group or [0]
        loss, losses, metrics, stream_tokens = scorer.score([examples[i] for i in group], [indices[i] for i in group])
        if all_reduce(torch.tensor(int(not torch.isfinite(losses).all())), "max"):
            engine.set_gradient_accumulation_boundary(True)
            engine.backward(loss * float("nan"))
            outcome.finite = False
            return outcome
        engine.backward(loss * weight)
        if weight:
            _accumulate(outcome.totals, {"loss": losses, **metrics})
            outcome.stream_tokens += stream_tokens
    outcome.totals = _summed_over_ranks(outcome.totals)
    return outcome


class Scorer:
    """Scores groups of examples: reference log-probs, then the policy's and the loss.

    `engine` is the DeepSpeed engine of the policy (or the policy itself), called on each batch laid out
    by `layout` (`pack_examples`, or `pad_examples` for the original layout) inside `loss_forward` (or
    another `scoring(model, example_losses)` context of the same contract).
    """

    def __init__(self, engine, reference, objective, device: torch.device, scoring=loss_forward, layout=pack_examples):
        self.engine, self.reference, self.objective, self.device = engine, reference, objective, device
        self.scoring, self.layout = scoring, layout
        self.policy = getattr(engine, "module", engine)

    def score(self, examples: list[Example], indices: list[int]):
        """The summed loss (differentiable), the per-example losses and metrics (detached), and the packed
        stream's length.

        `indices` are the examples' positions in their data set (where a precomputed reference looks).
        """
        batch = self.layout(examples).to(self.device)
        reference_logps = None if self.reference is None else self.reference(batch, indices)
        with self.scoring(self.policy, self.example_losses(reference_logps, batch.response_lengths)):
            loss, policy_logps = self.engine(batch)
        losses, metrics = self.objective(policy_logps, reference_logps, response_lengths=batch.response_lengths)
        return loss, losses, metrics, batch.num_tokens

    def example_losses(self, reference_logps: torch.Tensor | None, response_lengths: torch.Tensor):
        """The losses of a batch's examples `examples` (a slice) from their policy scores."""

        def losses(policy_logps: torch.Tensor, examples: slice) -> torch.Tensor:
            reference = None if reference_logps is None else reference_logps[examples]
            return self.objective(policy_logps, reference, response_lengths=response_lengths[examples])[0]

        return losses

    @torch.no_grad()
    def evaluate(self, examples: list[Example], batch_size: int) -> dict[str, float]:
        """Mean metrics over `examples`, each rank scoring its shard."""
        was_training = self.policy.training
        self.policy.eval()
        totals = {}
        for indices, own in rank_batches(len(examples), batch_size):
            _, losses, metrics, _ = self.score([examples[i] for i in indices], indices)
            _accumulate(totals, {name: values[:own] for name, values in {"loss": losses, **metrics}.items()})
        self.policy.train(was_training)
        return _means(_summed_over_ranks(totals), len(examples))


class ExampleOrder:
    """Example indices epoch after epoch, each epoch a permutation seeded by (seed, epoch).

    Stateless: the examples of a step follow from the step number alone, which is the data-loader
    position a checkpoint needs.
    """

    def __init__(self, num_examples: int, seed: int):
        self.num_examples, self.seed = num_examples, seed

    def step_indices(self, step: int, examples_per_step: int) -> list[int]:
        start = (step - 1) * examples_per_step
        return [self._at(position) for position in range(start, start + examples_per_step)]

    @functools.lru_cache(maxsize=4)
    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_examples)
        return self._permutation(epoch)[offset]


def _optimizer_checks_gradients(engine) -> bool:
    """Whether DeepSpeed's optimizer wrapper takes the gradient norm itself and skips a non-finite step:
    the ZeRO 1-3 optimizers and, without ZeRO, the bf16 one (which also keeps the accumulated gradient
    in its own fp32 buffers, not in the parameters)."""
    return hasattr(engine.optimizer, "overflow")


def _grad_norm_before_step(engine) -> float | None:
    """The norm of the step's gradient where DeepSpeed does not record it (None where it does)."""
    if _optimizer_checks_gradients(engine):
        return None
    grads = [p.grad.float().norm() for p in engine.module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def skip_step(engine) -> None:
    """End a step whose gradient is poisoned (see `accumulate_gradients`) without updating anything.

    An optimizer that checks the gradients (see `_optimizer_checks_gradients`) finds the norm
    non-finite, skips the update and clears every gradient buffer itself (the learning-rate schedule
    is not advanced). Otherwise the gradients live in the parameters only and are dropped here.
    """
    if _optimizer_checks_gradients(engine):
        engine.step()
    else:
        engine.optimizer.zero_grad(set_to_none=True)
        engine.zero_grad()


def _gather_indices(indices: list[int], per_rank: int) -> list[int]:
    gathered = torch.zeros(world_size(), per_rank, dtype=torch.long)
    gathered[rank()] = torch.tensor(indices)
    return all_reduce(gathered).flatten().tolist()


def _export(engine, config: TrainConfig, tokenizer, output_dir: Path, log) -> None:
    """The final model in `output_dir/model`, loadable by transformers (LoRA: the adapters, or merged)."""
    state_dict = full_state_dict(engine)  # a collective under ZeRO-3
    if is_main():
        lora = config.finetuning_type == "lora"
        target = output_dir / ("adapter" if lora and config.lora_merge_on_export else "model")
        engine.module.save_pretrained(target, state_dict=state_dict)
        tokenizer.save_pretrained(target)
        if lora and config.lora_merge_on_export:
            from peft import PeftModel

            base = load_model(config.model_name_or_path, _model_dtype(config))
            merged = PeftModel.from_pretrained(base, target).merge_and_unload()
            merged.save_pretrained(output_dir / "model")
            tokenizer.save_pretrained(output_dir / "model")
        log(f"model saved to {output_dir / 'model'}")
    barrier()


def _numel(parameter: torch.Tensor) -> int:
    """The whole parameter's size, also when ZeRO-3 holds only a partition of it here."""
    return parameter.ds_numel if hasattr(parameter, "ds_numel") else parameter.numel()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _accumulate(totals: dict[str, float], per_example: dict[str, torch.Tensor]) -> None:
    for name, values in per_example.items():
        totals[name] = totals.get(name, 0.0) + float(values.sum())


def _summed_over_ranks(totals: dict[str, float]) -> dict[str, float]:
    """Every rank's `totals` added up (all ranks must hold the same names)."""
    names = sorted(totals)
    summed = all_reduce(torch.tensor([totals[name] for name in names], dtype=torch.float64))
    return dict(zip(names, summed.tolist()))


def _means(totals: dict[str, float], count: int) -> dict[str, float]:
    return {name: total / count for name, total in totals.items()}


def _accuracy_key(config: TrainConfig) -> str:
    return "accuracies/group" if config.loss == "iopo" else "accuracies/pair"


def _describe(metrics: dict[str, float]) -> str:
    accuracy = metrics.get("accuracies/group", metrics.get("accuracies/pair"))
    return f"loss {metrics['loss']:.4f}, accuracy {accuracy:.3f} (z > 0), margin {metrics['rewards/margin']:.4f}"
