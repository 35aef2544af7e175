"""Watching a run: the metrics of each step summed over ranks, the step's record, `metrics.jsonl`, optional
TensorBoard or W&B, a progress bar, peak memory, MFU and the final plot."""

from __future__ import annotations

import dataclasses
import json
import resource
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import TrainConfig
from ..data.examples import Example, unpacked_length
from ..distributed import all_reduce, rank, world_size
from ..loss import OBJECTIVES
from ..model.micro_batch_plan import fill_ratio
from ..utils import write_atomically

# Dense bf16 tensor-core peak of the accelerators MFU is reported for, in FLOP/s, by a part of the device
# name; the first that matches counts, so the more specific names come first.
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "H800": 989e12,
                   "A100": 312e12, "A800": 312e12, "L40S": 362e12}


class MetricsLog:
    """Appends one JSON object per logged step to `metrics.jsonl`, and mirrors the numbers to TensorBoard or
    Weights & Biases (`report_to`); on resume, drops the records after the resumed step."""

    def __init__(self, output_dir: Path, resumed_step: int, report_to: str = "none", run_config: dict | None = None,
                 wandb_project: str = "iopo-fast"):
        self.path = output_dir / "metrics.jsonl"
        kept = []
        if resumed_step and self.path.is_file():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= resumed_step]
        write_atomically(self.path, "".join(line + "\n" for line in kept))
        self.mirror = None
        if report_to == "tensorboard":
            self.mirror = _TensorBoard(output_dir)
        elif report_to == "wandb":
            self.mirror = _WandB(output_dir, wandb_project, run_config or {})

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        if self.mirror is not None:
            self.mirror.log({name: value for name, value in record.items()
                             if name != "step" and isinstance(value, (int, float))}, record["step"])

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()


