"""Watching a run: the metrics log across a resume, TensorBoard, the FLOP count behind MFU, the plot."""

from __future__ import annotations

import json

import torch

from iopo_fast.training.monitor import MetricsLog, device_peak_flops, plot_metrics, step_flops


def test_a_resumed_log_drops_the_steps_after_the_checkpoint_and_mirrors_to_tensorboard(tmp_path):
    log = MetricsLog(tmp_path, resumed_step=0)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()

    resumed = MetricsLog(tmp_path, resumed_step=2, report_to="tensorboard")  # killed after step 3, resumed from 2
    resumed.write({"step": 3, "loss": 0.25, "skipped": "non-finite loss"})
    resumed.close()

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "tensorboard").iterdir()))).Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 0.25)]


def test_wandb_run_gets_the_numbers_and_a_resumed_log_continues_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []

    def recorded(log: MetricsLog) -> MetricsLog:
        run_log = log.mirror.run.log
        log.mirror.run.log = lambda values, step: (logged.append((values, step)), run_log(values, step=step))
        return log

    log = recorded(MetricsLog(tmp_path, resumed_step=0, report_to="wandb", run_config={"pref_beta": 0.1}))
    log.write({"step": 1, "loss": 0.7, "eval/loss": 0.69, "skipped": "non-finite loss", "examples": [3, 1]})
    log.write({"step": 2, "loss": 0.5})
    run_id, beta = log.mirror.run.id, log.mirror.run.config["pref_beta"]
    log.close()
    resumed = recorded(MetricsLog(tmp_path, resumed_step=2, report_to="wandb"))
    resumed.write({"step": 3, "loss": 0.25})
    assert resumed.mirror.run.id == run_id and beta == 0.1
    resumed.close()

    assert logged == [({"loss": 0.7, "eval/loss": 0.69}, 1), ({"loss": 0.5}, 2), ({"loss": 0.25}, 3)]
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert [path.name.rsplit("-", 1)[1] for path in runs] == [run_id] * 2
    assert all((run / f"run-{run_id}.wandb").stat().st_size > 0 for run in runs)


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
