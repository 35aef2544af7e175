"""The training loop: `build` sets up a run, `train_step` does one step, `train` runs them.

One loop for one process or many (`torchrun`, `deepspeed`), ZeRO 0-3, full or LoRA training. A
step takes `per_device_train_batch_size * gradient_accumulation_steps` examples per rank from a
seeded order that depends only on the step number, so a resumed run sees exactly the examples an
uninterrupted one would. Its gradient is that of the mean loss over the examples of all ranks,
whatever the micro-batch split (see `accumulate_gradients`). The benchmarks and the tests drive the
same `build` and `train_step`.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .attention import resolve_backend
from .batching import micro_batches
from .checkpoint import Checkpoints, StopRequest
from .compat import optimizer_checks_gradients
from .config import ConfigError, TrainConfig
from .data import RejectionLog
from .distributed import all_reduce, barrier, init_distributed, is_main, rank, rank_batches, world_size
from .engine import (build_engine, deepspeed_config, full_state_dict, partitioned_loading, partitions_parameters,
                     reference_engine)
from .kernels import resolve_impl
from .kernels.example_chunked_loss import check_supported
from .loss import OBJECTIVES, PreferenceLoss, SFTLoss
from .model import (apply_liger_kernels, apply_lora, cache_dir, enable_gradient_checkpointing, load_model,
                    load_tokenizer, resolve_model_path)
from .monitor import StepMetrics, plot_metrics, step_record, whole_numel
from .packing import Example, pack_examples, packed_length
from .preference_model import PreferenceModel
from .prepared_data import MixedExamples, prepared_examples
from .reference_logps import LiveReference, cache_path, precompute
from .sources import check_source, resolve_source


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a non-finite loss."""


@dataclass
class Run:
    """Everything a training run holds, as `build` sets it up; `state` is what a checkpoint saves."""

    config: TrainConfig
    device: torch.device
    engine: object  # the DeepSpeed engine around the PreferenceModel
    scheduler: object
    train_examples: Sequence[Example]  # a list, or a prepared data set read as it is indexed
    eval_examples: Sequence[Example]
    train_reference: Callable | None  # (batch, indices) -> reference scores; None: reference-free
    eval_reference: Callable | None
    layout: Callable  # examples -> Batch
    checkpoints: Checkpoints
    state: dict
    total_steps: int
    tokenizer: object = None
    reference_seconds: float = 0.0  # spent precomputing the reference tables
    log: Callable = print

    @property
    def model(self) -> PreferenceModel:
        return self.engine.module

    @property
    def examples_per_step(self) -> int:
        return self.state["examples_per_step"]

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_examples) / self.examples_per_step)

    @functools.cached_property
    def parameter_counts(self) -> tuple[int, int]:
        """(all, trainable) parameters of the model, each counted whole also where ZeRO-3 partitions it."""
        counts = [(whole_numel(p), p.requires_grad) for p in self.model.parameters()]
        return sum(n for n, _ in counts), sum(n for n, trainable in counts if trainable)

    @functools.cached_property
    def order(self) -> ExampleOrder:
        return ExampleOrder(len(self.train_examples), self.config.seed)


def train(config: TrainConfig) -> dict[str, dict[str, float]]:
    """Train with `config`; returns the held-out metrics before and after (empty without eval data), and
    the instruction-following benchmarks before and after under "benchmarks" (with eval_benchmarks)."""
    init_distributed()
    before = _benchmark(config, config.model_name_or_path, "before")  # before the engine: one model in memory
    run = build(config)
    results = run.state["results"]
    if before is not None:
        results["benchmarks"] = {"before": before}
    if run.eval_examples and "before" not in results:
        results["before"] = evaluate(run)
        run.log(f"eval before training: {_describe(run, results['before'])}")
    metrics = StepMetrics(run) if is_main() else None
    stop = StopRequest()
    try:
        for step in range(run.state["step"] + 1, run.total_steps + 1):
            record = train_step(run, step)
            if config.eval_steps and step % config.eval_steps == 0 and step < run.total_steps:
                record.update({f"eval/{name}": value for name, value in evaluate(run).items()})
            if metrics is not None:
                metrics.write(record)
            _stop_after_nonfinite_steps(run, step)
            stop_requested = bool(all_reduce(torch.tensor(int(stop.signal is not None)), "max"))
            if stop_requested or (config.save_steps and step % config.save_steps == 0 and step < run.total_steps):
                run.checkpoints.save(run.engine, run.state)
            if stop_requested:
                run.log(f"stopped by a signal: checkpoint of step {step} saved in {run.checkpoints.root}")
                return results
    finally:
        stop.restore()
        if metrics is not None:
            metrics.close()
    finish(run)
    return results


