"""Checkpoints: kill and resume, the SIGTERM checkpoint, and a `latest` that never names a broken one."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import DEMO_DATA, DEMO_EVAL, fresh_process_env, training_config

from iopo_fast.training.checkpoint import Checkpoints, seed_everything
from iopo_fast.config import ConfigError
from iopo_fast.training.loop import train


# One thread: a multi-threaded BLAS may split its sums differently from run to run (under load, say),
# and the runs compared here must agree to the last few bits.
DETERMINISTIC_ENV = {**fresh_process_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start_run(model_dir, output_dir, **overrides):
    """`iopo-fast train` in a subprocess on the bundled held-out data (20 steps of 2 examples)."""
    config = dict(model_name_or_path=str(model_dir), dataset=str(DEMO_EVAL), output_dir=str(output_dir),
                  per_device_train_batch_size=1, gradient_accumulation_steps=2, max_steps=20, learning_rate=1e-3,
                  lr_scheduler_type="cosine", warmup_ratio=0.1, cutoff_len=256, save_steps=5, save_total_limit=2)
    config.update(overrides)
    path = output_dir.parent / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen([sys.executable, "-m", "iopo_fast.cli", "train", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DETERMINISTIC_ENV)


def records(output_dir) -> list[dict]:
    """The complete lines of a run's metrics.jsonl (a running process may be midway through one)."""
    path = output_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.is_file() else []


def wait_for_step(process, output_dir, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["step"] >= step for r in records(output_dir)):
        assert process.poll() is None, process.stdout.read()
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no step {step} after {timeout} s: {process.communicate()[0][-5000:]}")
        time.sleep(0.02)


def finish(process) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(start_run(tiny_model_dir, output_dir))
    return records(output_dir)


def test_a_killed_run_resumes_with_the_same_losses_and_examples(tiny_model_dir, tmp_path, uninterrupted):
    output_dir = tmp_path / "run"
    process = start_run(tiny_model_dir, output_dir)
    wait_for_step(process, output_dir, 7)  # past the checkpoint of step 5
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = records(output_dir)[-1]["step"]
    resumed_from = int(Checkpoints(output_dir, 2).latest().name.removeprefix("step-"))
    assert resumed_from < killed_at < 20, "the kill must fall between checkpoints"

    output = finish(start_run(tiny_model_dir, output_dir))

    assert f"resumed from {output_dir / 'checkpoints' / f'step-{resumed_from:06d}'}" in output
    resumed = records(output_dir)
    assert [r["step"] for r in resumed] == list(range(1, 21))
    for got, want in zip(resumed, uninterrupted):
        assert got["examples"] == want["examples"], got["step"]
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6), got["step"]
        assert got["learning_rate"] == pytest.approx(want["learning_rate"]), got["step"]
    # 20 steps of 2 from 40 examples: each example exactly once
    assert sorted(i for r in resumed for i in r["examples"]) == list(range(40))
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["latest", "step-000010", "step-000015"]


def test_sigterm_checkpoints_the_current_step_and_stops(tiny_model_dir, tmp_path, uninterrupted):
    output_dir = tmp_path / "run"
    process = start_run(tiny_model_dir, output_dir, save_steps=0)
    wait_for_step(process, output_dir, 3)
    process.send_signal(signal.SIGTERM)
    output = finish(process)
    stopped_at = records(output_dir)[-1]["step"]
    assert "stopped by a signal" in output and stopped_at < 20
    assert Checkpoints(output_dir, 2).latest().name == f"step-{stopped_at:06d}"

    finish(start_run(tiny_model_dir, output_dir, save_steps=0))
    assert [r["loss"] for r in records(output_dir)] == pytest.approx([r["loss"] for r in uninterrupted], abs=1e-6)


class WritingEngine:
    def save_checkpoint(self, root, tag, save_latest):
        from pathlib import Path

        (Path(root) / tag).mkdir(parents=True)
        (Path(root) / tag / "model_states.pt").write_bytes(b"weights")


def test_latest_never_names_an_incomplete_checkpoint(tmp_path):
    checkpoints = Checkpoints(tmp_path, keep=2)
    assert checkpoints.latest() is None
    checkpoints.save(WritingEngine(), {"step": 5})
    assert checkpoints.latest().name == "step-000005"

    class DiesMidWrite(WritingEngine):
        def save_checkpoint(self, root, tag, save_latest):
            super().save_checkpoint(root, tag, save_latest)
            raise KeyboardInterrupt  # killed after DeepSpeed's files, before the checkpoint is published

    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(DiesMidWrite(), {"step": 10})
    assert checkpoints.latest().name == "step-000005"
    assert (checkpoints.root / ".incomplete-step-000010").is_dir()

    for step in (15, 20):
        checkpoints.save(WritingEngine(), {"step": step})
    names = sorted(p.name for p in checkpoints.root.iterdir())
    assert names == ["latest", "step-000015", "step-000020"]  # the stray and the oldest are gone
    assert json.loads((checkpoints.latest() / "trainer_state.json").read_text()) == {"step": 20}


