"""The training loop: `build` sets up a run, `train_step` does one step, `train` runs them.

One loop for one process or many (`torchrun`, `deepspeed`), ZeRO 0-3, full or LoRA training. A
step takes `per_device_train_batch_size * gradient_accumulation_steps` examples per rank from a
seeded order that depends only on the step number and the data order (`data_order`), which a
checkpoint records and a resume must keep, so a resumed run sees exactly the examples an
uninterrupted one would. Its gradient is that of the mean loss over the examples of all ranks,
whatever the micro-batch split (see `accumulate_gradients`). The benchmarks and the tests drive the
same `build` and `train_step`. Everything else is a component of its own: the engine, checkpoints,
the reference model, the monitor, the export and the instruction-following evaluation.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, TrainConfig
from ..data.examples import Example, packed_length
from ..data.prepared import dataset_names, load_datasets
from ..data.records import RejectionLog
from ..data.sampling import ExampleOrder, examples_fingerprint
from ..data.sources import check_source, resolve_source
from ..distributed import all_reduce, init_distributed, is_main, rank, rank_batches, world_size
from ..model.micro_batch_plan import micro_batches
from ..model.fast_paths import describe_fast_paths
from ..model.loading import apply_liger_kernels, load_model, load_tokenizer, prepare_policy
from ..model.packing import pack_examples
from ..model.preference_model import PreferenceModel
from ..utils import cache_dir, write_atomically
from .checkpoint import Checkpoints, StopRequest, checkpoint_to_resume, seed_everything
from .engine import (build_engine, deepspeed_config, grad_norm_before_step, partitioned_loading, skip_step,
                     stop_after_nonfinite_steps)
from .export import export_model
from .instruction_following import evaluate_instruction_following
from .monitor import (StepMetrics, StepOutcome, add_to_totals, describe_held_out, plot_metrics, step_record,
                      summed_over_ranks)
from .reference_model import live_reference, precompute_references
from .run_state import RunState


def train(config: TrainConfig) -> dict[str, dict[str, float]]:
    """Train with `config`; returns the held-out metrics before and after (empty without eval data), and
    the instruction-following benchmarks before and after under "benchmarks" (with eval_benchmarks)."""
    init_distributed()
    # Before the engine: one model in memory.
    before = evaluate_instruction_following(config, config.model_name_or_path, "before")
    run = build(config)
    try:
        results = run.trainer_state["results"]
        if before is not None:
            results["benchmarks"] = {"before": before}
        if run.eval_examples and not results.keys() & {"before", "at_resume"}:
            step = run.trainer_state["step"]
            if step == 0:
                results["before"] = held_out_metrics(run)
            else:  # held-out data a resumed run did not have before: it scores the resumed weights
                results["at_resume"] = {"step": step, **held_out_metrics(run)}
            label, first = _first_held_out(results)
            run.log(f"eval {label}: {describe_held_out(config.loss, first)}")
        if run_steps(run):
            finish(run)
        return results
    finally:
        run.engine.destroy()  # ZeRO's buffers, for whatever this process does next


def run_steps(run: RunState) -> bool:
    """The steps from the one after the run's step to the last; False if a signal stopped them (after a
    checkpoint of the step it came in)."""
    config = run.config
    metrics = StepMetrics(config, run.trainer_state["step"], run.total_steps) if is_main() else None
    stop = StopRequest()
    try:
        for step in range(run.trainer_state["step"] + 1, run.total_steps + 1):
            record = train_step(run, step)
            if config.eval_steps and step % config.eval_steps == 0 and step < run.total_steps:
                record.update({f"eval/{name}": value for name, value in held_out_metrics(run).items()})
            if metrics is not None:
                metrics.write(record)
            stop_after_nonfinite_steps(run.trainer_state["nonfinite_in_a_row"], step, config.max_nonfinite_steps,
                                       run.log)
            stop_requested = bool(all_reduce(torch.tensor(int(stop.signal is not None)), "max"))
            if stop_requested or (config.save_steps and step % config.save_steps == 0 and step < run.total_steps):
                run.checkpoints.save(run.engine, run.trainer_state)
            if stop_requested:
                run.log(f"stopped by a signal: checkpoint of step {step} saved in {run.checkpoints.root}")
                return False
    finally:
        stop.restore()
        if metrics is not None:
            metrics.close()
    return True


def build(config: TrainConfig, *, examples: tuple[Sequence[Example], Sequence[Example]] | None = None,
          make_model: Callable[[str], nn.Module] | None = None, layout: Callable = pack_examples,
          preference_model: type[PreferenceModel] = PreferenceModel, order: ExampleOrder | None = None) -> RunState:
    """The run `config` describes: process group, data, engine, references, checkpoint to resume.

    The keywords replace what the config would load: `examples` (train, eval) already tokenized,
    `make_model(name)` the causal LM (in the config's dtype) for "policy" and, for a live reference, for
    "reference"; `layout` the batch layout (`pack_examples`, or `pad_examples` for the original one),
    `preference_model` the class that scores and forms the loss, `order` the examples each step takes
    (default: a seeded shuffle, epoch after epoch).
    """
    device = init_distributed()
    seed_everything(config.seed)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log = functools.partial(print, flush=True) if is_main() else (lambda *args: None)
    try:
        log("fast paths: " + describe_fast_paths(device, config.model_dtype, config.attention_backend,
                                                 config.logprob_impl, config.logprob_algorithm, config.liger_kernels))
    except (ValueError, RuntimeError) as error:
        raise ConfigError(str(error)) from None

    tokenizer = None
    if examples is None:
        for name in dataset_names(config.dataset) + dataset_names(config.eval_dataset):
            check_source(resolve_source(name, config.dataset_dir))  # before the tokenizer loads, which takes a while
        tokenizer = load_tokenizer(config.model_name_or_path)
        examples = _load_data(config, tokenizer, output_dir, log)
    train_examples, eval_examples = examples
    longest = max(packed_length(example) for example in train_examples)
    if 0 < config.max_tokens_per_micro_batch < longest:
        raise ConfigError(f"max_tokens_per_micro_batch: {config.max_tokens_per_micro_batch} is below the longest "
                          f"example ({longest} packed tokens); raise it or lower cutoff_len")
    order_of_examples = data_order(config, train_examples)
    examples_per_step = order_of_examples["examples_per_step"]
    checkpoints = Checkpoints(output_dir, config.save_total_limit)
    latest = checkpoint_to_resume(checkpoints, config.resume, order_of_examples, config.optimizer_settings())
    ds_config = deepspeed_config(config, world_size())
    total_steps = config.total_steps(len(train_examples), examples_per_step)

    def load(name: str) -> nn.Module:  # "policy" or "reference"
        model = make_model(name) if make_model else load_model(config.model_name_or_path, config.model_dtype)
        if config.liger_kernels:
            apply_liger_kernels(model)
        return model

    wrap = functools.partial(preference_model, attention_backend=config.attention_backend,
                             logprob_impl=config.logprob_impl, logprob_algorithm=config.logprob_algorithm,
                             max_chunk_logits=config.max_chunk_logits)
    with partitioned_loading(ds_config):  # the policy and a live reference model
        policy = prepare_policy(load("policy"), config.gradient_checkpointing, config.lora_settings())
        policy = wrap(policy, config.preference_loss())
        engine, scheduler = build_engine(policy, config, ds_config, total_steps)
        live = live_reference(config, engine, lambda: wrap(load("reference")), ds_config, device)
    run = RunState(config=config, device=device, engine=engine, scheduler=scheduler, train_examples=train_examples,
                   eval_examples=eval_examples, train_reference=live, eval_reference=live, layout=layout,
                   order=order or ExampleOrder(len(train_examples), config.seed), checkpoints=checkpoints,
                   total_steps=total_steps, tokenizer=tokenizer, log=log,
                   trainer_state={"step": 0, "data_order": order_of_examples, "optimizer": config.optimizer_settings(),
                                  "nonfinite_in_a_row": 0, "results": {}})
    if config.reference_mode == "precomputed":
        started = time.perf_counter()
        run.train_reference, run.eval_reference = precompute_references(config, live, [train_examples, eval_examples],
                                                                        device, log)
        run.reference_seconds = time.perf_counter() - started
    if latest is not None:
        run.trainer_state = checkpoints.load(engine, latest)
        log(f"resumed from {latest} (step {run.trainer_state['step']} of {total_steps})")
    return run


def data_order(config: TrainConfig, train_examples: Sequence[Example]) -> dict:
    """What fixes the examples of every step: the examples per step (of all ranks), and the seeded order's
    seed and training examples (their count and a fingerprint of their token ids)."""
    return {"examples_per_step": config.per_device_train_batch_size * config.gradient_accumulation_steps * world_size(),
            "seed": config.seed, "training_examples": len(train_examples),
            "training_data": examples_fingerprint(train_examples)}


def train_step(run: RunState, step: int) -> dict:
    """Step `step`: this rank's share of its examples, their gradient accumulated, then the optimizer step
    (or, after a non-finite loss, no update at all). Returns the step's metrics record."""
    started = time.perf_counter()
    indices = run.order.step_indices(step, run.examples_per_step)[rank() :: world_size()]
    examples = [run.train_examples[i] for i in indices]
    plan = micro_batches(examples, run.config.max_tokens_per_micro_batch, run.config.per_device_train_batch_size)
    outcome = accumulate_gradients(run, examples, indices, plan)
    grad_norm = None
    if outcome.finite:
        grad_norm = grad_norm_before_step(run.engine)
        # A non-finite gradient of a finite loss skips the step where DeepSpeed does not check it (fp32, pure bf16);
        # inside the backward it was applied already, and the optimizer's step stops the run.
        outcome.finite = grad_norm is None or math.isfinite(grad_norm) or run.config.optimizer_in_backward
    if outcome.finite:
        run.engine.step()
        grad_norm = float(run.engine.get_global_grad_norm() if grad_norm is None else grad_norm)
        run.trainer_state["nonfinite_in_a_row"] = 0
    else:
        skip_step(run.engine)
        run.trainer_state["nonfinite_in_a_row"] += 1
    run.trainer_state["step"] = step
    return step_record(run.config, step, examples, indices, plan, outcome, grad_norm,
                       seconds=time.perf_counter() - started, epoch=step / run.steps_per_epoch,
                       examples_per_step=run.examples_per_step, learning_rate=float(run.scheduler.get_last_lr()[0]),
                       device=run.device, model=run.model)


def accumulate_gradients(run: RunState, examples: list[Example], indices: list[int], plan: list[list[int]]) -> StepOutcome:
    """Accumulate in the engine the gradient of the mean loss over the step's examples of all ranks.

    Each micro-batch's summed loss is scaled by world_size / examples_per_step: DeepSpeed averages
    the gradients over ranks, so the result is the gradient of (sum of all losses) / examples_per_step
    whatever the split into micro-batches and ranks. Ranks run the same number of micro-batches
    (collectives must match); a rank with fewer pads with an empty group, run as example 0 weighted
    0. A non-finite loss on any rank ends the step early with a backward of NaN, which every rank
    joins (their collectives stay matched) and `engine.skip_step` then discards whole; with the optimizer
    inside the backward (one rank), with no backward at all.
    """
    engine = run.engine
    count = int(all_reduce(torch.tensor(len(plan)), "max"))
    plan = plan + [[]] * (count - len(plan))
    outcome = StepOutcome()
    scale = world_size() / run.examples_per_step
    for position, group in enumerate(plan):
        engine.set_gradient_accumulation_boundary(position == count - 1)
        weight = scale if group else 0.0
        group = group or [0]
        output, num_tokens = forward(run, [examples[i] for i in group], [indices[i] for i in group], run.train_reference)
        if all_reduce(torch.tensor(int(not torch.isfinite(output.loss))), "max"):
            engine.set_gradient_accumulation_boundary(True)
            if not run.config.optimizer_in_backward:  # which would apply it, on its one rank
                engine.backward(output.loss * float("nan"))
            outcome.finite = False
            return outcome
        engine.backward(output.loss * weight)
        if weight:
            add_to_totals(outcome.totals, output.metrics)
            outcome.stream_tokens += num_tokens
    outcome.totals = summed_over_ranks(outcome.totals)
    return outcome


def forward(run: RunState, examples: list[Example], indices: list[int], reference: Callable | None):
    """The engine's forward on `examples` laid out by the run: (PreferenceOutput, tokens processed).

    `indices` are the examples' positions in their data set (where a precomputed reference looks).
    """
    batch = run.layout(examples).to(run.device)
    reference_scores = None if reference is None else reference(batch, indices)
    return run.engine(batch, reference_scores), batch.num_tokens


@torch.no_grad()
def held_out_metrics(run: RunState) -> dict[str, float]:
    """Mean metrics over the held-out examples, each rank scoring its shard."""
    model = run.model
    was_training = model.training
    model.eval()
    totals = {}
    for indices, own in rank_batches(len(run.eval_examples), run.config.per_device_eval_batch_size):
        output, _ = forward(run, [run.eval_examples[i] for i in indices], indices, run.eval_reference)
        add_to_totals(totals, {name: values[:own] for name, values in output.metrics.items()})
    model.train(was_training)
    return {name: total / len(run.eval_examples) for name, total in summed_over_ranks(totals).items()}


def finish(run: RunState) -> None:
    """After the last step: the held-out metrics after training, the exported model and its benchmarks, the plot."""
    config, results = run.config, run.trainer_state["results"]
    if run.eval_examples:
        results["after"] = held_out_metrics(run)
        label, first = _first_held_out(results)
        run.log(f"eval {label}: {describe_held_out(config.loss, first)}")
        run.log(f"eval after training: {describe_held_out(config.loss, results['after'])}")
    output_dir = Path(config.output_dir)
    export_model(run.engine, config, run.tokenizer, run.log)
    after = evaluate_instruction_following(config, str(output_dir / "model"), "after")
    if after is not None:
        results.setdefault("benchmarks", {})["after"] = after
    if is_main():
        if results:
            write_atomically(output_dir / "eval_results.json", json.dumps(results, indent=2) + "\n")
        plot_metrics(output_dir / "metrics.jsonl", output_dir / "training.png")


def _first_held_out(results: dict) -> tuple[str, dict[str, float]]:
    """(label, metrics) of the first held-out metrics: before training, or at the step a run resumed from."""
    if "before" in results:
        return "before training", results["before"]
    return f"at step {results['at_resume']['step']} (resumed)", results["at_resume"]


def _load_data(config: TrainConfig, tokenizer, output_dir: Path, log) -> tuple[Sequence[Example], Sequence[Example]]:
    """The train and eval examples; comma-separated data sets are mixed (`interleave_probs`)."""
    rejection_log = RejectionLog(output_dir / "rejected_records.jsonl" if is_main() else None, strict=config.strict)
    prepare = functools.partial(load_datasets, dataset_dir=config.dataset_dir, tokenizer=tokenizer,
                                cache_root=cache_dir(), loss=config.loss, cutoff_len=config.cutoff_len,
                                rejection_log=rejection_log, num_proc=config.preprocessing_num_workers, log=log)
    return (prepare(config.dataset, proportions=config.mixture_proportions(), seed=config.seed),
            prepare(config.eval_dataset, seed=config.seed))