def build(config: TrainConfig, *, examples: tuple[Sequence[Example], Sequence[Example]] | None = None,
          make_model: Callable[[str], nn.Module] | None = None, layout: Callable = pack_examples,
          preference_model: type[PreferenceModel] = PreferenceModel) -> Run:
    """The run `config` describes: process group, data, engine, references, checkpoint to resume.

    The keywords replace what the config would load: `examples` (train, eval) already tokenized,
    `make_model(name)` the causal LM (in the config's dtype) for "policy" and, for a live reference, for
    "reference"; `layout` the batch layout (`pack_examples`, or `pad_examples` for the original one),
    `preference_model` the class that scores and forms the loss.
    """
    device = init_distributed()
    _seed_everything(config.seed)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log = functools.partial(print, flush=True) if is_main() else (lambda *args: None)
    log(f"fast paths: {_fast_paths(config, device)}")

    tokenizer = None
    if examples is None:
        for name in _names(config.dataset) + _names(config.eval_dataset):
            # Before the tokenizer loads, which takes a while.
            check_source(resolve_source(name, config.dataset_dir))
        tokenizer = load_tokenizer(config.model_name_or_path)
        examples = _load_data(config, tokenizer, output_dir, log)
    train_examples, eval_examples = examples
    longest = max(packed_length(example) for example in train_examples)
    if 0 < config.max_tokens_per_micro_batch < longest:
        raise ConfigError(f"max_tokens_per_micro_batch: {config.max_tokens_per_micro_batch} is below the longest "
                          f"example ({longest} packed tokens); raise it or lower cutoff_len")
    examples_per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps * world_size()
    checkpoints = Checkpoints(output_dir, config.save_total_limit)
    latest = _checkpoint_to_resume(checkpoints, config, examples_per_step)
    ds_config = deepspeed_config(config, world_size())
    steps_per_epoch = math.ceil(len(train_examples) / examples_per_step)
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(config.num_train_epochs * steps_per_epoch)

    load = functools.partial(_causal_lm, config, make_model)
    wrap = functools.partial(preference_model, attention_backend=config.attention_backend,
                             logprob_impl=config.logprob_impl, logprob_algorithm=config.logprob_algorithm,
                             max_chunk_logits=config.max_chunk_logits)
    with partitioned_loading(ds_config):  # the policy and a live reference model
        policy = wrap(_prepare_policy(config, load("policy")), _preference_loss(config))
        engine, scheduler = build_engine(policy, config, ds_config, total_steps)
        live = _live_reference(config, engine, load, wrap, ds_config, device)
    run = Run(config=config, device=device, engine=engine, scheduler=scheduler, train_examples=train_examples,
              eval_examples=eval_examples, train_reference=live, eval_reference=live, layout=layout,
              checkpoints=checkpoints, total_steps=total_steps, tokenizer=tokenizer, log=log,
              state={"step": 0, "examples_per_step": examples_per_step, "nonfinite_in_a_row": 0, "results": {}})
    if config.reference_mode == "precomputed":
        _precompute_references(run, live)
    if latest is not None:
        run.state = checkpoints.load(engine, latest)
        log(f"resumed from {latest} (step {run.state['step']} of {total_steps})")
    return run