def test_the_checkpoint_latest_names_is_never_removed(tmp_path):
    checkpoints = Checkpoints(tmp_path, keep=2)
    for step in (10, 15, 5):  # a lower step saved last: the newest by name is not the latest
        checkpoints.save(WritingEngine(), {"step": step})
    assert checkpoints.latest().name == "step-000005"
    assert sorted(p.name for p in checkpoints.root.iterdir()) == ["latest", "step-000005", "step-000010",
                                                                   "step-000015"]


def test_resume_restores_every_random_generator(tmp_path):
    """Dropout, sampling and anything else random continue as if the run had not stopped."""
    class LoadingEngine(WritingEngine):
        def load_checkpoint(self, root, tag, load_module_strict):
            pass

    checkpoints = Checkpoints(tmp_path, keep=1)
    seed_everything(1)
    torch.rand(5), random.random(), np.random.rand()  # a run that drew some numbers before saving
    checkpoints.save(LoadingEngine(), {"step": 5})
    expected = torch.rand(3), random.random(), np.random.rand(2)
    seed_everything(2)  # a new process seeds itself before it resumes
    assert checkpoints.load(LoadingEngine(), checkpoints.latest()) == {"step": 5}
    drawn = torch.rand(3), random.random(), np.random.rand(2)
    assert torch.equal(drawn[0], expected[0]) and drawn[1] == expected[1] and (drawn[2] == expected[2]).all()


@pytest.fixture(scope="module")
def checkpointed_run(tiny_model_dir, tmp_path_factory):
    """A run checkpointed after its first step, on its own copy of the data: (output_dir, data file)."""
    root = tmp_path_factory.mktemp("checkpointed")
    data = root / "data.jsonl"
    shutil.copy(DEMO_DATA / "valid.jsonl", data)
    train(training_config(tiny_model_dir, root / "run", dataset=str(data), max_steps=2, save_steps=1))
    assert Checkpoints(root / "run", 2).latest().name == "step-000001"
    return root / "run", data


@pytest.mark.parametrize("overrides, message", [
    ({"resume": "never"}, "resume: never, but .* holds an earlier run's checkpoints \\(step-000001\\)"),
    ({"per_device_train_batch_size": 3}, "another data order \\(examples_per_step 4 -> 6\\)"),
    ({"seed": 7}, "another data order \\(seed 42 -> 7\\)"),
    ({"edit_data": True}, "another data order \\(training_data [0-9a-f]+ -> [0-9a-f]+\\)"),
    ({"drop_record": True}, "another data order \\(training_examples 40 -> 39; training_data"),
    ({"optim": "adamw_torch_8bit"}, "another optimizer \\(optim adamw_torch -> adamw_torch_8bit\\)"),
])
def test_a_run_that_cannot_continue_a_checkpoint_exactly_is_refused(tiny_model_dir, tmp_path, checkpointed_run,
                                                                    overrides, message):
    """The examples of a step follow from the examples per step, the seed and the data: a resume that changes
    any of them would train on other examples than the uninterrupted run."""
    output_dir, data = checkpointed_run
    lines = data.read_text().splitlines(keepends=True)
    data = tmp_path / data.name  # the same file name: the edits alone change the data's fingerprint
    if overrides.pop("edit_data", False):
        lines[0] = lines[0].replace("Explain", "Describe", 1)
    if overrides.pop("drop_record", False):
        lines = lines[1:]
    data.write_text("".join(lines))
    config = training_config(tiny_model_dir, output_dir, **{"dataset": str(data), "max_steps": 2, "resume": "auto",
                                                             **overrides})
    with pytest.raises(ConfigError, match=message):
        train(config)


def test_held_out_data_added_on_resume_scores_the_resumed_weights_not_the_initial_ones(tiny_model_dir,
                                                                                      checkpointed_run):
    output_dir, data = checkpointed_run
    results = train(training_config(tiny_model_dir, output_dir, dataset=str(data), max_steps=2, resume="auto",
                                    eval_dataset=str(DEMO_DATA / "valid.jsonl")))
    assert "before" not in results and results["at_resume"]["step"] == 1
    assert set(results["after"]) == set(results["at_resume"]) - {"step"}


def test_checkpoints_are_pruned_by_step_number_not_by_name(tmp_path):
    checkpoints = Checkpoints(tmp_path, keep=2)
    for step in (999_998, 999_999, 1_000_000):  # "step-1000000" sorts before "step-999998" as a string
        checkpoints.save(WritingEngine(), {"step": step})
    assert sorted(p.name for p in checkpoints.root.iterdir()) == ["latest", "step-1000000", "step-999999"]
