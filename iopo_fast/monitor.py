"""Watching a run: `metrics.jsonl`, optional TensorBoard, peak memory, MFU and the final plot."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch

# Dense bf16 tensor-core peak of the accelerators MFU is reported for, in FLOP/s, by a part of the device
# name; the first that matches counts, so the more specific names come first.
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "H800": 989e12,
                   "A100": 312e12, "A800": 312e12, "L40S": 362e12}


class MetricsLog:
    """Appends one JSON object per logged step; on resume, drops the records after the resumed step."""

    def __init__(self, output_dir: Path, resumed_step: int, tensorboard: bool):
        self.path = output_dir / "metrics.jsonl"
        kept = []
        if resumed_step and self.path.is_file():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= resumed_step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def peak_memory_gib(device: torch.device) -> float:
    """Peak accelerator memory allocated by this process; on CPU, its peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_host_memory_gib()


def peak_host_memory_gib() -> float:
    """Peak resident set size of this process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def step_flops(num_parameters: int, trainable_fraction: float, stream_tokens: int, live_reference: bool) -> float:
    """Model FLOPs of one step, the dense-matmul count (attention's quadratic term left out).

    Policy: 2 N per token forward, 2 N backward to the activations, and 2 N times the trainable
    fraction for the weight gradients. A live reference adds 2 N per token. Recomputation under
    gradient checkpointing is not counted (MFU counts useful work).
    """
    per_token = 2 * num_parameters * (2 + trainable_fraction) + (2 * num_parameters if live_reference else 0)
    return per_token * stream_tokens


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
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axes.plot(steps, [r["loss"] for r in records])
    loss_axes.set(xlabel="step", ylabel="loss", title="training loss")
    for name in sorted(k for k in records[0] if k.startswith("accuracies/")):
        accuracy_axes.plot(steps, [r.get(name) for r in records], label=name.removeprefix("accuracies/"))
    accuracy_axes.set(xlabel="step", ylabel="fraction of examples", title="accuracies", ylim=(-0.05, 1.05))
    accuracy_axes.legend()
    figure.tight_layout()
    figure.savefig(output_file, dpi=120)
    plt.close(figure)
