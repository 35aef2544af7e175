"""What a training run holds: the `RunState` that `loop.build` sets up and every step reads and updates."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..data.examples import Example
from ..data.sampling import ExampleOrder
from ..model.preference_model import PreferenceModel
from .checkpoint import Checkpoints


@dataclass
class RunState:
    """Everything a training run holds, as `build` sets it up; `trainer_state` is what a checkpoint saves."""

    config: TrainConfig
    device: torch.device
    engine: object  # the DeepSpeed engine around the PreferenceModel
    scheduler: object
    train_examples: Sequence[Example]  # a list, or a prepared data set read as it is indexed
    eval_examples: Sequence[Example]
    train_reference: Callable | None  # (batch, indices) -> reference scores; None: reference-free
    eval_reference: Callable | None
    layout: Callable  # examples -> Batch
    order: ExampleOrder  # which examples each step takes
    checkpoints: Checkpoints
    trainer_state: dict
    total_steps: int
    tokenizer: object = None
    reference_seconds: float = 0.0  # spent precomputing the reference tables
    log: Callable = print

    @property
    def model(self) -> PreferenceModel:
        return self.engine.module

    @property
    def examples_per_step(self) -> int:
        return self.trainer_state["data_order"]["examples_per_step"]

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_examples) / self.examples_per_step)
