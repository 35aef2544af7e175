"""Watching a run: the metrics log across a resume, TensorBoard, the FLOP count behind MFU, the plot."""

from __future__ import annotations

import json

import torch

from iopo_fast.monitor import MetricsLog, device_peak_flops, plot_metrics, step_flops


def test_a_resumed_log_drops_the_steps_after_the_checkpoint_and_mirrors_to_tensorboard(tmp_path):
    log = MetricsLog(tmp_path, resumed_step=0, tensorboard=False)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()

    resumed = MetricsLog(tmp_path, resumed_step=2, tensorboard=True)  # killed after step 3, resumed from 2
    resumed.write({"step": 3, "loss": 0.25, "skipped": "non-finite loss"})
    resumed.close()

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "tensorboard").iterdir()))).Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 0.25)]


def test_step_flops_count_forward_backward_weight_gradients_and_the_reference_tokens():
    n, tokens = 1000, 10
    assert step_flops(n, 1.0, tokens, reference_tokens=0) == 6 * n * tokens  # full training: 6 N per token
    assert step_flops(n, 1.0, tokens, reference_tokens=tokens) == 8 * n * tokens  # + a live reference's 2 N
    assert step_flops(n, 1.0, tokens, reference_tokens=3) == 2 * n * (3 * tokens + 3)  # a share of a table
    assert step_flops(n, 0.01, tokens, reference_tokens=0) == 2 * n * 2.01 * tokens  # LoRA: few weight grads
    assert device_peak_flops(torch.device("cpu")) is None  # MFU is reported on known GPUs only


def test_plot_draws_loss_and_every_accuracy(tmp_path):
    lines = [{"step": s, "loss": 0.7 - 0.1 * s, "accuracies/group": 0.2 * s, "accuracies/output_v1": 0.5}
             for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "training.png")
    assert (tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
