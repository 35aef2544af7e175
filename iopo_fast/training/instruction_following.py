"""`iopo-fast eval` of the model before and after training (`eval_benchmarks`), run from the loop."""

from __future__ import annotations

import functools
from pathlib import Path

from ..config import TrainConfig
from ..distributed import is_main, raise_if_any_rank_failed


def evaluate_instruction_following(config: TrainConfig, model: str, stage: str) -> dict | None:
    """`iopo-fast eval` of `model` on the eval_benchmarks, into output_dir/eval/<stage>, on the main rank
    while the others wait; None on the other ranks and without eval_benchmarks. If it fails, every rank
    raises with its message (the others are told, rather than left waiting for the main rank)."""
    if not config.benchmark_list():
        return None
    summaries, error = None, None
    if is_main():
        from ..evaluation.run import evaluate_model
        from ..generation.generators import TransformersGenerator
        from ..generation.settings import GenerationSettings

        # eval_max_new_tokens 0: each benchmark's own default.
        settings = GenerationSettings(max_new_tokens=config.eval_max_new_tokens or None, seed=config.seed,
                                      batch_size=config.per_device_eval_batch_size, dtype=config.eval_dtype)
        print(f"instruction following {stage} training:", flush=True)
        try:
            # transformers, not vLLM: the engine still holds its GPU memory, and vLLM would reserve most of the rest.
            summaries = evaluate_model(model, config.benchmark_list(), Path(config.output_dir) / "eval" / stage,
                                       settings, make_generator=TransformersGenerator, replace_stale=True,
                                       log=functools.partial(print, flush=True))
        except Exception as caught:  # raised again below, once every rank knows
            error = caught
    raise_if_any_rank_failed(error)
    return summaries
