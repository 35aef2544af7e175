"""The training loop: set up, then for each step its micro-batches, loss, backward, step, log."""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import get_scheduler

from .config import TrainConfig
from .data import RejectionLog, load_examples
from .logprobs import sequence_logps
from .loss import dpo_loss, iopo_loss
from .batching import fill_ratio, plan_micro_batches
from .model import apply_liger_kernels, enable_gradient_checkpointing, load_model, load_tokenizer
from .packing import Example, pack_examples, unpacked_length


def train(config: TrainConfig) -> dict[str, dict[str, float]]:
    """Train with `config`; returns the held-out metrics before and after (empty without eval data)."""
    torch.manual_seed(config.seed)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    tokenizer = load_tokenizer(config.model_name_or_path)
    rejection_log = RejectionLog(output_dir / "rejected_records.jsonl", strict=config.strict)
    load = functools.partial(
        load_examples, tokenizer=tokenizer, loss=config.loss, cutoff_len=config.cutoff_len, rejection_log=rejection_log
    )
    train_examples, stats = load(config.dataset)
    print(f"data: {stats.summary(rejection_log)}")
    eval_examples = []
    if config.eval_dataset:
        eval_examples, stats = load(config.eval_dataset)
        print(f"data: {stats.summary(rejection_log)}")

    policy = load_model(config.model_name_or_path, torch.bfloat16 if config.bf16 else torch.float32).to(device)
    if config.liger_kernels and apply_liger_kernels(policy):
        print("model: Liger-Kernel RMSNorm, RoPE and SwiGLU applied")
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    reference = None if config.reference == "none" else copy.deepcopy(policy).eval().requires_grad_(False)
    objective = functools.partial(
        iopo_loss if config.loss == "iopo" else dpo_loss,
        beta=config.pref_beta,
        loss_type=config.pref_loss,
        label_smoothing=config.label_smoothing,
        ftx=config.pref_ftx,
    )
    scorer = Scorer(policy, reference, objective, device, config.logprob_impl, config.attention_backend)

    results = {}
    if eval_examples:
        results["before"] = scorer.evaluate(eval_examples, config.per_device_eval_batch_size)
        print(f"eval before training: {_describe(results['before'])}")

    examples_per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(train_examples) / examples_per_step)
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_train_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        config.lr_scheduler_type, optimizer, int(config.warmup_ratio * total_steps), total_steps
    )
    order = _example_order(len(train_examples), config.seed)

    policy.train()
    progress = tqdm(range(1, total_steps + 1), desc="train", dynamic_ncols=True)
    with (output_dir / "metrics.jsonl").open("w", encoding="utf-8") as metrics_file:
        for step in progress:
            started = time.perf_counter()
            step_examples = [train_examples[next(order)] for _ in range(examples_per_step)]
            plan = _micro_batches(step_examples, config)
            totals, stream_tokens = scorer.backward(step_examples, plan)
            grad_norm = _clip(policy, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            elapsed = time.perf_counter() - started
            # Useful tokens: those of the examples' separate sequences, the same count for any layout.
            tokens = sum(unpacked_length(example) for example in step_examples)
            record = {"step": step, "epoch": step / steps_per_epoch, **_means(totals, examples_per_step),
                      "tokens": tokens, "tokens_per_sec": tokens / elapsed, "stream_tokens": stream_tokens,
                      "micro_batches": len(plan), "learning_rate": scheduler.get_last_lr()[0],
                      "grad_norm": grad_norm, "step_time": elapsed}
            if config.max_tokens_per_micro_batch:
                record["fill_ratio"] = fill_ratio(step_examples, plan, config.max_tokens_per_micro_batch)
            progress.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record[_accuracy_key(config)]:.2f}",
                                 tok_s=f"{record['tokens_per_sec']:.0f}")
            if step % config.logging_steps == 0 or step == total_steps:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()

    if eval_examples:
        results["after"] = scorer.evaluate(eval_examples, config.per_device_eval_batch_size)
        print(f"eval before training: {_describe(results['before'])}")
        print(f"eval after training:  {_describe(results['after'])}")
        (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")

    model_dir = output_dir / "model"
    policy.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    print(f"model saved to {model_dir}")
    return results


def _micro_batches(examples: list[Example], config: TrainConfig) -> list[list[int]]:
    """Index groups of a step's examples: bin-packed to the token budget, or fixed-size groups."""
    if config.max_tokens_per_micro_batch:
        return plan_micro_batches(examples, config.max_tokens_per_micro_batch)
    size = config.per_device_train_batch_size
    return [list(range(start, min(start + size, len(examples)))) for start in range(0, len(examples), size)]


class Scorer:
    """Scores micro-batches of examples: policy and reference log-probs, then the loss."""

    def __init__(self, policy, reference, objective, device: torch.device, logprob_impl: str, attention_backend: str):
        self.policy, self.reference, self.objective, self.device = policy, reference, objective, device
        self.logps = functools.partial(sequence_logps, impl=logprob_impl, attention_backend=attention_backend)

    def score(self, examples: list[Example]) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """Per-example losses (differentiable), per-example metrics and the packed stream's length."""
        batch = pack_examples(examples).to(self.device)
        policy_logps = self.logps(self.policy, batch)
        reference_logps = None
        if self.reference is not None:
            with torch.no_grad():
                reference_logps = self.logps(self.reference, batch)
        losses, metrics = self.objective(policy_logps, reference_logps, response_lengths=batch.response_lengths)
        return losses, metrics, batch.num_tokens

    def backward(self, examples: list[Example], plan: list[list[int]]) -> tuple[dict[str, float], int]:
        """Accumulate the gradient of the mean loss over `examples`, one micro-batch per group of `plan`.

        Returns the summed per-example metrics and the packed tokens processed.
        """
        totals, stream_tokens = {}, 0
        for indices in plan:
            losses, metrics, batch_tokens = self.score([examples[i] for i in indices])
            # Divided by the step's example count, whatever the micro-batch split.
            (losses.sum() / len(examples)).backward()
            _accumulate(totals, {"loss": losses.detach(), **metrics})
            stream_tokens += batch_tokens
        return totals, stream_tokens

    @torch.no_grad()
    def evaluate(self, examples: list[Example], batch_size: int) -> dict[str, float]:
        was_training = self.policy.training
        self.policy.eval()
        totals = {}
        for start in range(0, len(examples), batch_size):
            losses, metrics, _ = self.score(examples[start : start + batch_size])
            _accumulate(totals, {"loss": losses, **metrics})
        self.policy.train(was_training)
        return _means(totals, len(examples))


def _example_order(num_examples: int, seed: int):
    """Example indices, epoch after epoch, each epoch in a fresh seeded permutation."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(num_examples, generator=generator).tolist()


def _accumulate(totals: dict[str, float], per_example: dict[str, torch.Tensor]) -> None:
    for name, values in per_example.items():
        totals[name] = totals.get(name, 0.0) + float(values.sum())


def _means(totals: dict[str, float], count: int) -> dict[str, float]:
    return {name: total / count for name, total in totals.items()}


def _clip(model: torch.nn.Module, max_norm: float) -> float:
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    return float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))


def _accuracy_key(config: TrainConfig) -> str:
    return "accuracies/group" if config.loss == "iopo" else "accuracies/pair"


def _describe(metrics: dict[str, float]) -> str:
    accuracy = metrics.get("accuracies/group", metrics.get("accuracies/pair"))
    return f"loss {metrics['loss']:.4f}, accuracy {accuracy:.3f} (z > 0), margin {metrics['rewards/margin']:.4f}"