class _TensorBoard:
    def __init__(self, output_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    """One Weights & Biases run per output_dir: a resumed training continues the same run."""

    def __init__(self, output_dir: Path, project: str, run_config: dict):
        import wandb

        id_file = output_dir / "wandb" / "run_id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        if not id_file.is_file():
            id_file.write_text(secrets.token_hex(8), encoding="utf-8")
        self.run = wandb.init(project=project, dir=str(output_dir), id=id_file.read_text(encoding="utf-8"),
                              resume="allow", config=run_config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


@dataclass
class StepOutcome:
    """What the micro-batches of a step give: their per-example metrics summed over all ranks, the tokens this
    rank's model processed, and whether every loss was finite."""

    totals: dict[str, float] = field(default_factory=dict)
    stream_tokens: int = 0
    finite: bool = True


def add_to_totals(totals: dict[str, float], per_example: dict[str, torch.Tensor]) -> None:
    for name, values in per_example.items():
        totals[name] = totals.get(name, 0.0) + float(values.sum())


def summed_over_ranks(totals: dict[str, float]) -> dict[str, float]:
    """Every rank's `totals` added up (all ranks must hold the same names)."""
    names = sorted(totals)
    summed = all_reduce(torch.tensor([totals[name] for name in names], dtype=torch.float64))
    return dict(zip(names, summed.tolist()))


def describe_held_out(loss: str, metrics: dict[str, float]) -> str:
    """The held-out metrics of `loss` in one line."""
    accuracy = OBJECTIVES[loss].accuracy
    if accuracy is None:
        return f"loss {metrics['loss']:.4f} (negative log-likelihood per response token)"
    return (f"loss {metrics['loss']:.4f}, accuracy {metrics[accuracy]:.3f} (z > 0), "
            f"margin {metrics['rewards/margin']:.4f}")


def step_record(config: TrainConfig, step: int, examples: list[Example], indices: list[int], plan: list[list[int]],
                outcome: StepOutcome, grad_norm: float | None, seconds: float, *, epoch: float,
                examples_per_step: int, learning_rate: float, device: torch.device, model: torch.nn.Module) -> dict:
    """The metrics of one step, over all ranks (a collective: every rank calls it)."""
    # Useful tokens: those of the examples' separate sequences, the same count for any layout.
    tokens = int(all_reduce(torch.tensor(sum(unpacked_length(e) for e in examples))))
    stream_tokens = int(all_reduce(torch.tensor(outcome.stream_tokens)))
    record = {"step": step, "epoch": epoch}
    if outcome.finite:
        record.update({name: total / examples_per_step for name, total in outcome.totals.items()},
                      grad_norm=grad_norm)
    else:
        record.update(loss=float("nan"), skipped="non-finite loss")
    record.update(
        tokens=tokens, tokens_per_sec=tokens / seconds, stream_tokens=stream_tokens, micro_batches=len(plan),
        learning_rate=learning_rate, step_time=seconds, peak_memory_gib=peak_memory_gib(device),
        # Every rank's examples, in rank order: the record of what the step trained on.
        examples=_gathered(indices, len(indices)),
    )
    if config.max_tokens_per_micro_batch:
        record["fill_ratio"] = fill_ratio(examples, [g for g in plan if g], config.max_tokens_per_micro_batch)
    peak_flops = device_peak_flops(device)
    if peak_flops:
        parameters, trainable = parameter_counts(model)
        flops = step_flops(parameters, trainable / parameters, stream_tokens,
                           stream_tokens if config.reference_mode == "live" else 0)
        record["mfu"] = flops / (seconds * peak_flops * world_size())
    return record


class StepMetrics:
    """Shows and writes the step records of the main rank: a progress bar, `metrics.jsonl`, TensorBoard."""

    def __init__(self, config: TrainConfig, resumed_step: int, total_steps: int):
        self.config, self.total_steps = config, total_steps
        self.accuracy = OBJECTIVES[config.loss].accuracy
        self.log = MetricsLog(Path(config.output_dir), resumed_step, config.report_to, dataclasses.asdict(config),
                              config.wandb_project)
        self.progress = tqdm(desc="train", dynamic_ncols=True, initial=resumed_step, total=total_steps)

    def write(self, record: dict) -> None:
        """Show `record`, and write it every `logging_steps`, at the last step, when the step was skipped and
        when it was evaluated."""
        self.progress.update(1)
        accuracy = {"acc": f"{record.get(self.accuracy, 0):.2f}"} if self.accuracy else {}
        self.progress.set_postfix(loss=f"{record['loss']:.4f}", **accuracy, tok_s=f"{record['tokens_per_sec']:.0f}")
        step = record["step"]
        if (step % self.config.logging_steps == 0 or step == self.total_steps or "skipped" in record
                or "eval/loss" in record):
            self.log.write(record)

    def close(self) -> None:
        self.progress.close()
        self.log.close()


def _gathered(indices: list[int], per_rank: int) -> list[int]:
    gathered = torch.zeros(world_size(), per_rank, dtype=torch.long)
    gathered[rank()] = torch.tensor(indices)
    return all_reduce(gathered).flatten().tolist()


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters of `model`, each counted whole also where ZeRO-3 partitions it."""
    counts = [(whole_numel(p), p.requires_grad) for p in model.parameters()]
    return sum(n for n, _ in counts), sum(n for n, trainable in counts if trainable)


def whole_numel(parameter: torch.Tensor) -> int:
    """The whole parameter's size, also when ZeRO-3 holds only a partition of it here."""
    return parameter.ds_numel if hasattr(parameter, "ds_numel") else parameter.numel()


def peak_memory_gib(device: torch.device) -> float:
    """Peak accelerator memory allocated by this process; on CPU, its peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_host_memory_gib()


def peak_host_memory_gib() -> float:
    """Peak resident set size of this process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def step_flops(num_parameters: int, trainable_fraction: float, policy_tokens: float, reference_tokens: float) -> float:
    """Model FLOPs of one step: the dense-matmul count of the tokens each model actually processes
    (attention's quadratic term left out). The one FLOP count of MFU, in the loop and the benchmarks.

    Policy: 2 N per token forward, 2 N backward to the activations, and 2 N times the trainable
    fraction for the weight gradients. Reference: 2 N per token it scores (a live reference every step;
    a precomputed one its share of the table). Recomputation under gradient checkpointing is not
    counted (MFU counts useful work), and neither is padding: a padded layout's tokens are its content.
    """
    return 2 * num_parameters * ((2 + trainable_fraction) * policy_tokens + reference_tokens)


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def plot_metrics(metrics_file: Path, output_file: Path) -> None:
    """Loss and accuracies against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        return
    steps = [r["step"] for r in records]
    accuracies = sorted(k for k in records[0] if k.startswith("accuracies/"))  # none for the SFT loss
    figure, axes = plt.subplots(1, 2 if accuracies else 1, figsize=(11 if accuracies else 5.5, 4), squeeze=False)
    loss_axes = axes[0][0]
    loss_axes.plot(steps, [r["loss"] for r in records], label="training")
    evaluated = [r for r in records if "eval/loss" in r]
    if evaluated:
        loss_axes.plot([r["step"] for r in evaluated], [r["eval/loss"] for r in evaluated], "o-", label="held-out")
        loss_axes.legend()
    loss_axes.set(xlabel="step", ylabel="loss", title="loss")
    if accuracies:
        accuracy_axes = axes[0][1]
        for name in accuracies:
            accuracy_axes.plot(steps, [r.get(name) for r in records], label=name.removeprefix("accuracies/"))
        accuracy_axes.set(xlabel="step", ylabel="fraction of examples", title="accuracies", ylim=(-0.05, 1.05))
        accuracy_axes.legend()
    figure.tight_layout()
    figure.savefig(output_file, dpi=120)
    plt.close(figure)