def train_step(run: Run, step: int) -> dict:
    """Step `step`: this rank's share of its examples, their gradient accumulated, then the optimizer step
    (or, after a non-finite loss, no update at all). Returns the step's metrics record."""
    started = time.perf_counter()
    indices = run.order.step_indices(step, run.examples_per_step)[rank() :: world_size()]
    examples = [run.train_examples[i] for i in indices]
    plan = micro_batches(examples, run.config.max_tokens_per_micro_batch, run.config.per_device_train_batch_size)
    outcome = accumulate_gradients(run, examples, indices, plan)
    grad_norm = None
    if outcome.finite:
        grad_norm = _grad_norm_before_step(run.engine)
        run.engine.step()
        grad_norm = float(run.engine.get_global_grad_norm() if grad_norm is None else grad_norm)
        run.state["nonfinite_in_a_row"] = 0
    else:
        skip_step(run.engine)
        run.state["nonfinite_in_a_row"] += 1
    run.state["step"] = step
    return step_record(run, step, examples, indices, plan, outcome, grad_norm, seconds=time.perf_counter() - started)


@dataclass
class StepOutcome:
    totals: dict[str, float] = field(default_factory=dict)  # per-example metrics summed over all ranks
    stream_tokens: int = 0  # tokens this rank's model processed
    finite: bool = True


def accumulate_gradients(run: Run, examples: list[Example], indices: list[int], plan: list[list[int]]) -> StepOutcome:
    """Accumulate in the engine the gradient of the mean loss over the step's examples of all ranks.

    Each micro-batch's summed loss is scaled by world_size / examples_per_step: DeepSpeed averages
    the gradients over ranks, so the result is the gradient of (sum of all losses) / examples_per_step
    whatever the split into micro-batches and ranks. Ranks run the same number of micro-batches
    (collectives must match); a rank with fewer pads with an empty group, run as example 0 weighted
    0. A non-finite loss on any rank ends the step early with a backward of NaN, which every rank
    joins (their collectives stay matched) and `skip_step` then discards whole.
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
            engine.backward(output.loss * float("nan"))
            outcome.finite = False
            return outcome
        engine.backward(output.loss * weight)
        if weight:
            _accumulate(outcome.totals, output.metrics)
            outcome.stream_tokens += num_tokens
    outcome.totals = _summed_over_ranks(outcome.totals)
    return outcome


def forward(run: Run, examples: list[Example], indices: list[int], reference: Callable | None):
    """The engine's forward on `examples` laid out by the run: (PreferenceOutput, tokens processed).

    `indices` are the examples' positions in their data set (where a precomputed reference looks).
    """
    batch = run.layout(examples).to(run.device)
    reference_scores = None if reference is None else reference(batch, indices)
    return run.engine(batch, reference_scores), batch.num_tokens


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Mean metrics over the held-out examples, each rank scoring its shard."""
    model = run.model
    was_training = model.training
    model.eval()
    totals = {}
    for indices, own in rank_batches(len(run.eval_examples), run.config.per_device_eval_batch_size):
        output, _ = forward(run, [run.eval_examples[i] for i in indices], indices, run.eval_reference)
        _accumulate(totals, {name: values[:own] for name, values in output.metrics.items()})
    model.train(was_training)
    return _means(_summed_over_ranks(totals), len(run.eval_examples))


