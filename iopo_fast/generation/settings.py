"""How responses are generated, apart from the backend that generates them: light enough for the training
config to read its choices without loading a model library."""

from __future__ import annotations

from dataclasses import asdict, dataclass

DTYPES = ("bfloat16", "float32")


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are sampled; greedy when `temperature` is 0. `max_new_tokens` None: each benchmark's
    default (`evaluation.benchmarks.default_max_new_tokens`), resolved before generating; a number applies
    to every benchmark. `dtype`: the model's weights and activations. fp32 by default, so that a greedy
    response does not depend on the prompts decoded beside it (measured on CPU; on a GPU not shown): in
    bf16, a near tie between two tokens is decided by the last bits of sums whose order changes with the
    rows of the batch and their padding (`benchmarks/results/batch-invariance-cpu.md`). bf16 halves the
    weights' memory (and is faster where the hardware multiplies it natively), at the price of scores that
    move with `batch_size`."""

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    dtype: str = "float32"

    def __post_init__(self):
        if (self.max_new_tokens is not None and self.max_new_tokens <= 0) or self.batch_size <= 0:
            raise ValueError(f"max_new_tokens (None: per benchmark) and batch_size must be positive, "
                             f"got {self.max_new_tokens}, {self.batch_size}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def as_dict(self) -> dict:
        return asdict(self)
