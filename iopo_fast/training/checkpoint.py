"""Checkpoints that a crash or a kill never leaves unresumable.

Layout under `<output_dir>/checkpoints/`:

    step-000040/   DeepSpeed's model, optimizer and scheduler states, `trainer_state.json` (the step, the
                   data order: what fixes the examples of every step, and the run's counters) and one
                   `rng-rank<r>.pt` per rank
    latest         the name of the newest complete checkpoint

A checkpoint is written under a temporary name, renamed into place once every rank has finished,
and only then named in `latest` (itself replaced atomically). A kill at any moment leaves `latest`
naming a complete checkpoint, or absent; stray temporary folders are removed on the next save.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, TrainConfig
from ..distributed import barrier, is_main, rank
from ..utils import fsync_file, write_atomically

_PREFIX = "step-"
_STAGING = ".incomplete-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message is one line naming it and the reason."""


class Checkpoints:
    def __init__(self, output_dir: str | Path, keep: int):
        self.root = Path(output_dir) / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text(encoding="utf-8").strip()
        if not (path / "trainer_state.json").is_file():
            raise CheckpointError(f"{pointer}: names {path.name}, which is not a complete checkpoint")
        return path

    def save(self, engine, trainer_state: dict) -> Path:
        """Write a checkpoint of `engine` and `trainer_state` on every rank, then publish it."""
        name = f"{_PREFIX}{trainer_state['step']:06d}"
        staging = self.root / f"{_STAGING}{name}"
        if is_main():
            self._remove_incomplete()
        barrier()
        engine.save_checkpoint(str(self.root), tag=staging.name, save_latest=False)
        torch.save(_rng_state(), staging / f"rng-rank{rank()}.pt")
        barrier()
        final = self.root / name
        if is_main():
            write_atomically(staging / "trainer_state.json", json.dumps(trainer_state, indent=2) + "\n")
            _fsync_tree(staging)
            if final.exists():  # a checkpoint of this step from an earlier, interrupted attempt
                shutil.rmtree(final)
            staging.rename(final)
            fsync_file(self.root)
            write_atomically(self.root / "latest", name + "\n")
            self._remove_old()
        barrier()
        return final

    def load(self, engine, path: Path) -> dict:
        """Restore `engine` and this rank's RNG from checkpoint `path`; returns its trainer state."""
        engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False)
        rng_file = path / f"rng-rank{rank()}.pt"
        if rng_file.is_file():  # absent when resumed on more ranks than were saved
            _set_rng_state(torch.load(rng_file, weights_only=False))
        return json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))

    def _remove_incomplete(self) -> None:
        for path in self.root.glob(f"{_STAGING}*"):
            shutil.rmtree(path, ignore_errors=True)

    def _remove_old(self) -> None:
        """Keep the newest `keep` complete checkpoints, and whichever `latest` names."""
        latest = self.latest()
        complete = sorted((p for p in self.root.glob(f"{_PREFIX}*") if (p / "trainer_state.json").is_file()),
                          key=lambda path: int(path.name.removeprefix(_PREFIX)))  # step-1000000 after step-999999
        for path in complete[: -self.keep]:
            if path != latest:
                shutil.rmtree(path, ignore_errors=True)


def checkpoint_to_resume(checkpoints: Checkpoints, resume: str, data_order: dict, optimizer: dict) -> Path | None:
    """The checkpoint a run continues from, or None; a run that cannot continue it exactly is refused.

    `data_order` is what fixes the examples of every step (`loop.data_order`): the examples per step, the
    seed, and the training examples themselves. A resume must keep all of it, or it would train on other
    examples than the uninterrupted run; and a fresh start (`resume: never`) must not mix its checkpoints
    with an earlier run's. `optimizer` (`TrainConfig.optimizer_settings`) decides the form of the saved
    optimizer states, which another optimizer could not continue.
    """
    latest = checkpoints.latest()
    if latest is None:
        return None
    if resume == "never":
        raise ConfigError(f"resume: never, but {checkpoints.root} holds an earlier run's checkpoints ({latest.name}); "
                          "set resume: auto to continue it, or choose another output_dir")
    trainer_state = json.loads((latest / "trainer_state.json").read_text(encoding="utf-8"))
    # Checkpoints from before these keys were recorded were all trained with their defaults.
    changed = _changes(trainer_state.get("optimizer", TrainConfig.default_optimizer_settings()), optimizer)
    if changed:
        raise ConfigError(f"resume: {latest} was trained with another optimizer ({'; '.join(changed)}), whose states "
                          "this one cannot continue: resume with the same settings, or choose another output_dir")
    saved = trainer_state.get("data_order")
    if saved is None:
        raise ConfigError(f"resume: {latest} does not record the order of its training examples, so it cannot be "
                          "continued exactly: choose another output_dir")
    changed = _changes(saved, data_order)
    if changed:
        raise ConfigError(f"resume: {latest} was trained in another data order ({'; '.join(changed)}): resume with "
                          "the same data, seed, ranks x per_device_train_batch_size x gradient_accumulation_steps, "
                          "or choose another output_dir")
    return latest


def _changes(saved: dict, current: dict) -> list[str]:
    """"name saved -> current" for every entry of `current` that `saved` records otherwise."""
    return [f"{name} {saved.get(name)} -> {value}" for name, value in current.items() if saved.get(name) != value]


class StopRequest:
    """Turns SIGTERM (and SIGINT) into a flag the loop checks after each step, to checkpoint and stop."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            fsync_file(path)
    fsync_file(root)