def finish(run: Run) -> None:
    """After the last step: the held-out metrics after training, the plot, the exported model."""
    results = run.state["results"]
    if run.eval_examples:
        results["after"] = evaluate(run)
        run.log(f"eval before training: {_describe(run, results['before'])}")
        run.log(f"eval after training:  {_describe(run, results['after'])}")
    output_dir = Path(run.config.output_dir)
    export(run)
    after = _benchmark(run.config, str(output_dir / "model"), "after")
    if after is not None:
        results.setdefault("benchmarks", {})["after"] = after
    if is_main():
        if results:
            (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
        plot_metrics(output_dir / "metrics.jsonl", output_dir / "training.png")


def export(run: Run) -> None:
    """The trained model in `output_dir/model`, loadable by transformers (LoRA: the adapters, or merged)."""
    config, output_dir = run.config, Path(run.config.output_dir)
    state_dict = full_state_dict(run.engine)  # a collective under ZeRO-3
    if is_main():
        lora = config.finetuning_type == "lora"
        target = output_dir / ("adapter" if lora and config.lora_merge_on_export else "model")
        # The PreferenceModel holds the causal LM as `model`: its own state dict's names lose that prefix.
        state_dict = {name.removeprefix("model."): tensor for name, tensor in state_dict.items()}
        run.model.model.save_pretrained(target, state_dict=state_dict)
        tokenizer = run.tokenizer or load_tokenizer(config.model_name_or_path)
        tokenizer.save_pretrained(target)
        if lora and config.lora_merge_on_export:
            from peft import PeftModel

            base = load_model(config.model_name_or_path, _model_dtype(config))
            merged = PeftModel.from_pretrained(base, target).merge_and_unload()
            merged.save_pretrained(output_dir / "model")
            tokenizer.save_pretrained(output_dir / "model")
        run.log(f"model saved to {output_dir / 'model'}")
    barrier()


def _benchmark(config: TrainConfig, model: str, stage: str) -> dict | None:
    """`iopo-fast eval` of `model` on the eval_benchmarks, into output_dir/eval/<stage>, on the main rank
    while the others wait; None on the other ranks and without eval_benchmarks. If it fails, every rank
    raises (the others are told, rather than left waiting for the main rank)."""
    if not config.benchmark_list():
        return None
    from .evaluation.run import EvaluationError

    summaries, error = None, None
    if is_main():
        from .evaluation.generation import GenerationSettings, TransformersGenerator
        from .evaluation.run import evaluate_model

        settings = GenerationSettings(max_new_tokens=config.eval_max_new_tokens, seed=config.seed,
                                      batch_size=config.per_device_eval_batch_size)
        print(f"instruction following {stage} training:", flush=True)
        try:
            # transformers, not vLLM: the engine still holds its GPU memory, and vLLM would reserve most of the rest.
            summaries = evaluate_model(model, config.benchmark_list(), Path(config.output_dir) / "eval" / stage,
                                       settings, make_generator=TransformersGenerator, replace_stale=True,
                                       log=functools.partial(print, flush=True))
        except Exception as caught:  # raised again below, once every rank knows
            error = caught
    if all_reduce(torch.tensor(int(error is not None)), "max"):
        if error is not None:
            raise error
        raise EvaluationError(f"the evaluation {stage} training failed on the main rank (its error is above)")
    return summaries


def _stop_after_nonfinite_steps(run: Run, step: int) -> None:
    in_a_row = run.state["nonfinite_in_a_row"]
    if not in_a_row:
        return
    run.log(f"step {step}: non-finite loss, step skipped ({in_a_row} in a row)")
    if in_a_row >= run.config.max_nonfinite_steps:
        raise NonFiniteLossError(f"{in_a_row} steps in a row had a non-finite loss; stopped at step {step} "
                                 f"(max_nonfinite_steps={run.config.max_nonfinite_steps})")


def _load_data(config: TrainConfig, tokenizer, output_dir: Path, log) -> tuple[Sequence[Example], Sequence[Example]]:
    """The train and eval examples; comma-separated data sets are mixed (`interleave_probs`)."""
    rejection_log = RejectionLog(output_dir / "rejected_records.jsonl" if is_main() else None, strict=config.strict)
    loaded = []
    for names, proportions in ((_names(config.dataset), config.mixture_proportions()),
                               (_names(config.eval_dataset), None)):
        parts = []
        for name in names:
            examples, stats = prepared_examples(resolve_source(name, config.dataset_dir), tokenizer, cache_dir(),
                                                loss=config.loss, cutoff_len=config.cutoff_len,
                                                rejection_log=rejection_log, num_proc=config.preprocessing_num_workers)
            log(f"data: {stats.summary(rejection_log)}")
            parts.append(examples)
        if len(parts) > 1 or proportions is not None:
            parts = [MixedExamples(parts, proportions, config.seed)]
            log(f"data: {len(parts[0])} examples mixed from {', '.join(names)}")
        loaded.append(parts[0] if parts else [])
    return loaded[0], loaded[1]


def _names(datasets: str | None) -> list[str]:
    return [name.strip() for name in datasets.split(",")] if datasets else []


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
        attention, logprobs = _resolved_paths(config, device)
        if config.logprob_algorithm == "example_chunks":
            check_supported(device, _model_dtype(config))
    except (ValueError, RuntimeError) as error:
        raise ConfigError(str(error)) from None
    return (f"packed attention {attention}, log-probs {logprobs} ({config.logprob_algorithm}), "
            f"Liger model kernels {'on' if _liger_runs(config) else 'off'}")


def _liger_runs(config: TrainConfig) -> bool:
    """Whether Liger's model kernels take effect (they run on CUDA only)."""
    return config.liger_kernels and torch.cuda.is_available()


def _resolved_paths(config: TrainConfig, device: torch.device) -> tuple[str, str]:
    """The attention backend and the log-prob implementation that run on `device`."""
    attention = resolve_backend(device, _model_dtype(config), config.attention_backend)
    if config.logprob_impl == "full_logits":
        return attention, "full_logits"
    return attention, resolve_impl(torch.empty(0, device=device), config.logprob_impl)


def _preference_loss(config: TrainConfig) -> PreferenceLoss | SFTLoss:
    if config.loss == "sft":
        return SFTLoss()
    return PreferenceLoss(OBJECTIVES[config.loss], beta=config.pref_beta, loss_type=config.pref_loss,
                          label_smoothing=config.label_smoothing, ftx=config.pref_ftx)


def _causal_lm(config: TrainConfig, make_model: Callable[[str], nn.Module] | None, name: str) -> nn.Module:
    """The model `name` ("policy" or "reference"), with Liger's kernels where they run."""
    model = make_model(name) if make_model else load_model(config.model_name_or_path, _model_dtype(config))
    if config.liger_kernels:
        apply_liger_kernels(model)
    return model


def _prepare_policy(config: TrainConfig, policy: nn.Module) -> nn.Module:
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if config.finetuning_type == "lora":
        policy = apply_lora(policy, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target)
        if config.gradient_checkpointing:  # the frozen embeddings would otherwise cut the graph at the input
            policy.enable_input_require_grads()
    return policy


def _live_reference(config: TrainConfig, engine, load, wrap, ds_config: dict, device) -> LiveReference | None:
    """What scores a batch with the reference model (None when reference-free).

    With LoRA, the policy with its adapters disabled; before the first step (`precomputed`), the policy
    itself; else a frozen second model, partitioned like the policy under ZeRO-3.
    """
    if config.reference_mode == "none":
        return None
    lora = config.finetuning_type == "lora"
    if lora or config.reference_mode == "precomputed":
        return LiveReference(engine.module, disable_adapter=lora)
    model = wrap(load("reference").requires_grad_(False)).eval()
    return LiveReference(reference_engine(model, ds_config) if partitions_parameters(ds_config) else model.to(device))


def _precompute_references(run: Run, live: LiveReference) -> None:
    """Replace the run's references by tables of the initial policy's scores, cached in output_dir."""
    config = run.config
    attention, logprobs = _resolved_paths(config, run.device)
    settings = {"dtype": str(_model_dtype(config)), "attention": attention, "logprobs": logprobs,
                "liger": _liger_runs(config), "finetuning": config.finetuning_type}
    model_path = resolve_model_path(config.model_name_or_path)
    started = time.perf_counter()
    run.model.eval()
    tables = []
    for examples in (run.train_examples, run.eval_examples):
        if not examples:
            tables.append(None)
            continue
        cache_file = cache_path(config.output_dir, model_path, examples, settings)
        tables.append(precompute(live, examples, cache_file, config.per_device_eval_batch_size, run.device))
        run.log(f"reference log-probs of {len(examples)} examples: {cache_file}")
    run.model.train()
    run.train_reference, run.eval_reference = tables
    run.reference_seconds = time.perf_counter() - started


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


def _grad_norm_before_step(engine) -> float | None:
    """The norm of the step's gradient where DeepSpeed does not record it (None where it does)."""
    if optimizer_checks_gradients(engine):
        return None
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


def _describe(run: Run, metrics: dict[str, float]) -> str:
    accuracy = OBJECTIVES[run.config.loss].accuracy
    if accuracy is None:
        return f"loss {metrics['loss']:.4f} (negative log-likelihood per response token)"
    return (f"loss {metrics['loss']:.4f}, accuracy {metrics[accuracy]:.3f} (z > 0), "
            f"margin {metrics['rewards/margin']:.4f}")
